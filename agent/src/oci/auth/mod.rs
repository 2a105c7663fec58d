//! Who the agent is to OCI and the key it signs with. From the OCI config file: an API key
//! (`user`, `tenancy`, `fingerprint`, `key_file`, `pass_phrase`), or a session token
//! (`security_token_file` beside `key_file`, as `oci session authenticate` leaves them).
//! OKE workload identity, the in-cluster form, exchanges the pod's service-account token.

pub mod config_file;
pub mod workload;

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
    WorkloadIdentity,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ApiKey => "api key",
            Kind::SessionToken => "session token",
            Kind::WorkloadIdentity => "OKE workload identity",
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
    source: Keys,
}

/// Where the credentials come from.
#[derive(Clone)]
enum Keys {
    Fixed(Credentials),
    Workload(Arc<workload::Refresher>),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keys::Fixed(c) => c.fmt(f),
            Keys::Workload(r) => r.session().fmt(f),
        }
    }
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
            source: Keys::Fixed(Credentials { key_id, key }),
        })
    }

    /// OKE workload identity: exchanges the pod's service-account token now, then keeps
    /// the session fresh in the background.
    pub async fn workload(opts: workload::Options) -> Result<Self, workload::Error> {
        let region = opts.region.clone();
        let principal = format!(
            "the service account whose token is {}",
            opts.token_path.display()
        );
        Ok(Identity {
            kind: Kind::WorkloadIdentity,
            region,
            principal,
            source: Keys::Workload(workload::Refresher::start(opts).await?),
        })
    }

    /// When the current credentials expire, for those that do.
    pub fn expires(&self) -> Option<std::time::SystemTime> {
        match &self.source {
            Keys::Fixed(_) => None,
            Keys::Workload(r) => Some(r.session().expires),
        }
    }

    /// Why the last refresh failed, while the current credentials are still in use.
    pub fn refresh_error(&self) -> Option<String> {
        match &self.source {
            Keys::Fixed(_) => None,
            Keys::Workload(r) => r.last_error(),
        }
    }

    /// New credentials after OCI refused these (a 401): `Ok(false)` when they cannot be
    /// renewed (an API key).
    pub async fn renew(&self, refused: &Credentials) -> Result<bool, workload::Error> {
        let Keys::Workload(r) = &self.source else {
            return Ok(false);
        };
        let session = r.session();
        // Refused credentials older than the current ones: already renewed.
        if session.credentials().key_id != refused.key_id {
            return Ok(true);
        }
        r.refresh(session.issued).await.map(|()| true)
    }

    /// What the next request signs with.
    pub fn credentials(&self) -> Credentials {
        match &self.source {
            Keys::Fixed(c) => c.clone(),
            Keys::Workload(r) => r.session().credentials(),
        }
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })
}
