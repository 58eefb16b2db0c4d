//! Tags and digests over the Docker Registry HTTP API v2.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, LINK};

/// All four manifest media types: without the full list a registry answers
/// 404, or the digest of another representation.
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json";

/// How many tags are asked for per page.
const PAGE_SIZE: usize = 100;
/// A bound on pagination, so a misbehaving registry cannot loop us forever.
const MAX_PAGES: usize = 1000;

/// Basic credentials for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// What went wrong asking a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("the registry at {registry} does not answer: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("the registry at {registry} has no repository {repository}")]
    UnknownRepository { registry: String, repository: String },
    #[error("the registry at {registry} refused the credentials for {repository}")]
    Unauthorized { registry: String, repository: String },
    #[error("the registry answered {status} to {url}")]
    Status { url: String, status: u16 },
}

/// A small registry client over reqwest.
#[derive(Debug, Clone)]
pub struct Registry {
    http: reqwest::Client,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(15))
            .no_proxy()
            .build()
            .expect("a reqwest client with static settings builds");
        Registry { http }
    }

    /// The base URL for a registry host: plain HTTP for loopback, as the
    /// Engine itself treats loopback registries as insecure; HTTPS otherwise.
    pub fn base_url(registry: &str) -> String {
        if registry.starts_with("http://") || registry.starts_with("https://") {
            return registry.trim_end_matches('/').to_string();
        }
        let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
        let loopback = host == "localhost" || host.starts_with("127.") || host == "[::1]";
        format!("{}://{registry}", if loopback { "http" } else { "https" })
    }

    /// Every tag of a repository, following the `Link` header's pages.
    pub async fn tags(
        &self,
        registry: &str,
        repository: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        let base = Self::base_url(registry);
        let mut url = format!("{base}/v2/{repository}/tags/list?n={PAGE_SIZE}");
        let mut all = Vec::new();
        for _ in 0..MAX_PAGES {
            let response = self.get(&url, credentials, registry).await?;
            match response.status() {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => {
                    return Err(RegistryError::UnknownRepository {
                        registry: registry.into(),
                        repository: repository.into(),
                    });
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(RegistryError::Unauthorized {
                        registry: registry.into(),
                        repository: repository.into(),
                    });
                }
                status => {
                    return Err(RegistryError::Status {
                        url,
                        status: status.as_u16(),
                    });
                }
            }
            let next = response
                .headers()
                .get(LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
                .map(|path| {
                    if path.starts_with("http") {
                        path
                    } else {
                        format!("{base}{path}")
                    }
                });
            let page: Page = response.json().await.map_err(|e| RegistryError::Unreachable {
                registry: registry.into(),
                reason: e.to_string(),
            })?;
            all.extend(page.tags.unwrap_or_default());
            match next {
                Some(n) => url = n,
                None => return Ok(all),
            }
        }
        Ok(all)
    }

    /// The digest a tag points at now, or `None` if the tag does not exist.
    pub async fn manifest_digest(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Option<String>, RegistryError> {
        let url = format!("{}/v2/{repository}/manifests/{tag}", Self::base_url(registry));
        let mut request = self.http.head(&url).header(ACCEPT, MANIFEST_TYPES);
        if let Some(c) = credentials {
            request = request.basic_auth(&c.username, Some(&c.password));
        }
        let response = request.send().await.map_err(|e| RegistryError::Unreachable {
            registry: registry.into(),
            reason: e.to_string(),
        })?;
        match response.status() {
            StatusCode::OK => Ok(response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)),
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(RegistryError::Unauthorized {
                registry: registry.into(),
                repository: repository.into(),
            }),
            status => Err(RegistryError::Status {
                url,
                status: status.as_u16(),
            }),
        }
    }

    async fn get(
        &self,
        url: &str,
        credentials: Option<&Credentials>,
        registry: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut request = self.http.get(url);
        if let Some(c) = credentials {
            request = request.basic_auth(&c.username, Some(&c.password));
        }
        request.send().await.map_err(|e| RegistryError::Unreachable {
            registry: registry.into(),
            reason: e.to_string(),
        })
    }
}

/// The target of `rel="next"` in a `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"")
            .then(|| target.trim().trim_start_matches('<').trim_end_matches('>').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http_and_others_https() {
        assert_eq!(Registry::base_url("localhost:5000"), "http://localhost:5000");
        assert_eq!(Registry::base_url("127.0.0.1:41234"), "http://127.0.0.1:41234");
        assert_eq!(
            Registry::base_url("registry.example.com"),
            "https://registry.example.com"
        );
        assert_eq!(Registry::base_url("http://r.example:80/"), "http://r.example:80");
    }

    #[test]
    fn the_next_page_comes_from_the_link_header() {
        let header = r#"</v2/selfup/tags/list?last=1.2.0&n=100>; rel="next""#;
        assert_eq!(
            next_link(header).as_deref(),
            Some("/v2/selfup/tags/list?last=1.2.0&n=100")
        );
        assert_eq!(next_link(r#"</x>; rel="prev""#), None);
    }
}
