//! Image references: `registry/repository:tag`, parsed and checked before
//! they reach the Engine or a registry. The settings, the registry client and
//! both roles use them; it depends on nothing else in the crate.

/// An image reference with an explicit tag: `registry/repository:tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]`, if the reference names one.
    pub registry: Option<String>,
    /// The path inside the registry, e.g. `selfup` or `library/nginx`.
    pub path: String,
    pub tag: String,
}

/// Why an image reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ImageRefError {
    pub reference: String,
    pub reason: &'static str,
}

impl ImageRef {
    /// Parses `[registry/]path[:tag]`; a missing tag means `latest`.
    /// Digests are refused: an upgrade names a tag.
    pub fn parse(reference: &str) -> Result<ImageRef, ImageRefError> {
        let fail = |reason| {
            Err(ImageRefError {
                reference: reference.chars().take(300).collect(),
                reason,
            })
        };
        if reference.is_empty() {
            return fail("is empty");
        }
        if reference.contains('@') {
            return fail("digests are not accepted, name a tag");
        }
        let (registry, rest) = match reference.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (Some(first.to_string()), rest)
            }
            _ => (None, reference),
        };
        let (path, tag) = match rest.rsplit_once(':') {
            Some((p, t)) => (p, t),
            None => (rest, "latest"),
        };
        let path_ok = !path.is_empty()
            && path.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                    && c.as_bytes()[0].is_ascii_alphanumeric()
            });
        if !path_ok {
            return fail("the repository must be lowercase letters, digits and . _ - separated by /");
        }
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && tag.as_bytes()[0] != b'.'
            && tag.as_bytes()[0] != b'-';
        if !tag_ok {
            return fail("the tag must be letters, digits and . _ - (at most 128)");
        }
        if registry.as_deref().is_some_and(|r| !valid_registry(r)) {
            return fail("the registry must be host[:port]");
        }
        let image = ImageRef {
            registry,
            path: path.to_string(),
            tag: tag.to_string(),
        };
        if image.repository().len() > 255 {
            return fail("the repository name is longer than 255 characters");
        }
        Ok(image)
    }

    /// `registry/path` without the tag.
    pub fn repository(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}", self.path),
            None => self.path.clone(),
        }
    }

    /// The registry host this image comes from, with Docker Hub's name when none is given.
    pub fn registry_host(&self) -> &str {
        self.registry.as_deref().unwrap_or("docker.io")
    }

    pub fn with_tag(&self, tag: &str) -> ImageRef {
        ImageRef {
            tag: tag.to_string(),
            ..self.clone()
        }
    }
}

/// `host[:port]`: DNS labels (letters, digits, inner hyphens) separated by
/// single dots, or a bracketed IPv6 address, and an optional numeric port.
fn valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) if !registry.ends_with(']') => (h, Some(p)),
        _ => (registry, None),
    };
    if port.is_some_and(|p| p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.repository(), self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_with_registry_port_and_tag_splits_into_its_parts() {
        let r = ImageRef::parse("localhost:5000/selfup:1.4.0").unwrap();
        assert_eq!(r.registry.as_deref(), Some("localhost:5000"));
        assert_eq!(r.path, "selfup");
        assert_eq!(r.tag, "1.4.0");
        assert_eq!(r.to_string(), "localhost:5000/selfup:1.4.0");
    }

    #[test]
    fn a_missing_tag_means_latest_and_a_plain_name_has_no_registry() {
        let r = ImageRef::parse("library/nginx").unwrap();
        assert_eq!(r.registry, None);
        assert_eq!(r.tag, "latest");
        assert_eq!(r.registry_host(), "docker.io");
    }

    #[test]
    fn what_parses_prints_back_to_the_same_reference() {
        // Canonical references (with their tag) print back exactly.
        for canonical in [
            "localhost:5000/selfup:1.4.0",
            "registry.example.com/team/app:v2",
            "[::1]:5000/x:1",
            "nginx:latest",
            "library/nginx:1.27-alpine",
            "ghcr.io/o/r:1.0.0-rc.1",
        ] {
            let image = ImageRef::parse(canonical).unwrap();
            assert_eq!(image.to_string(), canonical);
        }
        // The others print in the normal form (the implied tag spelled out),
        // which parses to the same reference.
        for (given, normal) in [
            ("localhost:5000/selfup", "localhost:5000/selfup:latest"),
            ("nginx", "nginx:latest"),
            ("team/app", "team/app:latest"),
        ] {
            let image = ImageRef::parse(given).unwrap();
            assert_eq!(image.to_string(), normal);
            assert_eq!(ImageRef::parse(normal), Ok(image));
        }
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in [
            "",
            "UPPER/case:1",
            "a@sha256:abc",
            "x:",
            "x:-bad",
            "a//b:1",
            "reg:5000/:1",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
