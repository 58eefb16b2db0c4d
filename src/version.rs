//! Step 1 and 2 of the protocol: which image to upgrade to, and whether to.

use semver::{Version, VersionReq};

/// The image label that carries the version.
pub const VERSION_LABEL: &str = "org.opencontainers.image.version";

/// What an upgrade request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// Whatever `:latest` is now.
    Latest,
    /// The highest version matching: `3` is the highest 3.x.y, `3.2` the highest 3.2.y.
    Highest { text: String, req: VersionReq },
    /// Exactly this version: the only way to go to a lower one (a rollback),
    /// and the only way to a pre-release (`=1.5.0-rc.1`).
    Exact(Version),
}

/// Why a requirement was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid version requirement {0:?}: use MAJOR (highest MAJOR.x.y), MAJOR.MINOR (highest MAJOR.MINOR.y) or =MAJOR.MINOR.PATCH[-PRERELEASE] (exactly that)"
)]
pub struct RequirementError(pub String);

impl Requirement {
    /// Parses the `<req>` of `/upgrade/<req>`. Anything but the three forms is refused.
    pub fn parse(text: &str) -> Result<Requirement, RequirementError> {
        let fail = || RequirementError(text.chars().take(64).collect());
        let numeric = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
        if let Some(exact) = text.strip_prefix('=') {
            // A pre-release is named whole; build metadata cannot be a Docker tag.
            let (core, pre) = match exact.split_once('-') {
                Some((core, pre)) => (core, Some(pre)),
                None => (exact, None),
            };
            let parts: Vec<&str> = core.split('.').collect();
            if parts.len() != 3 || !parts.iter().all(|p| numeric(p)) {
                return Err(fail());
            }
            let identifier = |i: &str| !i.is_empty() && i.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if pre.is_some_and(|pre| pre.len() > 64 || !pre.split('.').all(identifier)) {
                return Err(fail());
            }
            return Version::parse(exact).map(Requirement::Exact).map_err(|_| fail());
        }
        let parts: Vec<&str> = text.split('.').collect();
        if !(1..=2).contains(&parts.len()) || !parts.iter().all(|p| numeric(p)) {
            return Err(fail());
        }
        // semver's `=3.2` is a partial exact match: >=3.2.0, <3.3.0.
        let req = VersionReq::parse(&format!("={text}")).map_err(|_| fail())?;
        Ok(Requirement::Highest {
            text: text.to_string(),
            req,
        })
    }

    /// Whether an image labelled `version` is what this requirement asks
    /// for: `2` is never answered by a 3.x image, whatever its tag says.
    /// `:latest` is whatever its image is.
    pub fn admits(&self, version: &Version) -> bool {
        match self {
            Requirement::Latest => true,
            Requirement::Highest { req, .. } => req.matches(version),
            Requirement::Exact(want) => want == version,
        }
    }

    /// Whether a version named this way may be lower than the running one.
    pub fn allows_rollback(&self) -> bool {
        matches!(self, Requirement::Exact(_))
    }
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Requirement::Latest => f.write_str("latest"),
            Requirement::Highest { text, .. } => f.write_str(text),
            Requirement::Exact(v) => write!(f, "={v}"),
        }
    }
}

/// An image's version label as written, if it has one.
pub fn version_label(image: &bollard::models::ImageInspect) -> Option<&str> {
    image
        .config
        .as_ref()?
        .labels
        .as_ref()?
        .get(VERSION_LABEL)
        .map(String::as_str)
}

/// The version a tag names, if it is one (a leading `v` is allowed).
pub fn tag_version(tag: &str) -> Option<Version> {
    Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

/// Picks the tag for a requirement from a registry's tag list; tags that are
/// not semver are ignored. Pre-releases match only an exact requirement that
/// names them (`=1.5.0-rc.1`), never `2` or `2.1`; and `build.sh` never tags
/// one `:latest`, so `/upgrade` never goes to one either.
pub fn select<'a>(requirement: &Requirement, tags: &'a [String]) -> Option<(&'a str, Version)> {
    let candidates = tags.iter().filter_map(|t| tag_version(t).map(|v| (t.as_str(), v)));
    match requirement {
        Requirement::Latest => tags
            .iter()
            .find(|t| *t == "latest")
            .map(|t| (t.as_str(), Version::new(0, 0, 0))),
        Requirement::Exact(want) => candidates
            .filter(|(_, v)| v == want)
            .min_by_key(|(t, _)| t.starts_with('v')),
        Requirement::Highest { req, .. } => {
            candidates
                .filter(|(_, v)| v.pre.is_empty() && req.matches(v))
                .max_by(|a, b| {
                    a.1.cmp(&b.1)
                        .then_with(|| b.0.starts_with('v').cmp(&a.0.starts_with('v')))
                })
        }
    }
}

/// The semver tags of a list, highest first: what an answer lists when nothing matched.
pub fn available(tags: &[String]) -> Vec<String> {
    let mut versions: Vec<Version> = tags.iter().filter_map(|t| tag_version(t)).collect();
    versions.sort_by(|a, b| b.cmp(a));
    versions.dedup();
    versions.iter().map(Version::to_string).collect()
}

/// What to do, given the running version and the target's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The target is what runs: nothing happens.
    AlreadyThere,
    /// Higher: go ahead.
    Upgrade,
    /// Lower and named exactly: go ahead, it is a rollback.
    Rollback,
    /// Lower and not named exactly: refused.
    RefuseLower,
}

pub fn decide(running: &Version, target: &Version, requirement: &Requirement) -> Decision {
    use std::cmp::Ordering::*;
    match target.cmp_precedence(running).then_with(|| target.cmp(running)) {
        Equal => Decision::AlreadyThere,
        Greater => Decision::Upgrade,
        Less if requirement.allows_rollback() => Decision::Rollback,
        Less => Decision::RefuseLower,
    }
}

/// The `watch` setting as a requirement: `latest`, or `/upgrade/<req>`'s syntax.
pub fn policy(text: &str) -> Result<Requirement, RequirementError> {
    match text {
        "latest" => Ok(Requirement::Latest),
        other => Requirement::parse(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn the_three_requirement_forms_parse() {
        assert!(matches!(Requirement::parse("3").unwrap(), Requirement::Highest { .. }));
        assert!(matches!(
            Requirement::parse("3.2").unwrap(),
            Requirement::Highest { .. }
        ));
        assert_eq!(Requirement::parse("=3.2.1").unwrap(), Requirement::Exact(v("3.2.1")));
    }

    #[test]
    fn a_label_must_satisfy_the_requirement_that_picked_its_tag() {
        let two = Requirement::parse("2").unwrap();
        assert!(two.admits(&v("2.9.0")));
        assert!(!two.admits(&v("3.0.0")));
        let exact = Requirement::parse("=1.4.0").unwrap();
        assert!(exact.admits(&v("1.4.0")));
        assert!(!exact.admits(&v("1.4.1")));
        assert!(Requirement::Latest.admits(&v("9.0.0")));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "3.2.1",
            "^3",
            "~3.2",
            ">=1",
            "x",
            "3.",
            ".3",
            "=3.2",
            "=3.2.1+build.5",
            "=3.2.1-rc.1+build.5",
            "=3.2.1-",
            "=3.2.1-rc..1",
            "=3.2.1-rc.01",
            "=3.2.1-rc_1",
            "3.2.1.0",
            "-1",
            "99999999999",
            "3 ",
            "latest",
        ] {
            assert!(Requirement::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_major_requirement_picks_the_highest_of_that_major_and_ignores_other_tags() {
        let t = tags(&[
            "1.0.0",
            "2.0.0",
            "2.10.1",
            "2.9.9",
            "3.0.0",
            "latest",
            "2.11.0-rc.1",
            "nightly",
        ]);
        let (tag, version) = select(&Requirement::parse("2").unwrap(), &t).unwrap();
        assert_eq!((tag, version), ("2.10.1", v("2.10.1")));
    }

    #[test]
    fn a_minor_requirement_stays_within_that_minor() {
        let t = tags(&["2.1.0", "2.1.7", "2.2.0", "v2.1.8"]);
        let (tag, version) = select(&Requirement::parse("2.1").unwrap(), &t).unwrap();
        assert_eq!((tag, version), ("v2.1.8", v("2.1.8")));
    }

    #[test]
    fn an_exact_requirement_matches_only_that_version() {
        let t = tags(&["1.4.0", "1.4.1"]);
        assert_eq!(select(&Requirement::parse("=1.4.0").unwrap(), &t).unwrap().0, "1.4.0");
        assert_eq!(select(&Requirement::parse("=1.5.0").unwrap(), &t), None);
    }

    #[test]
    fn a_pre_release_is_matched_only_when_named_exactly() {
        assert_eq!(
            Requirement::parse("=1.5.0-rc.1").unwrap(),
            Requirement::Exact(v("1.5.0-rc.1"))
        );
        let t = tags(&["1.4.0", "1.5.0-rc.1", "1.5.0-rc.2"]);
        assert_eq!(
            select(&Requirement::parse("=1.5.0-rc.1").unwrap(), &t).unwrap(),
            ("1.5.0-rc.1", v("1.5.0-rc.1"))
        );
        assert_eq!(select(&Requirement::parse("=1.5.0").unwrap(), &t), None);
        assert_eq!(select(&Requirement::parse("1").unwrap(), &t).unwrap().0, "1.4.0");
        assert_eq!(select(&Requirement::parse("1.5").unwrap(), &t), None);
        // From the pre-release, the release is an upgrade; a lower rc needs `=`.
        let rc2 = Requirement::parse("=1.5.0-rc.1").unwrap();
        assert_eq!(
            decide(&v("1.5.0-rc.1"), &v("1.5.0"), &Requirement::Latest),
            Decision::Upgrade
        );
        assert_eq!(decide(&v("1.5.0-rc.2"), &v("1.5.0-rc.1"), &rc2), Decision::Rollback);
        assert_eq!(decide(&v("1.4.0"), &v("1.5.0-rc.1"), &rc2), Decision::Upgrade);
    }

    #[test]
    fn no_match_yields_none_and_the_available_versions_are_listed_highest_first() {
        let t = tags(&["1.0.0", "latest", "1.2.0", "v1.1.0"]);
        assert_eq!(select(&Requirement::parse("4").unwrap(), &t), None);
        assert_eq!(available(&t), vec!["1.2.0", "1.1.0", "1.0.0"]);
    }

    #[test]
    fn equal_versions_do_nothing_and_lower_ones_need_an_exact_request() {
        let latest = Requirement::Latest;
        let exact = Requirement::parse("=1.0.0").unwrap();
        assert_eq!(decide(&v("1.1.0"), &v("1.1.0"), &latest), Decision::AlreadyThere);
        assert_eq!(decide(&v("1.1.0"), &v("1.2.0"), &latest), Decision::Upgrade);
        assert_eq!(decide(&v("1.1.0"), &v("1.0.0"), &latest), Decision::RefuseLower);
        assert_eq!(decide(&v("1.1.0"), &v("1.0.0"), &exact), Decision::Rollback);
        assert_eq!(decide(&v("1.1.0"), &v("1.1.0-rc.1"), &latest), Decision::RefuseLower);
    }
}
