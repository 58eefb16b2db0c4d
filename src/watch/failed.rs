//! The images the watch policy tried and that failed, kept in
//! `<data_dir>/watch-failed.json` beside the history, so that neither this
//! instance nor the next one tries the same image again.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use semver::Version;
use serde::{Deserialize, Serialize};

/// How many failed images are remembered.
const KEPT: usize = 16;

/// One image that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedTarget {
    pub version: String,
    /// The registry's digest of the tag when it was tried.
    pub digest: String,
    pub reason: String,
    /// Seconds since the epoch.
    pub at: u64,
}

/// The failed images, newest first.
#[derive(Debug)]
pub struct FailedTargets {
    file: Option<PathBuf>,
    list: Mutex<Vec<FailedTarget>>,
}

impl FailedTargets {
    /// The list kept in `data_dir`, if it is a directory; else in memory only.
    pub fn open(data_dir: &Path) -> FailedTargets {
        if !data_dir.is_dir() {
            return FailedTargets::in_memory();
        }
        let file = data_dir.join("watch-failed.json");
        let list = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        FailedTargets {
            file: Some(file),
            list: Mutex::new(list),
        }
    }

    /// A list that lives as long as this instance.
    pub fn in_memory() -> FailedTargets {
        FailedTargets {
            file: None,
            list: Mutex::default(),
        }
    }

    fn list(&self) -> std::sync::MutexGuard<'_, Vec<FailedTarget>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the image with this digest failed before. The file is read
    /// again first: another instance may have written it since.
    pub fn contains(&self, digest: &str) -> bool {
        if let Some(file) = &self.file
            && let Some(list) = std::fs::read(file)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Vec<FailedTarget>>(&bytes).ok())
        {
            *self.list() = list;
        }
        self.list().iter().any(|f| f.digest == digest)
    }

    /// Remembers that `version` (image `digest`) failed, and why.
    pub fn remember(&self, version: &Version, digest: &str, reason: &str) {
        let mut list = self.list();
        list.retain(|f| f.digest != digest);
        list.insert(
            0,
            FailedTarget {
                version: version.to_string(),
                digest: digest.to_string(),
                reason: reason.chars().take(500).collect(),
                at: crate::state::now_secs(),
            },
        );
        list.truncate(KEPT);
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
}
