//! Git URLs, parsed once: `scheme://[userinfo@]host[:port]/path` and the scp-like
//! `[user@]host:path` that Git takes for SSH. The configuration validates with it, the
//! source connects and redacts with it, and the webhook receiver matches pushes with it.

/// A Git URL in parts; every part borrows from the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GitUrl<'a> {
    /// `None` for the scp-like form.
    pub scheme: Option<&'a str>,
    pub userinfo: Option<&'a str>,
    /// Host and port as written (`host:2222`, `[::1]:22`).
    pub hostport: &'a str,
    /// The host without brackets or port.
    pub host: &'a str,
    pub port: Option<&'a str>,
    /// Everything after the authority (`/org/repo.git`, or `org/repo.git` when scp-like).
    pub path: &'a str,
}

const SSH_SCHEMES: &[&str] = &["ssh", "git+ssh", "ssh+git"];
const SCHEMES: &[&str] = &["https", "http", "ssh", "git", "file", "git+ssh", "ssh+git"];

/// Splits a URL; `None` when it is neither form (a local path, say).
pub fn parse(url: &str) -> Option<GitUrl<'_>> {
    let url = url.trim();
    if let Some((scheme, rest)) = url.split_once("://") {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = host_and_port(hostport)?;
        return Some(GitUrl {
            scheme: Some(scheme),
            userinfo,
            hostport,
            host,
            port,
            path,
        });
    }
    // scp-like: a colon before any slash, and more than a drive letter before it.
    let (head, path) = url.split_once(':')?;
    if head.len() < 2 || head.contains('/') {
        return None;
    }
    let (userinfo, host) = match head.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, head),
    };
    if host.is_empty() {
        return None;
    }
    Some(GitUrl {
        scheme: None,
        userinfo,
        hostport: host,
        host,
        port: None,
        path,
    })
}

fn host_and_port(hostport: &str) -> Option<(&str, Option<&str>)> {
    if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(port))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    Some(match hostport.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (hostport, None),
    })
}

impl GitUrl<'_> {
    pub fn is_ssh(&self) -> bool {
        self.scheme.is_none_or(|s| SSH_SCHEMES.contains(&s))
    }
}

/// Whether Git reaches `url` over SSH (`ssh://`, or scp-like).
pub fn is_ssh(url: &str) -> bool {
    parse(url).is_some_and(|u| u.is_ssh())
}

/// https, http, ssh, git, file (with something after `://`) or scp-like.
pub fn is_supported(url: &str) -> bool {
    parse(url).is_some_and(|u| match u.scheme {
        None => true,
        Some(s) => SCHEMES.contains(&s) && !(u.hostport.is_empty() && u.path.is_empty()),
    })
}

/// Whether the URL embeds a password (`user:pass@`): credentials belong in a Secret.
pub fn has_password(url: &str) -> bool {
    parse(url).is_some_and(|u| u.scheme.is_some() && u.userinfo.is_some_and(|i| i.contains(':')))
}

/// The URL with credentials removed: `https://user:token@host/x` → `https://***@host/x`.
/// A bare user name is kept for SSH (`ssh://git@host/x`), where it is not a secret; for
/// HTTP(S) a lone user name may be a token, so it goes too.
pub fn redact(url: &str) -> String {
    let Some(u) = parse(url) else {
        return url.to_owned();
    };
    match (u.scheme, u.userinfo) {
        (Some(scheme), Some(info)) if !u.is_ssh() || info.contains(':') => {
            format!("{scheme}://***@{}{}", u.hostport, u.path)
        }
        _ => url.to_owned(),
    }
}

/// Host and port of an SSH URL (22 unless it names one); `None` for other URLs.
pub fn ssh_host_port(url: &str) -> Option<(String, u16)> {
    let u = parse(url).filter(GitUrl::is_ssh)?;
    let port = match u.port {
        Some(p) => p.parse().ok()?,
        None => 22,
    };
    Some((u.host.to_owned(), port))
}

/// A repository URL reduced to `host/path` for comparison: scheme, user, port, `.git`
/// suffix and slashes dropped, everything lowercased; scp-like `git@host:org/repo` gives
/// the same as `ssh://git@host/org/repo` and `https://host/org/repo`. `None` if it has no
/// path. Lenient on purpose: a false match costs one fetch that finds nothing new, a
/// missed one loses the push (the hosts treat owner and repository names without case).
pub fn normalize(url: &str) -> Option<String> {
    let u = parse(url)?;
    let path = u
        .path
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .trim_matches('/');
    let path = path
        .strip_suffix(".git")
        .unwrap_or(path)
        .trim_end_matches('/');
    if path.is_empty() {
        return None;
    }
    Some(format!(
        "{}/{}",
        u.host.to_ascii_lowercase(),
        path.to_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert!(is_ssh("ssh://git@host:22/r.git"));
        assert!(is_ssh("git@host:org/r.git"));
        assert!(!is_ssh("https://host/r.git"));
        assert!(!is_ssh("file:///tmp/r"));
        assert!(is_supported("file:///tmp/r"));
        assert!(!is_supported("/tmp/r"));
        assert!(!is_supported("https://"));
        assert!(!is_supported("ftp://host/repo"));
        assert!(has_password("https://user:s3cret@host/r.git"));
        assert!(!has_password("https://user@host/r.git"));
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact("https://user:tok3n@host/r.git"),
            "https://***@host/r.git"
        );
        assert_eq!(redact("https://tok3n@host/r.git"), "https://***@host/r.git");
        assert_eq!(redact("ssh://git@host/r.git"), "ssh://git@host/r.git");
        assert_eq!(redact("ssh://git:pw@host/r.git"), "ssh://***@host/r.git");
        assert_eq!(redact("https://host/a@b"), "https://host/a@b");
    }

    #[test]
    fn ssh_urls_give_host_and_port() {
        assert_eq!(
            ssh_host_port("ssh://git@h.example:2222/x"),
            Some(("h.example".into(), 2222))
        );
        assert_eq!(
            ssh_host_port("ssh://h.example/x"),
            Some(("h.example".into(), 22))
        );
        assert_eq!(
            ssh_host_port("ssh://git@[::1]:2200/x"),
            Some(("::1".into(), 2200))
        );
        assert_eq!(
            ssh_host_port("git@h.example:org/x.git"),
            Some(("h.example".into(), 22))
        );
        assert_eq!(ssh_host_port("https://h.example/x"), None);
        assert_eq!(ssh_host_port("file:///x"), None);
        assert_eq!(ssh_host_port("/srv/git/x.git"), None);
    }

    #[test]
    fn urls_normalise_across_forms() {
        let same = [
            "https://github.com/Acme/deploy-config",
            "https://github.com/acme/deploy-config.git",
            "https://github.com/acme/deploy-config/",
            "https://github.com/acme/deploy-config.git/",
            "http://GitHub.COM/acme/deploy-config",
            "https://user@github.com/acme/deploy-config",
            "https://x-access-token:tok@github.com:443/acme/deploy-config",
            "git@github.com:Acme/deploy-config.git",
            "github.com:acme/deploy-config",
            "ssh://git@github.com/acme/deploy-config.git",
            "ssh://git@github.com:22/acme/deploy-config",
            "git+ssh://git@github.com/acme/deploy-config",
            "git://github.com/Acme/deploy-config.git",
            "  https://github.com/acme/deploy-config?x=1#frag ",
        ];
        for u in same {
            assert_eq!(
                normalize(u).as_deref(),
                Some("github.com/acme/deploy-config"),
                "{u}"
            );
        }
        let different = [
            "https://github.com/acme/deploy-config-2",
            "https://github.com/acme/deploy",
            "https://gitlab.com/acme/deploy-config",
            "https://github.com/other/deploy-config",
            "https://github.com/acme/deploy-config/sub",
        ];
        for u in different {
            assert_ne!(
                normalize(u).as_deref(),
                Some("github.com/acme/deploy-config"),
                "{u}"
            );
        }
        assert_eq!(
            normalize("ssh://[::1]:2222/repo.git").as_deref(),
            Some("::1/repo")
        );
        assert_eq!(
            normalize("file:///srv/git/repo.git").as_deref(),
            Some("/srv/git/repo")
        );
        for bad in [
            "",
            "https://github.com",
            "https://github.com/",
            "no-colon",
            "/local/path:x",
            "ssh://[::1/x",
            ":repo",
        ] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
    }
}
