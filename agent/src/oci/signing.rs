//! OCI's HTTP request signature (version 1: draft-cavage-08 as OCI profiles it), made the
//! way the official SDKs make it, so that for one key, date and request the Authorization
//! header is the SDK's byte for byte (the end-to-end tests check this against the Python
//! SDK). One function signs every OCI call the agent makes.
//!
//! Signed: `date (request-target) host`, plus `content-length content-type
//! x-content-sha256` for PUT, POST and PATCH (an empty body hashed too) unless the call
//! excludes its body (Object Storage uploads). Missing `date`, `host`, `content-type`,
//! `content-length` and `x-content-sha256` are filled in first, as the SDKs do.

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, DATE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::signature::{SignatureEncoding, Signer as _};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{origin}: not an RSA private key in PEM (PKCS#1 or PKCS#8): {reason}")]
    Key { origin: String, reason: String },
    #[error("{origin}: the key is encrypted, and no passphrase was given")]
    NeedsPassphrase { origin: String },
    #[error(
        "{origin}: the key is encrypted in OpenSSL's legacy PEM format, which is not supported; \
         convert it to encrypted PKCS#8: openssl pkcs8 -topk8 -v2 aes-256-cbc -in KEY -out NEW"
    )]
    LegacyEncrypted { origin: String },
    #[error("{origin}: the passphrase does not decrypt the key")]
    BadPassphrase { origin: String },
    #[error("generating an RSA-2048 session key: {0}")]
    Generate(String),
    #[error("{0} requests cannot be signed (OCI signs GET, HEAD, DELETE, PUT, POST and PATCH)")]
    Method(Method),
    #[error("{0}: the URL has no host")]
    NoHost(String),
    #[error("header {name}: {reason}")]
    Header { name: String, reason: &'static str },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The base64 SHA-256 of an empty body, which OCI still wants on a POST without one.
pub const EMPTY_SHA256: &str = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

/// `x-content-sha256`, which the SDKs spell in lowercase.
const CONTENT_SHA256: HeaderName = HeaderName::from_static("x-content-sha256");

/// An RSA private key that signs requests. Its `Debug` shows only its size.
#[derive(Clone)]
pub struct PrivateKey(rsa::pkcs1v15::SigningKey<Sha256>, rsa::RsaPublicKey);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use rsa::traits::PublicKeyParts;
        write!(f, "PrivateKey(RSA-{})", self.1.n().bits())
    }
}

impl PrivateKey {
    fn new(key: rsa::RsaPrivateKey) -> Self {
        let public = key.to_public_key();
        PrivateKey(rsa::pkcs1v15::SigningKey::new(key), public)
    }

    /// A new RSA-2048 key (e = 65537), as the SDKs make for each workload-identity token.
    pub fn generate() -> Result<Self> {
        let mut rng = rsa::rand_core::OsRng;
        rsa::RsaPrivateKey::new(&mut rng, 2048)
            .map(Self::new)
            .map_err(|e| Error::Generate(e.to_string()))
    }

    /// A key from PEM text (`origin` names where it came from in errors): PKCS#1 (`RSA
    /// PRIVATE KEY`), PKCS#8 (`PRIVATE KEY`), or encrypted PKCS#8 with `passphrase`.
    pub fn from_pem(text: &str, passphrase: Option<&str>, origin: &str) -> Result<Self> {
        let bad = |reason: String| Error::Key {
            origin: origin.to_owned(),
            reason,
        };
        let origin = origin.to_owned();
        let text = text.trim();
        if text.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(Error::LegacyEncrypted { origin });
        }
        if text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            let Some(pass) = passphrase else {
                return Err(Error::NeedsPassphrase { origin });
            };
            return rsa::RsaPrivateKey::from_pkcs8_encrypted_pem(text, pass.as_bytes())
                .map(Self::new)
                .map_err(|_| Error::BadPassphrase { origin });
        }
        let key = if text.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
            rsa::RsaPrivateKey::from_pkcs1_pem(text).map_err(|e| bad(e.to_string()))?
        } else if text.starts_with("-----BEGIN PRIVATE KEY-----") {
            rsa::RsaPrivateKey::from_pkcs8_pem(text).map_err(|e| bad(e.to_string()))?
        } else {
            return Err(bad(
                "no BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY line".into()
            ));
        };
        Ok(Self::new(key))
    }

    /// The public key as base64 of its SubjectPublicKeyInfo DER: the `podKey` of the
    /// workload-identity token exchange (the Python SDK's form).
    pub fn public_spki_base64(&self) -> String {
        // Encoding a valid public key cannot fail.
        self.1
            .to_public_key_der()
            .map(|der| B64.encode(der.as_bytes()))
            .unwrap_or_default()
    }

    /// The public key's SubjectPublicKeyInfo DER.
    pub fn public_spki_der(&self) -> Vec<u8> {
        self.1
            .to_public_key_der()
            .map(|der| der.as_bytes().to_vec())
            .unwrap_or_default()
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256.
    fn sign(&self, data: &[u8]) -> Vec<u8> {
        self.0.sign(data).to_vec()
    }
}

/// Which headers a request signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyHeaders {
    /// The body headers on PUT, POST and PATCH (every call but a few uploads).
    #[default]
    ForMethod,
    /// Never (Object Storage's PutObject and UploadPart: large streamed bodies).
    Excluded,
}

/// Signs a request in place: fills in the missing headers and adds `authorization`.
/// `now` is used only when `headers` has no `date`.
pub fn sign(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    body: &[u8],
    credentials: (&str, &PrivateKey),
    body_headers: BodyHeaders,
    now: SystemTime,
) -> Result<()> {
    let (key_id, key) = credentials;
    let with_body = match *method {
        Method::GET | Method::HEAD | Method::DELETE => false,
        Method::PUT | Method::POST | Method::PATCH => body_headers == BodyHeaders::ForMethod,
        _ => return Err(Error::Method(method.clone())),
    };
    let host = uri
        .authority()
        .ok_or_else(|| Error::NoHost(uri.to_string()))?;
    fill(headers, DATE, || httpdate::fmt_http_date(now))?;
    fill(headers, HOST, || host.as_str().to_owned())?;
    fill(headers, CONTENT_TYPE, || "application/json".to_owned())?;
    let mut names = vec!["date", "(request-target)", "host"];
    if with_body {
        fill(headers, CONTENT_SHA256, || B64.encode(Sha256::digest(body)))?;
        fill(headers, CONTENT_LENGTH, || body.len().to_string())?;
        names.extend(["content-length", "content-type", "x-content-sha256"]);
    }
    let target = request_target(method, uri);
    let mut lines = Vec::with_capacity(names.len());
    for name in &names {
        let value = match *name {
            "(request-target)" => target.clone(),
            _ => text(headers, name)?,
        };
        lines.push(format!("{name}: {value}"));
    }
    let signature = B64.encode(key.sign(lines.join("\n").as_bytes()));
    let authorization = format!(
        "Signature algorithm=\"rsa-sha256\",headers=\"{}\",keyId=\"{key_id}\",signature=\"{signature}\",version=\"1\"",
        names.join(" ")
    );
    let value = HeaderValue::from_str(&authorization).map_err(|_| Error::Header {
        name: "authorization".into(),
        reason: "the key id is not a valid header value",
    })?;
    headers.insert(AUTHORIZATION, value);
    Ok(())
}

/// `(request-target)`: the lowercase method, then the path and query as sent.
fn request_target(method: &Method, uri: &Uri) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let path = if path.is_empty() { "/" } else { path };
    format!("{} {path}", method.as_str().to_ascii_lowercase())
}

fn fill(headers: &mut HeaderMap, name: HeaderName, value: impl FnOnce() -> String) -> Result<()> {
    if headers.contains_key(&name) {
        return Ok(());
    }
    let value = HeaderValue::from_str(&value()).map_err(|_| Error::Header {
        name: name.to_string(),
        reason: "not a valid header value",
    })?;
    headers.insert(name, value);
    Ok(())
}

fn text(headers: &HeaderMap, name: &str) -> Result<String> {
    let value = headers.get(name).ok_or_else(|| Error::Header {
        name: name.to_owned(),
        reason: "missing",
    })?;
    value
        .to_str()
        .map(str::to_owned)
        .map_err(|_| Error::Header {
            name: name.to_owned(),
            reason: "not visible ASCII",
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;
    use std::time::{Duration, UNIX_EPOCH};

    fn key() -> &'static PrivateKey {
        static KEY: OnceLock<PrivateKey> = OnceLock::new();
        KEY.get_or_init(|| PrivateKey::generate().unwrap())
    }

    fn signed(method: Method, url: &str, body: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let now = UNIX_EPOCH + Duration::from_secs(1_796_151_935);
        let uri: Uri = url.parse().unwrap();
        sign(
            &method,
            &uri,
            &mut headers,
            body,
            ("ST$token", key()),
            BodyHeaders::ForMethod,
            now,
        )
        .unwrap();
        headers
    }

    fn verify(headers: &HeaderMap, signing_string: &str) {
        use rsa::signature::Verifier;
        let auth = headers["authorization"].to_str().unwrap();
        let sig = auth.split("signature=\"").nth(1).unwrap();
        let sig = B64.decode(sig.split('"').next().unwrap()).unwrap();
        let verifier = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key().1.clone());
        let sig = rsa::pkcs1v15::Signature::try_from(sig.as_slice()).unwrap();
        verifier
            .verify(signing_string.as_bytes(), &sig)
            .expect("the signature verifies over the expected signing string");
    }

    #[test]
    fn a_get_signs_date_target_and_host_with_the_port() {
        let h = signed(
            Method::GET,
            "https://127.0.0.1:8443/20190301/secretbundles/ocid1.vaultsecret.oc1..x?stage=CURRENT",
            b"",
        );
        assert_eq!(h["date"], "Tue, 01 Dec 2026 19:05:35 GMT");
        assert_eq!(h["host"], "127.0.0.1:8443");
        assert_eq!(h["content-type"], "application/json", "set, not signed");
        assert!(!h.contains_key("x-content-sha256"));
        let auth = h["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with(
                "Signature algorithm=\"rsa-sha256\",headers=\"date (request-target) host\",keyId=\"ST$token\",signature=\""
            ),
            "{auth}"
        );
        assert!(auth.ends_with("\",version=\"1\""), "{auth}");
        verify(
            &h,
            "date: Tue, 01 Dec 2026 19:05:35 GMT\n\
             (request-target): get /20190301/secretbundles/ocid1.vaultsecret.oc1..x?stage=CURRENT\n\
             host: 127.0.0.1:8443",
        );
    }

    #[test]
    fn a_post_signs_its_body_and_an_empty_one_too() {
        let h = signed(
            Method::POST,
            "https://notification.example/20181201/topics/t/messages",
            b"{\"body\":\"x\"}",
        );
        assert_eq!(h["content-length"], "12");
        let hash = B64.encode(Sha256::digest(b"{\"body\":\"x\"}"));
        assert_eq!(h["x-content-sha256"], hash.as_str());
        verify(
            &h,
            &format!(
                "date: Tue, 01 Dec 2026 19:05:35 GMT\n\
                 (request-target): post /20181201/topics/t/messages\n\
                 host: notification.example\n\
                 content-length: 12\n\
                 content-type: application/json\n\
                 x-content-sha256: {hash}"
            ),
        );
        let h = signed(
            Method::POST,
            "https://s.example/a/actions/getByName?secretName=n",
            b"",
        );
        assert_eq!(h["x-content-sha256"], EMPTY_SHA256);
        assert_eq!(h["content-length"], "0");
        let auth = h["authorization"].to_str().unwrap();
        assert!(auth.contains(
            "headers=\"date (request-target) host content-length content-type x-content-sha256\""
        ));
        // DELETE signs no body headers; an excluded body neither.
        let h = signed(Method::DELETE, "https://s.example/x", b"");
        assert!(!h.contains_key("x-content-sha256"));
    }

    #[test]
    fn headers_already_set_are_kept_and_bad_requests_are_errors() {
        let mut headers = HeaderMap::new();
        headers.insert(
            DATE,
            HeaderValue::from_static("Thu, 05 Jan 2014 21:31:40 GMT"),
        );
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let uri: Uri = "https://os.example/n/b/o/obj".parse().unwrap();
        let now = SystemTime::now();
        sign(
            &Method::PUT,
            &uri,
            &mut headers,
            b"data",
            ("k", key()),
            BodyHeaders::Excluded,
            now,
        )
        .unwrap();
        assert_eq!(headers["date"], "Thu, 05 Jan 2014 21:31:40 GMT");
        assert_eq!(headers["content-type"], "application/octet-stream");
        assert!(
            !headers.contains_key("x-content-sha256"),
            "an excluded body is not hashed"
        );

        let mut headers = HeaderMap::new();
        let err = sign(
            &Method::OPTIONS,
            &uri,
            &mut headers,
            b"",
            ("k", key()),
            BodyHeaders::ForMethod,
            now,
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "OPTIONS requests cannot be signed (OCI signs GET, HEAD, DELETE, PUT, POST and PATCH)"
        );
        let relative: Uri = "/x".parse().unwrap();
        let err = sign(
            &Method::GET,
            &relative,
            &mut headers,
            b"",
            ("k", key()),
            BodyHeaders::ForMethod,
            now,
        );
        assert_eq!(err.unwrap_err().to_string(), "/x: the URL has no host");
    }

    #[test]
    fn keys_load_from_pem_and_never_print() {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::EncodePrivateKey;
        let raw = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let pkcs1 = raw.to_pkcs1_pem(Default::default()).unwrap();
        let pkcs8 = raw.to_pkcs8_pem(Default::default()).unwrap();
        let a = PrivateKey::from_pem(&pkcs1, None, "a.pem").unwrap();
        let b = PrivateKey::from_pem(&pkcs8, None, "b.pem").unwrap();
        assert_eq!(a.public_spki_base64(), b.public_spki_base64());
        assert_eq!(format!("{a:?}"), "PrivateKey(RSA-1024)");
        let encrypted = raw
            .to_pkcs8_encrypted_pem(&mut rsa::rand_core::OsRng, b"secret", Default::default())
            .unwrap();
        assert!(PrivateKey::from_pem(&encrypted, Some("secret"), "c.pem").is_ok());
        let err = PrivateKey::from_pem(&encrypted, None, "c.pem").unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.pem: the key is encrypted, and no passphrase was given"
        );
        let err = PrivateKey::from_pem(&encrypted, Some("wrong"), "c.pem").unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.pem: the passphrase does not decrypt the key"
        );
        let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        let err = PrivateKey::from_pem(legacy, Some("x"), "d.pem").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("d.pem: the key is encrypted in OpenSSL's legacy PEM format")
        );
        let err = PrivateKey::from_pem("hello", None, "e.pem").unwrap_err();
        assert!(
            err.to_string().starts_with("e.pem: not an RSA private key"),
            "{err}"
        );
        assert!(
            !err.to_string().contains("hello"),
            "the text is never echoed"
        );
    }
}
