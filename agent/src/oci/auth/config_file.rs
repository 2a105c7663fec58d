//! The OCI config file (`~/.oci/config`, as the SDKs and the `oci` CLI read it): INI
//! sections of `key=value`, a profile inheriting what `[DEFAULT]` sets; `~` in file paths
//! is the home directory. Errors name the file and line; values are never echoed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Syntax {
        path: String,
        line: usize,
        reason: &'static str,
    },
    #[error("{path}: no profile [{profile}]")]
    NoProfile { path: String, profile: String },
    #[error("{path}: profile [{profile}] has no {key}")]
    Missing {
        path: String,
        profile: String,
        key: &'static str,
    },
}

/// One profile, `[DEFAULT]` applied.
#[derive(Clone, PartialEq, Eq)]
pub struct Profile {
    /// The file it came from, for errors.
    pub path: PathBuf,
    pub name: String,
    values: BTreeMap<String, String>,
}

impl std::fmt::Debug for Profile {
    // Keys only: a passphrase may be among the values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Profile {
    /// Reads `profile` from the config file at `path`.
    pub fn load(path: &Path, profile: &str) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(path, &text, profile)
    }

    pub fn parse(path: &Path, text: &str, profile: &str) -> Result<Self, Error> {
        let shown = path.display().to_string();
        let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut current: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let syntax = |reason| Error::Syntax {
                path: shown.clone(),
                line: i + 1,
                reason,
            };
            if let Some(name) = line.strip_prefix('[') {
                let name = name
                    .strip_suffix(']')
                    .ok_or_else(|| syntax("a section needs its closing ]"))?;
                current = Some(name.trim().to_owned());
                sections.entry(name.trim().to_owned()).or_default();
                continue;
            }
            let section = current
                .as_ref()
                .ok_or_else(|| syntax("a key before any [section]"))?;
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| syntax("expected key=value"))?;
            let values = sections.entry(section.clone()).or_default();
            values.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
        let mut values = sections.get("DEFAULT").cloned().unwrap_or_default();
        match sections.get(profile) {
            Some(own) => values.extend(own.clone()),
            None => {
                return Err(Error::NoProfile {
                    path: shown,
                    profile: profile.to_owned(),
                });
            }
        }
        Ok(Profile {
            path: path.to_owned(),
            name: profile.to_owned(),
            values,
        })
    }

    /// A value, if set and not empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A value that must be set.
    pub fn require(&self, key: &'static str) -> Result<&str, Error> {
        self.get(key).ok_or_else(|| Error::Missing {
            path: self.path.display().to_string(),
            profile: self.name.clone(),
            key,
        })
    }

    /// A file path value, `~` expanded; relative paths are relative to the config file.
    pub fn file(&self, key: &'static str) -> Result<PathBuf, Error> {
        let value = self.require(key)?;
        let path = match value.strip_prefix("~/") {
            Some(rest) => home().join(rest),
            None => PathBuf::from(value),
        };
        Ok(if path.is_absolute() {
            path
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(path)
        })
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# comment
[DEFAULT]
user=ocid1.user.oc1..u
fingerprint = 20:3b:97
key_file=~/.oci/key.pem
tenancy=ocid1.tenancy.oc1..t
region=us-ashburn-1

[OTHER]
region = eu-frankfurt-1
key_file = keys/other.pem
pass_phrase = hunter2
";

    #[test]
    fn a_profile_inherits_default_and_paths_resolve() {
        let path = Path::new("/etc/oci/config");
        let d = Profile::parse(path, TEXT, "DEFAULT").unwrap();
        assert_eq!(d.get("region"), Some("us-ashburn-1"));
        assert_eq!(d.get("fingerprint"), Some("20:3b:97"));
        assert_eq!(d.file("key_file").unwrap(), home().join(".oci/key.pem"));
        let o = Profile::parse(path, TEXT, "OTHER").unwrap();
        assert_eq!(o.get("region"), Some("eu-frankfurt-1"));
        assert_eq!(o.get("user"), Some("ocid1.user.oc1..u"));
        assert_eq!(
            o.file("key_file").unwrap(),
            Path::new("/etc/oci/keys/other.pem")
        );
        assert!(!format!("{o:?}").contains("hunter2"), "{o:?}");
    }

    #[test]
    fn errors_name_the_file_line_profile_and_key() {
        let path = Path::new("cfg");
        let err = Profile::parse(path, TEXT, "NOPE").unwrap_err();
        assert_eq!(err.to_string(), "cfg: no profile [NOPE]");
        let err = Profile::parse(path, "[DEFAULT]\nuser\n", "DEFAULT").unwrap_err();
        assert_eq!(err.to_string(), "cfg:2: expected key=value");
        let err = Profile::parse(path, "user=x\n", "DEFAULT").unwrap_err();
        assert_eq!(err.to_string(), "cfg:1: a key before any [section]");
        let p = Profile::parse(path, "[DEFAULT]\nuser=\n", "DEFAULT").unwrap();
        let err = p.require("user").unwrap_err();
        assert_eq!(err.to_string(), "cfg: profile [DEFAULT] has no user");
    }
}
