//! The images the watch policy tried and that failed, kept in
//! `<data_dir>/watch-failed.json` beside the history, so that neither this
//! instance nor the next one tries the same image again. Companion
//! containers' own policies keep theirs in `watch-failed-containers.json`,
//! per container: an image that failed in one may well run in another.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use semver::Version;
use serde::{Deserialize, Serialize};

/// How many failed images are remembered for the self-upgrade.
const KEPT: usize = 16;
/// How many failed (container, image) pairs are remembered for companion containers.
const KEPT_FOR_CONTAINERS: usize = 64;

/// One image that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedTarget {
    pub version: String,
    /// The registry's digest of the tag when it was tried.
    pub digest: String,
    pub reason: String,
    /// Seconds since the epoch.
    pub at: u64,
    /// The companion container it failed in; none for the self-upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// The failed images, newest first.
#[derive(Debug)]
pub struct FailedTargets {
    file: Option<PathBuf>,
    list: Mutex<Vec<FailedTarget>>,
    kept: usize,
}

impl FailedTargets {
    /// The self-upgrade's list kept in `data_dir`, if it is a directory; else in memory only.
    pub fn open(data_dir: &Path) -> FailedTargets {
        Self::open_file(data_dir, "watch-failed.json", KEPT)
    }

    /// The companion containers' list kept in `data_dir`, as [`FailedTargets::open`].
    pub fn open_for_containers(data_dir: &Path) -> FailedTargets {
        Self::open_file(data_dir, "watch-failed-containers.json", KEPT_FOR_CONTAINERS)
    }

    fn open_file(data_dir: &Path, name: &str, kept: usize) -> FailedTargets {
        if !data_dir.is_dir() {
            return FailedTargets {
                kept,
                ..FailedTargets::in_memory()
            };
        }
        let file = data_dir.join(name);
        let list = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        FailedTargets {
            file: Some(file),
            list: Mutex::new(list),
            kept,
        }
    }

    /// A list that lives as long as this instance.
    pub fn in_memory() -> FailedTargets {
        FailedTargets {
            file: None,
            list: Mutex::default(),
            kept: KEPT,
        }
    }

    fn list(&self) -> std::sync::MutexGuard<'_, Vec<FailedTarget>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the image with this digest failed before. The file is read
    /// again first: another instance may have written it since.
    pub fn contains(&self, digest: &str) -> bool {
        self.contains_in(None, digest)
    }

    /// Whether the image with this digest failed before in `container`
    /// (`None`: the self-upgrade).
    pub fn contains_in(&self, container: Option<&str>, digest: &str) -> bool {
        if let Some(file) = &self.file
            && let Some(list) = std::fs::read(file)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Vec<FailedTarget>>(&bytes).ok())
        {
            *self.list() = list;
        }
        self.list()
            .iter()
            .any(|f| f.digest == digest && f.container.as_deref() == container)
    }

    /// Remembers that `version` (image `digest`) failed, and why.
    pub fn remember(&self, version: &Version, digest: &str, reason: &str) {
        self.remember_in(None, version, digest, reason);
    }

    /// Remembers that `version` (image `digest`) failed in `container`
    /// (`None`: the self-upgrade), and why.
    pub fn remember_in(&self, container: Option<&str>, version: &Version, digest: &str, reason: &str) {
        let mut list = self.list();
        list.retain(|f| !(f.digest == digest && f.container.as_deref() == container));
        list.insert(
            0,
            FailedTarget {
                version: version.to_string(),
                digest: digest.to_string(),
                reason: reason.chars().take(500).collect(),
                at: crate::state::now_secs(),
                container: container.map(str::to_string),
            },
        );
        list.truncate(self.kept);
        let Some(file) = &self.file else { return };
        let saved = serde_json::to_string_pretty(&*list)
            .map_err(std::io::Error::other)
            .and_then(|text| crate::atomic::write_atomically(file, &text));
        if let Err(e) = saved {
            tracing::warn!(path = %file.display(), error = %e, "the failed target is remembered in memory only");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_image_is_remembered_across_instances_sharing_the_data_directory() {
        let dir = std::env::temp_dir().join(format!("selfup-watch-failed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = FailedTargets::open(&dir);
        let second = FailedTargets::open(&dir);
        assert!(!second.contains("sha256:a"));
        first.remember(&Version::new(1, 5, 0), "sha256:a", "it exited with code 3");
        first.remember(&Version::new(1, 5, 0), "sha256:a", "again");
        assert!(
            second.contains("sha256:a"),
            "the second instance reads what the first wrote"
        );
        assert!(!second.contains("sha256:b"));
        let reopened = FailedTargets::open(&dir);
        assert_eq!(reopened.list().len(), 1, "one entry per image");
        assert_eq!(reopened.list()[0].reason, "again");
        for n in 0..20 {
            first.remember(&Version::new(1, n, 0), &format!("sha256:{n}"), "x");
        }
        assert_eq!(FailedTargets::open(&dir).list().len(), KEPT);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_image_that_failed_in_one_container_is_still_a_target_for_another() {
        let dir = std::env::temp_dir().join(format!("selfup-watch-failed-c-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = FailedTargets::open_for_containers(&dir);
        first.remember_in(Some("web"), &Version::new(2, 0, 0), "sha256:a", "it exited with code 1");
        let next = FailedTargets::open_for_containers(&dir);
        assert!(next.contains_in(Some("web"), "sha256:a"));
        assert!(!next.contains_in(Some("api"), "sha256:a"));
        assert!(!next.contains_in(None, "sha256:a"), "not the self-upgrade's");
        // The self-upgrade's own list is another file.
        assert!(!FailedTargets::open(&dir).contains("sha256:a"));
        for n in 0..70 {
            first.remember_in(Some("web"), &Version::new(2, n, 0), &format!("sha256:{n}"), "x");
        }
        assert_eq!(
            FailedTargets::open_for_containers(&dir).list().len(),
            KEPT_FOR_CONTAINERS
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
