//! Requirement parsing and resolution against an arbitrary tag list: the
//! first line is the requirement, the others are the registry's tags.
#![no_main]

use libfuzzer_sys::fuzz_target;
use selfup::version::{Requirement, available, decide, select, tag_version};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let requirement = lines.next().unwrap_or_default();
    let tags: Vec<String> = lines.map(str::to_string).collect();
    let listed = available(&tags);
    assert!(listed.windows(2).all(|w| semver::Version::parse(&w[0]).unwrap() > semver::Version::parse(&w[1]).unwrap()));
    if let Ok(req) = Requirement::parse(requirement) {
        if let Some((tag, version)) = select(&req, &tags) {
            assert!(tags.iter().any(|t| t == tag));
            if req != Requirement::Latest {
                assert_eq!(tag_version(tag), Some(version.clone()));
            }
            let running = semver::Version::new(1, 0, 0);
            let _ = decide(&running, &version, &req);
        }
    }
});
