//! OCI request signing, byte for byte against the official Python SDK (the oracle): for
//! the same key, date and request, `gitops-agent oci raw-request --print-only` and the
//! SDK's `Signer` (API keys: PKCS#1, PKCS#8, encrypted PKCS#8) and `SecurityTokenSigner`
//! (keyId `ST$<token>`) give the same Authorization header and the same signed headers,
//! on GET, HEAD, DELETE, PUT, POST (with a body and with none) and PATCH.

#[path = "../harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{Value, json};

const DATE: &str = "Tue, 01 Dec 2026 19:05:35 GMT";
const TENANCY: &str =
    "ocid1.tenancy.oc1..aaaaaaaaba3pv6wkcr4jqae5f15p2b2m2yt2j6rx32uzr4h25vqstifsfdsq";
const USER: &str = "ocid1.user.oc1..aaaaaaaat5nvwcna5j6aqzjcaty5eqbb6qt2jvpkanghtgdaqedqw3rynjq";
const FINGERPRINT: &str = "20:3b:97:13:55:1c:5b:0d:d3:37:d8:50:4e:c5:3a:34";

/// A request of the cases, as both signers get it.
struct Case {
    method: &'static str,
    url: &'static str,
    body: Option<&'static [u8]>,
}

const CASES: &[Case] = &[
    Case {
        method: "GET",
        url: "https://secrets.vaults.us-ashburn-1.oci.oraclecloud.com/20190301/secretbundles/ocid1.vaultsecret.oc1.iad.abc?stage=CURRENT",
        body: None,
    },
    Case {
        method: "GET",
        url: "https://127.0.0.1:8443/20210630/repositories/ocid1.devopsrepository.oc1..r/refs?refName=main&refType=BRANCH",
        body: None,
    },
    Case {
        method: "HEAD",
        url: "https://objectstorage.example:443/n/ns/b/bucket/o/a%2Fb.yaml",
        body: None,
    },
    Case {
        method: "DELETE",
        url: "https://containerengine.example/20180222/nodePools/ocid1.nodepool.oc1..p",
        body: None,
    },
    Case {
        method: "POST",
        url: "https://notification.us-ashburn-1.oraclecloud.com/20181201/topics/ocid1.onstopic.oc1..t/messages",
        body: Some(br#"{"title":"drift","body":"Deployment/shop/web: spec.replicas 2 -> 5"}"#),
    },
    Case {
        method: "POST",
        url: "https://secrets.example/20190301/secretbundles/actions/getByName?secretName=db&vaultId=ocid1.vault.oc1..v",
        body: None,
    },
    Case {
        method: "PUT",
        url: "https://containerengine.example/20180222/nodePools/ocid1.nodepool.oc1..p",
        body: Some(br#"{"nodeConfigDetails":{"size":3}}"#),
    },
    Case {
        method: "PATCH",
        url: "https://example.oraclecloud.com/a/b?c=d",
        body: Some("{\"name\":\"caf\u{e9}\"}".as_bytes()),
    },
];

/// Keys as users hold them: PKCS#1, PKCS#8 and encrypted PKCS#8, made by openssl.
fn keys(dir: &Path) -> Vec<(&'static str, PathBuf, Option<&'static str>)> {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |name: &str| dir.join(name).display().to_string();
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p("pkcs8.pem"),
    ]);
    run(&[
        "rsa",
        "-in",
        &p("pkcs8.pem"),
        "-traditional",
        "-out",
        &p("pkcs1.pem"),
    ]);
    run(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes-256-cbc",
        "-in",
        &p("pkcs8.pem"),
        "-passout",
        "pass:s3cret",
        "-out",
        &p("encrypted.pem"),
    ]);
    vec![
        ("pkcs1", dir.join("pkcs1.pem"), None),
        ("pkcs8", dir.join("pkcs8.pem"), None),
        ("encrypted", dir.join("encrypted.pem"), Some("s3cret")),
    ]
}

/// What the SDK set on each request.
fn oracle(spec: Value) -> Vec<BTreeMap<String, String>> {
    let mut child = Command::new(harness::oci_python())
        .arg(harness::repo_root().join("tests/oci/sign.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), &spec).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "oracle: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn requests() -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    CASES
        .iter()
        .map(|c| json!({"method": c.method, "url": c.url, "date": DATE, "body": c.body.map(|b| b64.encode(b))}))
        .collect()
}

/// What the agent's CLI prints for each request: its headers.
fn agent(dir: &Path, config: &Path, profile: &str) -> Vec<BTreeMap<String, String>> {
    CASES
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_gitops-agent"));
            cmd.args([
                "oci",
                "raw-request",
                c.method,
                c.url,
                "--print-only",
                "--date",
                DATE,
            ])
            .args(["--profile", profile])
            .arg("--config-file")
            .arg(config);
            if let Some(body) = c.body {
                let file = dir.join(format!("body-{i}"));
                std::fs::write(&file, body).unwrap();
                cmd.arg("--body").arg(file);
            }
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            let mut lines = text.lines();
            assert_eq!(
                lines.next(),
                Some(format!("{} {}", c.method, c.url).as_str())
            );
            lines
                .map(|l| {
                    let (n, v) = l.split_once(": ").unwrap();
                    (n.to_owned(), v.to_owned())
                })
                .collect()
        })
        .collect()
}

/// The Authorization header and every header it signs agree, byte for byte.
fn assert_same(
    what: &str,
    ours: &[BTreeMap<String, String>],
    sdk: &[BTreeMap<String, String>],
) -> usize {
    for ((ours, sdk), case) in ours.iter().zip(sdk).zip(CASES) {
        let auth = &sdk["authorization"];
        assert_eq!(
            &ours["authorization"], auth,
            "{what} {} {}",
            case.method, case.url
        );
        let signed = auth
            .split("headers=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        for name in signed.split(' ').filter(|n| *n != "(request-target)") {
            assert_eq!(
                ours.get(name),
                sdk.get(name),
                "{what} {} {}: {name}",
                case.method,
                case.url
            );
        }
    }
    assert_eq!(ours.len(), sdk.len());
    ours.len()
}

#[test]
fn signatures_match_the_oci_python_sdk_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let token = format!(
        "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"res_tenant":"t","exp":1796155535,"iat":1796151935}"#)
    );
    std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
    let mut config = String::new();
    let mut cases = 0;
    let keys = keys(dir.path());
    for (name, key, pass) in &keys {
        let pass_line = pass
            .map(|p| format!("pass_phrase={p}\n"))
            .unwrap_or_default();
        config += &format!(
            "[{name}]\nuser={USER}\nfingerprint={FINGERPRINT}\ntenancy={TENANCY}\nregion=us-ashburn-1\nkey_file={}\n{pass_line}\n",
            key.display()
        );
        config += &format!(
            "[{name}-session]\nkey_file={}\nsecurity_token_file={}\n{pass_line}\n",
            key.display(),
            dir.path().join("token").display()
        );
    }
    let path = dir.path().join("config");
    std::fs::write(&path, config).unwrap();
    for (name, key, pass) in &keys {
        let api_key = json!({
            "key_file": key, "pass_phrase": pass, "tenancy": TENANCY, "user": USER,
            "fingerprint": FINGERPRINT, "requests": requests(),
        });
        cases += assert_same(name, &agent(dir.path(), &path, name), &oracle(api_key));
        let session =
            json!({"key_file": key, "pass_phrase": pass, "token": token, "requests": requests()});
        let profile = format!("{name}-session");
        cases += assert_same(
            &profile,
            &agent(dir.path(), &path, &profile),
            &oracle(session),
        );
    }
    eprintln!("{cases} signatures identical to the oci SDK's");
    assert_eq!(cases, 6 * CASES.len());
}
