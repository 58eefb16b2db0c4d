//! What a tag's image says about itself, read from the registry without
//! pulling it: the manifest's digest, then the image config blob it names,
//! for the version label and the creation time. A dry run answers from this,
//! and the watch policy's cooldown measures an image's age by it.
//!
//! The same bounds as the tag list hold: no redirect is followed (a registry
//! that keeps its blobs behind a redirect to object storage gets an error
//! naming it, and the caller falls back on a pull), and each body is bounded.

use reqwest::{Method, StatusCode, Url};

use super::credentials::RegistryAuth;
use super::{MANIFEST_TYPES, Registry, RegistryError, Session};

/// At most this many bytes in a manifest, an index or an image config.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// A tag's image as the registry describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RemoteImage {
    /// The digest the tag points at (`sha256:...`): a manifest, or an index
    /// for a multi-platform image.
    pub digest: String,
    /// The `org.opencontainers.image.version` label, if the config has one.
    pub version: Option<String>,
    /// The config's `created`, seconds since the epoch, if it has a readable one.
    pub created: Option<u64>,
}

impl Registry {
    /// The image `repository:tag` names, or `None` if the tag does not exist.
    pub async fn remote_image(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<Option<RemoteImage>, RegistryError> {
        let mut session = Session::new(self, registry, repository, auth)?;
        let url = session.url(&format!("/v2/{}/manifests/{tag}", session.repository))?;
        let Some((digest, manifest)) = session.document(&url, Some(MANIFEST_TYPES)).await? else {
            return Ok(None);
        };
        let digest = digest.ok_or_else(|| session.untrusted(format!("{url} came without a Docker-Content-Digest")))?;
        let mut manifest = parse_json(&session, &manifest, "a manifest")?;
        if let Some(platform) = pick_platform(&manifest) {
            let url = session.url(&format!("/v2/{}/manifests/{platform}", session.repository))?;
            let Some((_, body)) = session.document(&url, Some(MANIFEST_TYPES)).await? else {
                return Err(session.untrusted(format!("the index names {platform}, which is missing")));
            };
            manifest = parse_json(&session, &body, "a platform's manifest")?;
        }
        let Some(config) = manifest["config"]["digest"].as_str() else {
            return Err(session.untrusted("the manifest names no config blob".into()));
        };
        let url = session.url(&format!("/v2/{}/blobs/{config}", session.repository))?;
        let Some((_, body)) = session.document(&url, None).await? else {
            return Err(session.untrusted(format!("the config blob {config} is missing")));
        };
        let config = parse_json(&session, &body, "an image config")?;
        Ok(Some(RemoteImage {
            digest,
            version: config["config"]["Labels"][crate::version::VERSION_LABEL]
                .as_str()
                .map(str::to_string),
            created: config["created"].as_str().and_then(parse_rfc3339),
        }))
    }
}

impl Session<'_> {
    /// A GET's digest header and bounded body; `None` on a 404.
    pub(super) async fn document(
        &mut self,
        url: &Url,
        accept: Option<&str>,
    ) -> Result<Option<(Option<String>, Vec<u8>)>, RegistryError> {
        let mut response = self.send(Method::GET, url, accept).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.refusal(url, &response)),
        }
        let digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = self
            .bounded_body(&mut response, MAX_DOCUMENT_BYTES, "a manifest or config")
            .await?;
        Ok(Some((digest, body)))
    }
}

fn parse_json(session: &Session<'_>, body: &[u8], what: &str) -> Result<serde_json::Value, RegistryError> {
    serde_json::from_slice(body).map_err(|e| session.untrusted(format!("{what} that is not JSON: {e}")))
}

/// In an index (or a manifest list), the digest of the manifest for this
/// machine's platform, Linux on this architecture; `None` for a plain manifest.
fn pick_platform(manifest: &serde_json::Value) -> Option<String> {
    let manifests = manifest["manifests"].as_array()?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let found = manifests.iter().find(|m| {
        m["platform"]["os"].as_str() == Some("linux") && m["platform"]["architecture"].as_str() == Some(arch)
    });
    found.or(manifests.first())?["digest"].as_str().map(str::to_string)
}

/// Seconds since the epoch of an RFC 3339 UTC time as image configs write it
/// (`2026-11-30T12:01:02.123456789Z`, or with a `+00:00` offset); `None` for
/// anything else. A time before 1970 is `None` too.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let (date, rest) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let (time, offset_secs) = if let Some(t) = rest.strip_suffix('Z').or_else(|| rest.strip_suffix("z")) {
        (t, 0)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (t, offset) = rest.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (h, m) = offset[1..].split_once(':')?;
        (t, sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60))
    };
    let time = time.split_once('.').map_or(time, |(whole, _)| whole);
    let mut t = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    u64::try_from(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn image_config_times_read_as_seconds_since_the_epoch() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-30T12:01:02.123456789Z"), Some(1_796_040_062));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(parse_rfc3339("2026-11-30T13:01:02+01:00"), Some(1_796_040_062));
        assert_eq!(parse_rfc3339("2026-11-30T11:01:02-01:00"), Some(1_796_040_062));
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-30 12:00:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_index_is_followed_to_this_platforms_manifest() {
        let arch = if cfg!(target_arch = "aarch64") {
            "arm64"
        } else {
            "amd64"
        };
        let index = json!({"manifests": [
            {"digest": "sha256:other", "platform": {"os": "linux", "architecture": "s390x"}},
            {"digest": "sha256:mine", "platform": {"os": "linux", "architecture": arch}},
        ]});
        assert_eq!(pick_platform(&index).as_deref(), Some("sha256:mine"));
        let foreign = json!({"manifests": [{"digest": "sha256:first", "platform": {"os": "windows"}}]});
        assert_eq!(pick_platform(&foreign).as_deref(), Some("sha256:first"));
        assert_eq!(pick_platform(&json!({"config": {"digest": "sha256:c"}})), None);
    }
}
