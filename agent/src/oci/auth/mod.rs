//! Who the agent is to OCI and the key it signs with. From the OCI config file: an API key
//! (`user`, `tenancy`, `fingerprint`, `key_file`, `pass_phrase`), or a session token
//! (`security_token_file` beside `key_file`, as `oci session authenticate` leaves them).
//! OKE workload identity, the in-cluster form, exchanges the pod's service-account token.

pub mod config_file;

use std::path::Path;
use std::sync::Arc;

use super::signing::{self, PrivateKey};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config_file::Error),
    #[error(transparent)]
    Key(#[from] signing::Error),
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the session token is empty")]
    EmptyToken { path: String },
}

/// What kind of identity signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ApiKey,
    SessionToken,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ApiKey => "api key",
            Kind::SessionToken => "session token",
        }
    }
}

/// The key id and key of one signature.
#[derive(Clone)]
pub struct Credentials {
    pub key_id: String,
    pub key: Arc<PrivateKey>,
}

impl std::fmt::Debug for Credentials {
    // A security token's key id is the token itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = if self.key_id.starts_with("ST$") {
            "ST$<token>"
        } else {
            &self.key_id
        };
        f.debug_struct("Credentials")
            .field("key_id", &shown)
            .finish()
    }
}

/// An identity, ready to sign.
#[derive(Debug, Clone)]
pub struct Identity {
    pub kind: Kind,
    /// The region its calls go to, when it names one.
    pub region: Option<String>,
    /// For `check`: the principal, never a token or a key.
    pub principal: String,
    credentials: Credentials,
}

impl Identity {
    /// The identity a profile of the OCI config file at `path` describes.
    pub fn from_config_file(path: &Path, profile: &str) -> Result<Self, Error> {
        let p = config_file::Profile::load(path, profile)?;
        let key_file = p.file("key_file")?;
        let origin = key_file.display().to_string();
        let pem = read(&key_file)?;
        let key = Arc::new(PrivateKey::from_pem(&pem, p.get("pass_phrase"), &origin)?);
        let (kind, principal, key_id) = if p.get("security_token_file").is_some() {
            let token_file = p.file("security_token_file")?;
            let shown = token_file.display().to_string();
            let token = read(&token_file)?;
            let token = token.trim();
            if token.is_empty() {
                return Err(Error::EmptyToken { path: shown });
            }
            let principal = format!("session token from {shown}");
            (Kind::SessionToken, principal, format!("ST${token}"))
        } else {
            let (tenancy, user) = (p.require("tenancy")?, p.require("user")?);
            let fingerprint = p.require("fingerprint")?;
            let principal = format!("user {user} of tenancy {tenancy}");
            (
                Kind::ApiKey,
                principal,
                format!("{tenancy}/{user}/{fingerprint}"),
            )
        };
        Ok(Identity {
            kind,
            region: p.get("region").map(str::to_owned),
            principal,
            credentials: Credentials { key_id, key },
        })
    }

    /// What the next request signs with.
    pub fn credentials(&self) -> Credentials {
        self.credentials.clone()
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })
}
