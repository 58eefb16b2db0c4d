//! Registry credentials from a Docker client `config.json`, looked up the way
//! the docker CLI does: a registry's own `credHelpers` entry first, then the
//! `credsStore`, then the `auths` entry (base64 `auth`, or `username` and
//! `password`, or an `identitytoken`).
//!
//! A helper is the binary `docker-credential-<name>` on `PATH`, run as
//! `docker-credential-<name> get` with the server on stdin; it answers
//! `{"ServerURL": .., "Username": .., "Secret": ..}`. A helper that is not
//! installed is skipped (the image may not ship it), so `auths` still applies.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

/// Docker Hub's name in image references.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's key in `config.json`, and the server its helpers expect.
pub const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";
/// How long a credential helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// The parts of a `config.json` that hold credentials.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DockerConfig {
    #[serde(default)]
    pub auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    pub cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    pub creds_store: Option<String>,
}

/// One `auths` entry.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuthEntry {
    /// base64 of `username:password`.
    pub auth: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub identitytoken: Option<String>,
}

/// Credentials for one registry, as found.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// The server they are for, as the Engine expects it in `serveraddress`.
    pub server: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// An OAuth refresh token, instead of a password.
    pub identity_token: Option<String>,
    /// Where they came from (`auths`, `credHelpers: ecr-login`), for the log.
    pub origin: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl RegistryAuth {
    /// For `Engine::pull`.
    pub fn docker(&self) -> DockerCredentials {
        DockerCredentials {
            username: self.username.clone(),
            password: self.password.clone(),
            identitytoken: self.identity_token.clone(),
            serveraddress: Some(self.server.clone()),
            ..Default::default()
        }
    }

    /// For the registry API: username and password, when there is a password.
    pub fn basic(&self) -> Option<(&str, &str)> {
        Some((self.username.as_deref()?, self.password.as_deref()?))
    }
}

/// Why credentials could not be read. A missing `config.json` is no error.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("reading {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is not a Docker config.json: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("the auths entry for {registry} is unusable: {reason}")]
    BadAuth { registry: String, reason: String },
    #[error("the credential helper docker-credential-{helper} failed for {registry}: {reason}")]
    Helper {
        helper: String,
        registry: String,
        reason: String,
    },
}

/// The registry host a `config.json` key or a server URL names:
/// `https://localhost:5000/v2/` and `localhost:5000` both are `localhost:5000`,
/// and Docker Hub's several names are `docker.io`.
pub fn registry_host(key: &str) -> String {
    let key = key.trim();
    let without_scheme = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" | DOCKER_HUB => DOCKER_HUB.into(),
        _ => host,
    }
}

/// The server name the Engine and the helpers expect for a registry host.
pub fn server_address(host: &str) -> String {
    if registry_host(host) == DOCKER_HUB {
        DOCKER_HUB_SERVER.into()
    } else {
        host.to_string()
    }
}

/// Where credential helpers are looked for.
#[derive(Debug, Clone)]
pub struct Helpers {
    search_path: Option<OsString>,
}

impl Helpers {
    /// The process's `PATH`.
    pub fn from_env() -> Helpers {
        Helpers {
            search_path: std::env::var_os("PATH"),
        }
    }

    /// An explicit search path, for tests.
    pub fn in_path(search_path: impl Into<OsString>) -> Helpers {
        Helpers {
            search_path: Some(search_path.into()),
        }
    }

    /// The helper binary's path, if it is installed.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        if name.is_empty() || name.contains('/') {
            return None;
        }
        let file = format!("docker-credential-{name}");
        std::env::split_paths(self.search_path.as_ref()?)
            .map(|dir| dir.join(&file))
            .find(|p| is_executable(p))
    }

    /// Runs `docker-credential-<name> get` for `server`. `Ok(None)`: the helper
    /// is not installed, or has nothing for that server.
    async fn get(&self, name: &str, server: &str, host: &str) -> Result<Option<RegistryAuth>, CredentialsError> {
        let Some(binary) = self.find(name) else {
            tracing::debug!(helper = name, "credential helper not installed; skipped");
            return Ok(None);
        };
        let fail = |reason: String| CredentialsError::Helper {
            helper: name.to_string(),
            registry: host.to_string(),
            reason,
        };
        let spawn = || {
            tokio::process::Command::new(&binary)
                .arg("get")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
        };
        // A helper that was just written can still be open for writing in a
        // process forked meanwhile (until it execs): exec then fails with
        // ETXTBSY for a moment. Ask again a few times before giving up.
        let mut attempt = spawn();
        for _ in 0..20 {
            match &attempt {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    attempt = spawn();
                }
                _ => break,
            }
        }
        let mut child = attempt.map_err(|e| fail(format!("cannot run {}: {e}", binary.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that answers without reading its stdin closes the
            // pipe early; its answer is what counts.
            let _ = stdin.write_all(server.as_bytes()).await;
        }
        let output = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| fail(format!("no answer within {HELPER_TIMEOUT:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        if !output.status.success() {
            let said = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
            if said.to_ascii_lowercase().contains("credentials not found") {
                return Ok(None);
            }
            return Err(fail(format!("{}: {}", output.status, said.trim())));
        }
        parse_helper_answer(&output.stdout, server, &format!("credential helper {name}")).map_err(fail)
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A helper's answer: `Username` `<token>` means `Secret` is an identity token.
pub fn parse_helper_answer(stdout: &[u8], server: &str, origin: &str) -> Result<Option<RegistryAuth>, String> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let answer: Answer =
        serde_json::from_slice(stdout).map_err(|e| format!("its answer is not the expected JSON: {e}"))?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    let (username, password, identity_token) = if answer.username == "<token>" {
        (None, None, Some(answer.secret))
    } else {
        (Some(answer.username), Some(answer.secret), None)
    };
    Ok(Some(RegistryAuth {
        server: server.to_string(),
        username,
        password,
        identity_token,
        origin: origin.to_string(),
    }))
}

impl DockerConfig {
    pub fn parse(text: &str, path: &Path) -> Result<DockerConfig, CredentialsError> {
        serde_json::from_str(text).map_err(|e| CredentialsError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Reads a `config.json`; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<DockerConfig>, CredentialsError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CredentialsError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        }
    }

    /// The helper that owns a registry, if one is named for it or for all.
    pub fn helper_for(&self, host: &str) -> Option<&str> {
        let host = registry_host(host);
        self.cred_helpers
            .iter()
            .find(|(key, _)| registry_host(key) == host)
            .map(|(_, helper)| helper.as_str())
    }

    /// The `auths` entry of a registry, decoded.
    pub fn from_auths(&self, host: &str) -> Result<Option<RegistryAuth>, CredentialsError> {
        let host = registry_host(host);
        // An exact key wins over one that only normalises to the same host.
        let entry = self.auths.get(&host).or_else(|| {
            self.auths
                .iter()
                .find(|(k, _)| registry_host(k) == host)
                .map(|(_, e)| e)
        });
        let Some(entry) = entry else { return Ok(None) };
        let bad = |reason: &str| CredentialsError::BadAuth {
            registry: host.clone(),
            reason: reason.to_string(),
        };
        let (username, password) = match entry.auth.as_deref().filter(|a| !a.is_empty()) {
            Some(auth) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|_| bad("auth is not base64"))?;
                let text = String::from_utf8(decoded).map_err(|_| bad("auth is not UTF-8"))?;
                let (user, pass) = text
                    .split_once(':')
                    .ok_or_else(|| bad("auth is not base64 of username:password"))?;
                (Some(user.to_string()), Some(pass.to_string()))
            }
            None => (entry.username.clone(), entry.password.clone()),
        };
        let identity_token = entry.identitytoken.clone().filter(|t| !t.is_empty());
        if password.is_none() && identity_token.is_none() {
            return Ok(None);
        }
        Ok(Some(RegistryAuth {
            server: server_address(&host),
            username,
            password,
            identity_token,
            origin: "auths".into(),
        }))
    }

    /// The credentials for a registry host: its helper, the store, then `auths`.
    pub async fn lookup(&self, host: &str, helpers: &Helpers) -> Result<Option<RegistryAuth>, CredentialsError> {
        let server = server_address(host);
        // A registry's own helper replaces the store, as in the docker CLI.
        let helper = self
            .helper_for(host)
            .or(self.creds_store.as_deref().filter(|s| !s.is_empty()));
        if let Some(helper) = helper
            && let Some(found) = helpers.get(helper, &server, host).await?
        {
            return Ok(Some(found));
        }
        self.from_auths(host)
    }
}

/// Reads `path` and looks up `host`: what a pull or a tag list needs.
pub async fn for_registry(
    path: &Path,
    host: &str,
    helpers: &Helpers,
) -> Result<Option<RegistryAuth>, CredentialsError> {
    match DockerConfig::load(path)? {
        Some(config) => config.lookup(host, helpers).await,
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> DockerConfig {
        DockerConfig::parse(json, Path::new("config.json")).unwrap()
    }

    #[test]
    fn config_keys_and_urls_normalise_to_the_registry_host() {
        assert_eq!(registry_host("localhost:5000"), "localhost:5000");
        assert_eq!(registry_host("http://localhost:5000"), "localhost:5000");
        assert_eq!(
            registry_host("https://Registry.Example.com/v2/"),
            "registry.example.com"
        );
        assert_eq!(registry_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_host("registry-1.docker.io"), "docker.io");
        assert_eq!(server_address("docker.io"), DOCKER_HUB_SERVER);
        assert_eq!(server_address("127.0.0.1:5001"), "127.0.0.1:5001");
    }

    #[test]
    fn a_base64_auth_entry_decodes_to_username_and_password() {
        // base64("alice:s3cr:et") — the password may contain a colon.
        let c = config(r#"{"auths": {"127.0.0.1:5001": {"auth": "YWxpY2U6czNjcjpldA=="}}}"#);
        let found = c.from_auths("127.0.0.1:5001").unwrap().unwrap();
        assert_eq!(found.username.as_deref(), Some("alice"));
        assert_eq!(found.password.as_deref(), Some("s3cr:et"));
        assert_eq!(found.server, "127.0.0.1:5001");
        assert_eq!(found.basic(), Some(("alice", "s3cr:et")));
        let docker = found.docker();
        assert_eq!(docker.serveraddress.as_deref(), Some("127.0.0.1:5001"));
        assert_eq!(docker.password.as_deref(), Some("s3cr:et"));
    }

    #[test]
    fn username_and_password_entries_and_url_keys_are_found_by_host() {
        let c = config(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"username": "bob", "password": "pw"},
                "http://registry.example.com:5000/v2/": {"identitytoken": "tok"},
                "other.example": {}
            }}"#,
        );
        let hub = c.from_auths("docker.io").unwrap().unwrap();
        assert_eq!(hub.username.as_deref(), Some("bob"));
        assert_eq!(hub.server, DOCKER_HUB_SERVER);
        let token = c.from_auths("registry.example.com:5000").unwrap().unwrap();
        assert_eq!(token.identity_token.as_deref(), Some("tok"));
        assert!(token.basic().is_none());
        assert!(c.from_auths("other.example").unwrap().is_none());
        assert!(c.from_auths("unknown.example").unwrap().is_none());
    }

    #[test]
    fn an_auth_that_is_not_base64_of_user_colon_password_is_an_error() {
        let c = config(r#"{"auths": {"r.example": {"auth": "!!!"}, "s.example": {"auth": "bm9jb2xvbg=="}}}"#);
        assert!(
            c.from_auths("r.example")
                .unwrap_err()
                .to_string()
                .contains("not base64")
        );
        assert!(
            c.from_auths("s.example")
                .unwrap_err()
                .to_string()
                .contains("username:password")
        );
    }

    #[test]
    fn a_config_that_is_not_json_is_an_error_and_a_missing_one_is_none() {
        assert!(DockerConfig::parse("{", Path::new("c.json")).is_err());
        assert!(
            DockerConfig::load(Path::new("/nonexistent/selfup/config.json"))
                .unwrap()
                .is_none()
        );
        // Fields the companion does not use are ignored.
        let c = config(r#"{"auths": {}, "HttpHeaders": {"User-Agent": "x"}, "experimental": "enabled"}"#);
        assert!(c.auths.is_empty());
    }

    #[test]
    fn helpers_are_found_per_registry() {
        let c = config(r#"{"credHelpers": {"https://ecr.example.com": "ecr-login"}, "credsStore": "desktop"}"#);
        assert_eq!(c.helper_for("ecr.example.com"), Some("ecr-login"));
        assert_eq!(c.helper_for("other.example"), None);
        assert_eq!(c.creds_store.as_deref(), Some("desktop"));
    }

    #[test]
    fn a_helper_answer_with_a_token_username_is_an_identity_token() {
        let a = parse_helper_answer(br#"{"ServerURL":"r","Username":"<token>","Secret":"t"}"#, "r", "h")
            .unwrap()
            .unwrap();
        assert_eq!(a.identity_token.as_deref(), Some("t"));
        assert_eq!(a.username, None);
        let b = parse_helper_answer(br#"{"ServerURL":"r","Username":"u","Secret":"p"}"#, "r", "h")
            .unwrap()
            .unwrap();
        assert_eq!((b.username.as_deref(), b.password.as_deref()), (Some("u"), Some("p")));
        assert!(parse_helper_answer(b"nope", "r", "h").is_err());
    }

    /// A fake `docker-credential-<name>` in a directory of its own.
    fn fake_helper(name: &str, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "selfup-helper-{name}-{}-{}",
            std::process::id(),
            crate::secret::token().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[tokio::test]
    async fn a_registry_helper_is_run_with_get_and_the_server_on_stdin() {
        // The helper echoes the server it was asked about as the username.
        let dir = fake_helper(
            "fake",
            r#"[ "$1" = get ] || exit 2; read server; printf '{"ServerURL":"%s","Username":"%s","Secret":"pw"}' "$server" "$server""#,
        );
        let c = config(
            r#"{"credHelpers": {"private.example:5000": "fake"}, "auths": {"private.example:5000": {"auth": "dTpw"}}}"#,
        );
        let found = c
            .lookup("private.example:5000", &Helpers::in_path(&dir))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.username.as_deref(), Some("private.example:5000"));
        assert_eq!(found.password.as_deref(), Some("pw"));
        assert_eq!(found.origin, "credential helper fake");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_store_without_an_entry_or_a_missing_helper_falls_back_to_auths() {
        let dir = fake_helper("store", r#"echo "credentials not found in native keychain"; exit 1"#);
        let c = config(r#"{"credsStore": "store", "auths": {"r.example": {"auth": "dTpw"}}}"#);
        let found = c.lookup("r.example", &Helpers::in_path(&dir)).await.unwrap().unwrap();
        assert_eq!((found.username.as_deref(), found.origin.as_str()), (Some("u"), "auths"));
        let missing = config(r#"{"credHelpers": {"r.example": "absent"}, "auths": {"r.example": {"auth": "dTpw"}}}"#);
        let found = missing
            .lookup("r.example", &Helpers::in_path(&dir))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.origin, "auths");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_failing_helper_is_an_error_that_names_it() {
        let dir = fake_helper("broken", "echo 'keychain locked' >&2; exit 1");
        let c = config(r#"{"credHelpers": {"r.example": "broken"}}"#);
        let err = c
            .lookup("r.example", &Helpers::in_path(&dir))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("docker-credential-broken") && err.contains("keychain locked"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
