//! Name rules the API server applies, shared by the configuration (sync, source and sink
//! names) and the renderer (object names and namespaces), so both say the same thing.

/// The name rule the API server applies to a kind.
pub fn rule(group: &str, kind: &str) -> fn(&str) -> Result<(), String> {
    match (group, kind) {
        ("", "Namespace") => dns1123_label,
        ("", "Service") => dns1035_label,
        // RBAC names are path segments: `system:aggregate-to-edit` is valid.
        (
            "rbac.authorization.k8s.io",
            "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding",
        ) => path_segment,
        _ => dns1123_subdomain,
    }
}

fn is_label_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn label_shape(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter().copied().all(is_label_char)
        && is_alnum(b[0])
        && is_alnum(b[b.len() - 1])
}

/// RFC 1123 label, as Kubernetes validates namespaces (and config names: sources, syncs,
/// alert sinks).
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if !label_shape(s) {
        return Err(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric \
                    characters or '-', and must start and end with an alphanumeric character"
                .into(),
        );
    }
    Ok(())
}

/// RFC 1123 subdomain, the rule for most object names.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    if !s.split('.').all(label_shape) {
        return Err(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                    characters, '-' or '.', and must start and end with an alphanumeric character"
                .into(),
        );
    }
    Ok(())
}

/// RFC 1035 label, the rule for Service names (they become DNS names).
pub fn dns1035_label(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if !label_shape(s) || !s.as_bytes()[0].is_ascii_lowercase() {
        return Err(
            "a DNS-1035 label must consist of lower case alphanumeric characters or \
                    '-', start with an alphabetic character, and end with an alphanumeric character"
                .into(),
        );
    }
    Ok(())
}

/// A path segment, the rule for RBAC names.
pub fn path_segment(s: &str) -> Result<(), String> {
    if s == "." || s == ".." {
        return Err("may not be '.' or '..'".into());
    }
    if s.contains('/') || s.contains('%') {
        return Err("may not contain '/' or '%'".into());
    }
    Ok(())
}

/// Whether `s` is an RFC 1123 label (see [`dns1123_label`]).
pub fn is_dns_label(s: &str) -> bool {
    dns1123_label(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_api_server() {
        assert!(dns1123_subdomain("web.v2-a").is_ok());
        assert!(dns1123_subdomain(&"a".repeat(253)).is_ok());
        for bad in [
            "Web",
            "web_1",
            "-web",
            "web-",
            "a..b",
            "a.-b",
            "",
            &"a".repeat(254),
        ] {
            assert!(dns1123_subdomain(bad).is_err(), "{bad:?}");
        }
        assert!(dns1123_label("shop-1").is_ok());
        for bad in ["shop.a", "Shop", &"a".repeat(64)] {
            assert!(dns1123_label(bad).is_err(), "{bad:?}");
        }
        assert!(dns1035_label("web").is_ok());
        assert!(dns1035_label("1web").is_err());
        assert!(path_segment("system:controller:foo").is_ok());
        for bad in [".", "..", "a/b", "a%2f"] {
            assert!(path_segment(bad).is_err(), "{bad:?}");
        }

        assert!(is_dns_label("a-1") && !is_dns_label("-a") && !is_dns_label("A"));
    }
}
