//! Old images of this service: after a clean handover, keep what a rollback
//! needs and remove the rest, so the disk does not grow with every upgrade.
//!
//! Kept: the running image, the previous version's (what `POST /rollback`
//! starts), any image a container still uses, and then the highest versions
//! until `image_retention` images are kept. The rest lose their tags in this
//! service's repository; an image's last tag going removes the image. Nothing
//! is forced, so the Engine itself refuses to remove an image a container uses.

use std::cmp::Reverse;
use std::collections::HashSet;

use semver::Version;

use super::PREVIOUS_IMAGE_LABEL;
use crate::config::Settings;
use crate::docker::Engine;
use crate::version::{VERSION_LABEL, tag_version};

/// One local image of this service's repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The image id.
    pub id: String,
    /// Its version label, if it is semver.
    pub version: Option<Version>,
    /// When it was built (seconds since the epoch), for images without a version.
    pub created: i64,
    /// Its tags in this service's repository (`registry/name:tag`).
    pub tags: Vec<String>,
}

/// The images to remove: every candidate except those in `keep` (the running
/// and the previous image, images in use) and, after them, the highest
/// versions (then the newest builds) until `retention` are kept in all.
pub fn select_for_removal<'a>(
    candidates: &'a [Candidate],
    keep: &HashSet<&str>,
    retention: usize,
) -> Vec<&'a Candidate> {
    let mut ordered: Vec<&Candidate> = candidates.iter().collect();
    ordered.sort_by_key(|c| Reverse((c.version.clone(), c.created)));
    let mut kept: HashSet<&str> = ordered
        .iter()
        .map(|c| c.id.as_str())
        .filter(|id| keep.contains(id))
        .collect();
    let mut remove = Vec::new();
    for candidate in ordered {
        if kept.contains(candidate.id.as_str()) {
            continue;
        }
        if kept.len() < retention {
            kept.insert(&candidate.id);
        } else {
            remove.push(candidate);
        }
    }
    remove
}

/// The hook at the end of a successful takeover that replaced `replaced`
/// instances: prunes only then, so that an instance that merely started
/// alone (a companion, a restart) never touches the images on the machine.
pub async fn after_handover(engine: &Engine, settings: &Settings, me: &str, replaced: usize) {
    if replaced > 0 {
        prune(engine, settings, me).await;
    }
}

/// Removes the images of this service's repository that `select_for_removal`
/// picks, as the container `me` sees them. Runs after a takeover has
/// succeeded; a failure here is logged and changes nothing else.
pub async fn prune(engine: &Engine, settings: &Settings, me: &str) {
    let repository = settings.image_ref("latest");
    let repository = repository.trim_end_matches(":latest");
    let mine = match engine.inspect_container(me).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "image retention: inspecting this container; nothing removed");
            return;
        }
    };
    let previous = mine
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(PREVIOUS_IMAGE_LABEL))
        .cloned();
    let in_use: Vec<String> = match engine.list_by_labels(&[]).await {
        Ok(containers) => containers.into_iter().filter_map(|c| c.image_id).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "image retention: listing containers; nothing removed");
            return;
        }
    };
    let images = match engine.list_images(repository).await {
        Ok(images) => images,
        Err(e) => {
            tracing::warn!(error = %e, "image retention: listing images; nothing removed");
            return;
        }
    };
    let prefix = format!("{repository}:");
    let candidates: Vec<Candidate> = images
        .into_iter()
        .map(|i| Candidate {
            version: i.labels.get(VERSION_LABEL).and_then(|v| tag_version(v)),
            created: i.created,
            tags: i.repo_tags.into_iter().filter(|t| t.starts_with(&prefix)).collect(),
            id: i.id,
        })
        .filter(|c| !c.tags.is_empty())
        .collect();
    let mut keep: HashSet<&str> = in_use.iter().map(String::as_str).collect();
    keep.extend(mine.image.as_deref());
    keep.extend(previous.as_deref());
    for image in select_for_removal(&candidates, &keep, settings.image_retention) {
        for tag in &image.tags {
            match engine.remove_image(tag).await {
                Ok(()) => tracing::info!(image = %tag, "image retention: removed"),
                Err(e) => tracing::warn!(image = %tag, error = %e, "image retention: not removed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, version: Option<&str>, created: i64) -> Candidate {
        Candidate {
            id: id.into(),
            version: version.map(|v| Version::parse(v).unwrap()),
            created,
            tags: vec![format!("r/s:{id}")],
        }
    }

    fn removed(candidates: &[Candidate], keep: &[&str], retention: usize) -> Vec<String> {
        let keep: HashSet<&str> = keep.iter().copied().collect();
        let mut ids: Vec<String> = select_for_removal(candidates, &keep, retention)
            .into_iter()
            .map(|c| c.id.clone())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn the_highest_versions_are_kept_up_to_the_retention() {
        let images: Vec<Candidate> = (0..6)
            .map(|n| image(&format!("v{n}"), Some(&format!("1.{n}.0")), 100 - n))
            .collect();
        assert_eq!(removed(&images, &["v5", "v4"], 3), ["v0", "v1", "v2"]);
        assert_eq!(removed(&images, &["v5", "v4"], 6), Vec::<String>::new());
    }

    #[test]
    fn the_running_and_previous_images_are_kept_whatever_their_version() {
        // After a rollback to 1.0.0 from 1.5.0: both stay, plus the highest other.
        let images: Vec<Candidate> = (0..6)
            .map(|n| image(&format!("v{n}"), Some(&format!("1.{n}.0")), n))
            .collect();
        assert_eq!(removed(&images, &["v0", "v5"], 3), ["v1", "v2", "v3"]);
    }

    #[test]
    fn images_in_use_are_never_removed_even_past_the_retention() {
        let images: Vec<Candidate> = (0..5)
            .map(|n| image(&format!("v{n}"), Some(&format!("2.0.{n}")), n))
            .collect();
        assert_eq!(removed(&images, &["v4", "v3", "v0", "v1"], 3), ["v2"]);
    }

    #[test]
    fn images_without_a_version_go_first_oldest_first() {
        let images = vec![
            image("old", None, 1),
            image("new", None, 2),
            image("v1", Some("1.0.0"), 0),
            image("v2", Some("2.0.0"), 0),
        ];
        assert_eq!(removed(&images, &["v2"], 3), ["old"]);
        assert_eq!(removed(&images, &["v2"], 2), ["new", "old"]);
    }
}
