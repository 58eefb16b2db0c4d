//! The companion's API key: where it comes from, where it is kept, and how a
//! request presents it.
//!
//! A configured key (`SELFUP_API_KEY`) is used as is and never written down.
//! Without one, the first start generates a key, writes it to
//! `<data_dir>/api_key` with mode 0600 and logs it once; later starts read
//! that file and do not log it again.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The name of the key file inside the data directory.
pub const KEY_FILE: &str = "api_key";

/// The key every companion request must present.
#[derive(Clone)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

/// Where the key came from; only a freshly generated one is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `api_key` in the settings.
    Configured,
    /// Read from the key file a previous start wrote.
    Stored(PathBuf),
    /// Generated now and written to this file.
    Generated(PathBuf),
}

/// Why the key could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
#[error("the companion's API key at {path}: {reason}")]
pub struct KeyError {
    pub path: PathBuf,
    pub reason: String,
}

impl ApiKey {
    /// The configured key, else the stored one, else a new one written to
    /// `<data_dir>/api_key` with mode 0600.
    pub fn load_or_create(configured: Option<&str>, data_dir: &Path) -> Result<(ApiKey, KeySource), KeyError> {
        if let Some(key) = configured {
            return Ok((ApiKey(key.to_string()), KeySource::Configured));
        }
        let path = data_dir.join(KEY_FILE);
        let fail = |reason: String| KeyError {
            path: path.clone(),
            reason,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => {
                // Someone may have loosened it; the key is a secret.
                std::fs::set_permissions(&path, Permissions::from_mode(0o600))
                    .map_err(|e| fail(format!("cannot restrict its mode to 0600: {e}")))?;
                return Ok((ApiKey(text.trim().to_string()), KeySource::Stored(path)));
            }
            Ok(_) => {
                return Err(fail("the file is empty; remove it to have a new key generated".into()));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(fail(format!("cannot read it: {e}"))),
        }
        let key = crate::secret::token().map_err(|e| fail(format!("reading /dev/urandom: {e}")))?;
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|e| fail(format!("cannot create the data directory: {e}")))?;
        // create_new: two instances starting at once never overwrite each
        // other's key; the loser reads the winner's.
        let mut file = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Self::load_or_create(None, data_dir);
            }
            Err(e) => return Err(fail(format!("cannot create it: {e}"))),
        };
        file.write_all(format!("{key}\n").as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| fail(format!("cannot write it: {e}")))?;
        Ok((ApiKey(key), KeySource::Generated(path)))
    }

    /// The key itself, to log it once after generating it.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// Whether an `Authorization` header value carries this key, either bare
    /// (autodok's form) or as `Bearer <key>`. Constant time for keys of equal length.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        presented_key(authorization).is_some_and(|k| crate::secret::matches(k, &self.0))
    }
}

/// The key an `Authorization` header presents: `Bearer <key>` or `<key>`.
pub fn presented_key(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let key = crate::secret::bearer(Some(value)).unwrap_or(value);
    (!key.is_empty() && !key.contains(char::is_whitespace)).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "selfup-auth-{name}-{}-{}",
            std::process::id(),
            crate::secret::token().unwrap()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_generated_key_is_written_with_mode_0600_and_read_back_on_the_next_start() {
        let dir = temp_dir("gen").join("nested");
        let (key, source) = ApiKey::load_or_create(None, &dir).unwrap();
        let path = dir.join(KEY_FILE);
        assert_eq!(source, KeySource::Generated(path.clone()));
        assert_eq!(key.reveal().len(), 32);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), key.reveal());

        let (again, source) = ApiKey::load_or_create(None, &dir).unwrap();
        assert_eq!(source, KeySource::Stored(path.clone()));
        assert_eq!(again.reveal(), key.reveal());
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_stored_key_with_loose_permissions_is_tightened() {
        let dir = temp_dir("loose");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(KEY_FILE);
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        let (key, _) = ApiKey::load_or_create(None, &dir).unwrap();
        assert_eq!(key.reveal(), "0123456789abcdef0123");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_configured_key_is_used_and_nothing_is_written() {
        let dir = temp_dir("configured");
        let (key, source) = ApiKey::load_or_create(Some("configured-key-0123"), &dir).unwrap();
        assert_eq!(source, KeySource::Configured);
        assert_eq!(key.reveal(), "configured-key-0123");
        assert!(!dir.exists());
    }

    #[test]
    fn an_empty_key_file_is_an_error_not_an_empty_key() {
        let dir = temp_dir("empty");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(KEY_FILE), "\n").unwrap();
        let err = ApiKey::load_or_create(None, &dir).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_key_is_presented_bare_or_as_a_bearer_token() {
        assert_eq!(presented_key(Some("abc123")), Some("abc123"));
        assert_eq!(presented_key(Some("Bearer abc123")), Some("abc123"));
        assert_eq!(presented_key(Some("bearer   abc123 ")), Some("abc123"));
        assert_eq!(presented_key(Some("Basic dXNlcjpwYXNz")), None);
        assert_eq!(presented_key(Some("")), None);
        assert_eq!(presented_key(Some("   ")), None);
        assert_eq!(presented_key(None), None);
    }

    #[test]
    fn only_the_exact_key_is_admitted() {
        let key = ApiKey("0123456789abcdef".into());
        assert!(key.admits(Some("0123456789abcdef")));
        assert!(key.admits(Some("Bearer 0123456789abcdef")));
        assert!(!key.admits(Some("0123456789abcdeF")));
        assert!(!key.admits(Some("Bearer 0123456789abcde")));
        assert!(!key.admits(Some("Bearer")));
        assert!(!key.admits(None));
    }
}
