//! Tags and digests over the Docker Registry HTTP API v2.
//!
//! A registry's answers are not trusted: the client follows no redirect,
//! follows a `Link` only to the registry's own scheme, host and port (so
//! credentials go nowhere else), and bounds the pages, the size of each and
//! the time of the whole listing. Past a bound the answer is an error, never
//! a truncated tag list used as if it were whole.

pub mod credentials;

use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, LINK};
use reqwest::{StatusCode, Url};

/// All four manifest media types: without the full list a registry answers
/// 404, or the digest of another representation.
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json";

/// How many tags are asked for per page.
const PAGE_SIZE: usize = 100;
/// At most this many pages (10,000 tags at the page size asked for).
const MAX_PAGES: usize = 100;
/// At most this many bytes in one page (a registry may ignore `n` and send
/// every tag at once: 1 MiB is some 60,000 version tags).
const MAX_PAGE_BYTES: usize = 1 << 20;
/// The whole listing, every page, within this time.
const LIST_DEADLINE: Duration = Duration::from_secs(30);

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
    /// An answer outside what the client follows or the bounds it keeps.
    #[error("the registry at {registry} sent a tag list selfup does not use: {reason}")]
    Untrusted { registry: String, reason: String },
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
            .redirect(reqwest::redirect::Policy::none())
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

    /// Every tag of a repository, following the `Link` header's pages
    /// within the bounds in this module's header.
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
        let untrusted = |reason: String| RegistryError::Untrusted {
            registry: registry.into(),
            reason,
        };
        let base =
            Url::parse(&Self::base_url(registry)).map_err(|e| untrusted(format!("bad registry address: {e}")))?;
        let mut url = base
            .join(&format!("/v2/{repository}/tags/list?n={PAGE_SIZE}"))
            .map_err(|e| untrusted(e.to_string()))?;
        let started = Instant::now();
        let mut all = Vec::new();
        for _ in 0..MAX_PAGES {
            let left = LIST_DEADLINE.saturating_sub(started.elapsed());
            let page = tokio::time::timeout(left, self.page(&url, credentials, registry, repository)).await;
            let Ok(page) = page else {
                return Err(untrusted(format!("the tag list took longer than {LIST_DEADLINE:?}")));
            };
            let (body, link) = page?;
            let page: Page =
                serde_json::from_slice(&body).map_err(|e| untrusted(format!("a page is not a tag list: {e}")))?;
            all.extend(page.tags.unwrap_or_default());
            match link.as_deref().and_then(next_link) {
                Some(next) => url = same_origin_link(&base, &next).map_err(untrusted)?,
                None => return Ok(all),
            }
        }
        Err(untrusted(format!("the tag list has more than {MAX_PAGES} pages")))
    }

    /// One page of a tag list: its body (at most [`MAX_PAGE_BYTES`]) and its
    /// `Link` header.
    async fn page(
        &self,
        url: &Url,
        credentials: Option<&Credentials>,
        registry: &str,
        repository: &str,
    ) -> Result<(Vec<u8>, Option<String>), RegistryError> {
        let untrusted = |reason: String| RegistryError::Untrusted {
            registry: registry.into(),
            reason,
        };
        let mut response = self.get(url.as_str(), credentials, registry).await?;
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
            status if status.is_redirection() => {
                let to = response.headers().get(reqwest::header::LOCATION);
                let to = to.and_then(|v| v.to_str().ok()).unwrap_or("nowhere");
                return Err(untrusted(format!(
                    "{url} redirects ({status}) to {to}, which is not followed"
                )));
            }
            status => {
                return Err(RegistryError::Status {
                    url: url.to_string(),
                    status: status.as_u16(),
                });
            }
        }
        let link = response
            .headers()
            .get(LINK)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let too_large = || untrusted(format!("a page of the tag list is larger than {MAX_PAGE_BYTES} bytes"));
        if response.content_length().is_some_and(|n| n > MAX_PAGE_BYTES as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| RegistryError::Unreachable {
            registry: registry.into(),
            reason: e.to_string(),
        })? {
            if body.len() + chunk.len() > MAX_PAGE_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, link))
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

/// The next page's URL: `link` resolved against the registry's URL (a
/// relative link is the usual form), and refused unless it stays on the
/// registry's scheme, host and port.
fn same_origin_link(base: &Url, link: &str) -> Result<Url, String> {
    let next = base
        .join(link)
        .map_err(|e| format!("the next-page link {link:?} is not a URL: {e}"))?;
    if next.origin() != base.origin() {
        return Err(format!(
            "the next-page link points to {}, not to the registry; it is not followed",
            next.origin().ascii_serialization()
        ));
    }
    Ok(next)
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

    #[test]
    fn a_next_page_link_is_resolved_against_the_registry_and_must_stay_on_it() {
        let base = Url::parse("http://127.0.0.1:5000").unwrap();
        let next = |link: &str| same_origin_link(&base, link);
        assert_eq!(
            next("/v2/a/tags/list?last=1.2.0&n=100").unwrap().as_str(),
            "http://127.0.0.1:5000/v2/a/tags/list?last=1.2.0&n=100"
        );
        assert_eq!(
            next("http://127.0.0.1:5000/v2/a/tags/list?last=x").unwrap().as_str(),
            "http://127.0.0.1:5000/v2/a/tags/list?last=x"
        );
        // Another port, host or scheme; a scheme-relative link to another host.
        for link in [
            "http://127.0.0.1:5800/upgrade/=0.1.0",
            "http://evil.example/v2/a/tags/list",
            "https://127.0.0.1:5000/v2/a/tags/list",
            "//evil.example/v2/a/tags/list",
        ] {
            let refused = next(link).unwrap_err();
            assert!(refused.contains("not followed"), "{link}: {refused}");
        }
        // String concatenation would have made this "http://127.0.0.1:5000@evil.example/".
        assert!(
            next("@evil.example/")
                .unwrap()
                .as_str()
                .starts_with("http://127.0.0.1:5000/")
        );
    }
}
