//! Tags and digests over the Docker Registry HTTP API v2, and the
//! credentials for them ([`credentials`]); the self-upgrade and companion mode
//! both use this module.
//!
//! A registry's answers are not trusted: the client follows no redirect,
//! follows a `Link` only to the registry's own scheme, host and port (so
//! credentials go nowhere else), and bounds the pages, the size of each and
//! the time of the whole listing. Past a bound the answer is an error, never
//! a truncated tag list used as if it were whole.
//!
//! Authorization is what the registry asks for, sent only where it cannot
//! be read by a stand-in: over the registry's unix socket (`registry_socket`,
//! in a directory only root can write) or HTTPS, Basic credentials go with
//! the first request; over plain HTTP on a port, which any local user may
//! hold while the registry is down, none go until the registry answers `401`
//! with a `Basic` challenge (one more round trip); a `401` whose `WWW-Authenticate` is a `Bearer` challenge (Docker Hub, GHCR,
//! most cloud registries) sends the credentials, or none for a public
//! repository, to the token service the challenge names, and the request
//! again with the token. The token service gets credentials only if it is the
//! registry itself or speaks HTTPS, answers without a redirect, and its
//! answer is bounded like a page. docs/registry-client.md says why this is
//! written here rather than taken from `oci-client`.

pub mod credentials;
pub mod image;
pub mod signature;

use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, LINK, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};

use credentials::{DOCKER_HUB, RegistryAuth, registry_host};

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
/// At most this many bytes in a token service's answer (a token is a few KiB).
const MAX_TOKEN_BYTES: usize = 64 << 10;
/// At most this many tokens asked for in one listing or digest lookup: one,
/// and one more if the registry refuses the first (say, it expired).
const MAX_TOKENS: usize = 2;
/// The whole listing, every page and token, within this time.
const LIST_DEADLINE: Duration = Duration::from_secs(30);
/// Where Docker Hub's registry API answers (`docker.io` is its name in image
/// references, not its API host).
const DOCKER_HUB_API: &str = "https://registry-1.docker.io";

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
    #[error("the registry at {registry} sent an answer selfup does not use: {reason}")]
    Untrusted { registry: String, reason: String },
}

/// A small registry client over reqwest.
#[derive(Debug, Clone)]
pub struct Registry {
    http: reqwest::Client,
    /// A registry name (as images carry it) and the address its API is
    /// called at instead (the `registry_api` setting).
    api: Option<(String, String)>,
    /// A registry name and a client whose every connection goes to that
    /// registry's unix socket (the `registry_socket` setting).
    socket: Option<(String, reqwest::Client, std::path::PathBuf)>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            http: Self::client(None),
            api: None,
            socket: None,
        }
    }

    fn client(socket: Option<&std::path::Path>) -> reqwest::Client {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        let builder = match socket {
            Some(path) => builder.unix_socket(path),
            None => builder,
        };
        builder.build().expect("a reqwest client with static settings builds")
    }

    /// This client, calling the API of the registry named `name` over the
    /// unix socket at `path` and never over TCP: only root can make a name
    /// in that socket's directory, so it is the registry, and it gets the
    /// credentials with the first request.
    pub fn with_socket(mut self, name: &str, path: &std::path::Path) -> Registry {
        self.socket = Some((name.to_string(), Self::client(Some(path)), path.to_path_buf()));
        self
    }

    /// This client, calling the API of the registry named `name` at
    /// `address` (`host:port` or a URL) instead of at its name.
    pub fn with_api_address(mut self, name: &str, address: &str) -> Registry {
        self.api = Some((name.to_string(), address.to_string()));
        self
    }

    /// Where the API of the registry named `registry` is called.
    fn api_address<'a>(&'a self, registry: &'a str) -> &'a str {
        match &self.api {
            Some((name, address)) if name == registry => address,
            _ => registry,
        }
    }

    /// The base URL for a registry host: plain HTTP for loopback, as the
    /// Engine itself treats loopback registries as insecure; HTTPS otherwise;
    /// Docker Hub's API host for its names.
    pub fn base_url(registry: &str) -> String {
        if registry.starts_with("http://") || registry.starts_with("https://") {
            return registry.trim_end_matches('/').to_string();
        }
        if registry_host(registry) == DOCKER_HUB {
            return DOCKER_HUB_API.into();
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
        auth: Option<&RegistryAuth>,
    ) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        let mut session = Session::new(self, registry, repository, auth)?;
        let mut url = session.url(&format!("/v2/{}/tags/list?n={PAGE_SIZE}", session.repository))?;
        let started = Instant::now();
        let mut all = Vec::new();
        for _ in 0..MAX_PAGES {
            let left = LIST_DEADLINE.saturating_sub(started.elapsed());
            let page = tokio::time::timeout(left, session.page(&url)).await;
            let Ok(page) = page else {
                return Err(session.untrusted(format!("the tag list took longer than {LIST_DEADLINE:?}")));
            };
            let (body, link) = page?;
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| session.untrusted(format!("a page is not a tag list: {e}")))?;
            all.extend(page.tags.unwrap_or_default());
            match link.as_deref().and_then(next_link) {
                Some(next) => url = same_origin_link(&session.base, &next).map_err(|e| session.untrusted(e))?,
                None => return Ok(all),
            }
        }
        Err(session.untrusted(format!("the tag list has more than {MAX_PAGES} pages")))
    }

    /// The digest a tag points at now, or `None` if the tag does not exist.
    pub async fn manifest_digest(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<Option<String>, RegistryError> {
        let mut session = Session::new(self, registry, repository, auth)?;
        let url = session.url(&format!("/v2/{}/manifests/{tag}", session.repository))?;
        let response = session.send(Method::HEAD, &url, Some(MANIFEST_TYPES)).await?;
        match response.status() {
            StatusCode::OK => Ok(response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(session.refusal(&url, &response)),
        }
    }
}

/// One listing or lookup: the registry, the repository, the credentials, and
/// the bearer token once the registry asked for one.
struct Session<'a> {
    http: &'a reqwest::Client,
    registry: &'a str,
    /// The repository as the API names it (`library/nginx` for `nginx` on
    /// Docker Hub).
    repository: String,
    base: Url,
    auth: Option<&'a RegistryAuth>,
    token: Option<String>,
    tokens_asked: usize,
    /// Whether Basic credentials go with every request: over the registry's
    /// socket or HTTPS from the first one, over plain HTTP once the registry
    /// has challenged for them.
    basic: bool,
    /// The registry's unix socket, when its API is called there.
    socket: Option<&'a std::path::Path>,
}

impl<'a> Session<'a> {
    fn new(
        client: &'a Registry,
        registry: &'a str,
        repository: &str,
        auth: Option<&'a RegistryAuth>,
    ) -> Result<Session<'a>, RegistryError> {
        let (http, base, socket) = match &client.socket {
            // The socket's client ignores the URL's host: it names the
            // registry, as the `Host` the registry sees.
            Some((name, http, path)) if name == registry => {
                (http, Url::parse(&format!("http://{registry}/")), Some(path.as_path()))
            }
            _ => (
                &client.http,
                Url::parse(&Registry::base_url(client.api_address(registry))),
                None,
            ),
        };
        let authenticated = socket.is_some() || base.as_ref().is_ok_and(|b| b.scheme() == "https");
        Ok(Session {
            http,
            registry,
            repository: api_repository(registry, repository),
            base: base.map_err(|e| RegistryError::Untrusted {
                registry: registry.into(),
                reason: format!("bad registry address: {e}"),
            })?,
            auth,
            token: None,
            tokens_asked: 0,
            basic: authenticated,
            socket,
        })
    }

    fn untrusted(&self, reason: String) -> RegistryError {
        RegistryError::Untrusted {
            registry: self.registry.into(),
            reason,
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> RegistryError {
        let at = match self.socket {
            Some(path) => format!(
                " (at its socket {}, registry_socket; empty for a registry on a port alone)",
                path.display()
            ),
            None => String::new(),
        };
        RegistryError::Unreachable {
            registry: self.registry.into(),
            reason: format!("{e}{at}"),
        }
    }

    fn unauthorized(&self) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.registry.into(),
            repository: self.repository.clone(),
        }
    }

    /// A path on the registry, joined as a URL (never glued as a string).
    fn url(&self, path: &str) -> Result<Url, RegistryError> {
        self.base.join(path).map_err(|e| self.untrusted(e.to_string()))
    }

    /// The error for an answer that is neither a success nor a 404.
    fn refusal(&self, url: &Url, response: &reqwest::Response) -> RegistryError {
        match response.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => self.unauthorized(),
            status if status.is_redirection() => {
                let to = response.headers().get(reqwest::header::LOCATION);
                let to = to.and_then(|v| v.to_str().ok()).unwrap_or("nowhere");
                self.untrusted(format!("{url} redirects ({status}) to {to}, which is not followed"))
            }
            status => RegistryError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            },
        }
    }

    /// Sends a request with the authorization the registry wants: the bearer
    /// token if there is one, else Basic credentials; after a `401` with a
    /// `Bearer` challenge, a token from the service it names, and once more.
    async fn send(
        &mut self,
        method: Method,
        url: &Url,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let response = self.request(method.clone(), url, accept).await?;
        if response.status() != StatusCode::UNAUTHORIZED || self.tokens_asked >= MAX_TOKENS {
            return Ok(response);
        }
        let headers = response.headers().get_all(WWW_AUTHENTICATE);
        let challenge =
            bearer_challenge(headers.iter().filter_map(|v| v.to_str().ok())).map_err(|e| self.untrusted(e))?;
        let Some(challenge) = challenge else {
            // A Basic challenge: to credentials held back (plain HTTP), send
            // them now, once; else the credentials sent were refused.
            if self.basic || self.auth.and_then(RegistryAuth::basic).is_none() {
                return Ok(response);
            }
            self.basic = true;
            return self.request(method, url, accept).await;
        };
        self.token = Some(self.fetch_token(&challenge).await?);
        self.request(method, url, accept).await
    }

    async fn request(
        &self,
        method: Method,
        url: &Url,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut request = self.http.request(method, url.clone());
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        request = match (&self.token, self.auth.and_then(RegistryAuth::basic)) {
            (Some(token), _) => request.bearer_auth(token),
            (None, Some((username, password))) if self.basic => request.basic_auth(username, Some(password)),
            (None, _) => request,
        };
        request.send().await.map_err(|e| self.unreachable(e))
    }

    /// Asks the token service a challenge names for a token: with Basic
    /// credentials, with an identity token (the OAuth2 refresh-token grant),
    /// or anonymously.
    async fn fetch_token(&mut self, challenge: &BearerChallenge) -> Result<String, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
        }
        self.tokens_asked += 1;
        let realm = token_service(&self.base, &challenge.realm).map_err(|e| self.untrusted(e))?;
        let default_scope = format!("repository:{}:pull", self.repository);
        let scope = challenge.scope.as_deref().unwrap_or(&default_scope);
        let service = challenge.service.as_deref().unwrap_or_default();
        let identity_token = self.auth.and_then(|a| a.identity_token.as_deref());
        let request = match (identity_token, self.auth.and_then(RegistryAuth::basic)) {
            (Some(refresh), _) => self.http.post(realm.clone()).form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("service", service),
                ("scope", scope),
                ("client_id", "selfup"),
            ]),
            (None, basic) => {
                let mut query = vec![("scope", scope)];
                if challenge.service.is_some() {
                    query.push(("service", service));
                }
                let request = self.http.get(realm.clone()).query(&query);
                match basic {
                    Some((username, password)) => request.basic_auth(username, Some(password)),
                    None => request,
                }
            }
        };
        let mut response = request.send().await.map_err(|e| self.unreachable(e))?;
        if response.status() != StatusCode::OK {
            return Err(self.refusal(&realm, &response));
        }
        let what = "the token service's answer";
        let body = self.bounded_body(&mut response, MAX_TOKEN_BYTES, what).await?;
        let answer: Answer =
            serde_json::from_slice(&body).map_err(|e| self.untrusted(format!("{what} is not a token: {e}")))?;
        answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.untrusted(format!("{what} holds no token")))
    }

    /// One page of a tag list: its body (at most [`MAX_PAGE_BYTES`]) and its
    /// `Link` header.
    async fn page(&mut self, url: &Url) -> Result<(Vec<u8>, Option<String>), RegistryError> {
        let mut response = self.send(Method::GET, url, None).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(RegistryError::UnknownRepository {
                    registry: self.registry.into(),
                    repository: self.repository.clone(),
                });
            }
            _ => return Err(self.refusal(url, &response)),
        }
        let link = response
            .headers()
            .get(LINK)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = self
            .bounded_body(&mut response, MAX_PAGE_BYTES, "a page of the tag list")
            .await?;
        Ok((body, link))
    }

    /// A response's body, refused past `limit` bytes.
    async fn bounded_body(
        &self,
        response: &mut reqwest::Response,
        limit: usize,
        what: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let too_large = || self.untrusted(format!("{what} is larger than {limit} bytes"));
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.unreachable(e))? {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// The repository as the registry API names it: Docker Hub's official
/// images (`nginx`) live under `library/`.
fn api_repository(registry: &str, repository: &str) -> String {
    if registry_host(registry) == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository.to_string()
    }
}

/// What a `Bearer` challenge asks for: where to get a token, and for what.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BearerChallenge {
    realm: String,
    service: Option<String>,
    scope: Option<String>,
}

/// The `Bearer` challenge among a response's `WWW-Authenticate` values, read
/// by RFC 7235's grammar (quoted strings hold commas: `scope="repository:a:pull,push"`).
/// `Ok(None)`: no `Bearer` challenge (a `Basic` one, say).
fn bearer_challenge<'h>(values: impl Iterator<Item = &'h str>) -> Result<Option<BearerChallenge>, String> {
    let mut unreadable = None;
    for value in values {
        for challenge in http_auth::ChallengeParser::new(value) {
            let challenge = match challenge {
                Ok(c) => c,
                Err(e) => {
                    unreadable
                        .get_or_insert_with(|| format!("the WWW-Authenticate header {value:?} is unreadable: {e}"));
                    break;
                }
            };
            if !challenge.scheme.eq_ignore_ascii_case("bearer") {
                continue;
            }
            let param = |name: &str| {
                challenge
                    .params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.to_unescaped())
            };
            let Some(realm) = param("realm").filter(|r| !r.is_empty()) else {
                return Err("a Bearer challenge names no realm to ask for a token".into());
            };
            return Ok(Some(BearerChallenge {
                realm,
                service: param("service"),
                scope: param("scope"),
            }));
        }
    }
    match unreadable {
        Some(reason) => Err(reason),
        None => Ok(None),
    }
}

/// The token service a challenge names, if credentials may go there: the
/// registry's own scheme, host and port, or any HTTPS address (Docker Hub's
/// is `auth.docker.io` for `registry-1.docker.io`). Plain HTTP elsewhere
/// would send the credentials in the clear, or to a service on this host.
fn token_service(base: &Url, realm: &str) -> Result<Url, String> {
    let url = base
        .join(realm)
        .map_err(|e| format!("the token service {realm:?} is not a URL: {e}"))?;
    if url.origin() != base.origin() && url.scheme() != "https" {
        return Err(format!(
            "the token service {} is neither the registry nor HTTPS; no credentials are sent there",
            url.origin().ascii_serialization()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the token service's address carries credentials of its own".into());
    }
    Ok(url)
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
    fn the_api_of_one_registry_name_is_called_at_its_configured_address_and_others_at_their_name() {
        let registry = Registry::new().with_api_address("localhost:5000", "http://172.18.0.1:5000");
        assert_eq!(registry.api_address("localhost:5000"), "http://172.18.0.1:5000");
        assert_eq!(registry.api_address("localhost:5001"), "localhost:5001");
        assert_eq!(Registry::new().api_address("localhost:5000"), "localhost:5000");
        let session = Session::new(&registry, "localhost:5000", "selfup", None).unwrap();
        assert_eq!(session.base.as_str(), "http://172.18.0.1:5000/");
    }

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

    #[test]
    fn docker_hub_names_its_api_host_and_its_official_images() {
        assert_eq!(Registry::base_url("docker.io"), "https://registry-1.docker.io");
        assert_eq!(Registry::base_url("index.docker.io"), "https://registry-1.docker.io");
        assert_eq!(api_repository("docker.io", "nginx"), "library/nginx");
        assert_eq!(api_repository("docker.io", "grafana/grafana"), "grafana/grafana");
        assert_eq!(api_repository("ghcr.io", "nginx"), "nginx");
    }

    fn challenge(values: &[&str]) -> Result<Option<BearerChallenge>, String> {
        bearer_challenge(values.iter().copied())
    }

    #[test]
    fn a_bearer_challenge_gives_realm_service_and_scope() {
        let hub = challenge(&[
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            hub,
            BearerChallenge {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            }
        );
        // A comma inside a quoted scope, spaces after commas, a lowercase
        // scheme and parameter names in capitals.
        let ghcr = challenge(&[
            r#"bearer Realm="https://ghcr.io/token", service="ghcr.io", scope="repository:o/a:pull,push""#,
        ])
        .unwrap()
        .unwrap();
        assert_eq!(ghcr.realm, "https://ghcr.io/token");
        assert_eq!(ghcr.scope.as_deref(), Some("repository:o/a:pull,push"));
        // Without service and scope; an escaped quote in the realm.
        let bare = challenge(&[r#"Bearer realm="http://127.0.0.1:5000/to\"ken""#])
            .unwrap()
            .unwrap();
        assert_eq!(bare.realm, r#"http://127.0.0.1:5000/to"ken"#);
        assert_eq!((bare.service, bare.scope), (None, None));
    }

    #[test]
    fn the_bearer_challenge_is_found_among_others_and_in_any_header() {
        let both = challenge(&[r#"Basic realm="r", Bearer realm="https://a.example/t",service="s""#]).unwrap();
        assert_eq!(both.unwrap().service.as_deref(), Some("s"));
        let second = challenge(&[r#"Basic realm="registry""#, r#"Bearer realm="https://a.example/t""#]).unwrap();
        assert_eq!(second.unwrap().realm, "https://a.example/t");
    }

    #[test]
    fn a_basic_challenge_is_no_bearer_and_a_broken_one_an_error() {
        assert_eq!(challenge(&[r#"Basic realm="Registry Realm""#]), Ok(None));
        assert_eq!(challenge(&[]), Ok(None));
        let no_realm = challenge(&[r#"Bearer service="s",scope="x""#]).unwrap_err();
        assert!(no_realm.contains("no realm"), "{no_realm}");
        let unreadable = challenge(&[r#"Bearer realm="unterminated"#]).unwrap_err();
        assert!(unreadable.contains("unreadable"), "{unreadable}");
    }

    #[test]
    fn credentials_go_only_to_the_registry_or_an_https_token_service() {
        let base = Url::parse("http://127.0.0.1:5000").unwrap();
        let service = |realm: &str| token_service(&base, realm);
        assert_eq!(
            service("http://127.0.0.1:5000/token").unwrap().as_str(),
            "http://127.0.0.1:5000/token"
        );
        assert_eq!(service("/token").unwrap().as_str(), "http://127.0.0.1:5000/token");
        assert_eq!(
            service("https://auth.example/token").unwrap().as_str(),
            "https://auth.example/token"
        );
        for realm in [
            "http://127.0.0.1:5800/upgrade/=0.1.0",
            "http://auth.example/token",
            "//auth.example/token",
            "ftp://127.0.0.1:5000/token",
        ] {
            let refused = service(realm).unwrap_err();
            assert!(refused.contains("no credentials are sent there"), "{realm}: {refused}");
        }
        assert!(
            service("https://user:pw@auth.example/token")
                .unwrap_err()
                .contains("credentials of its own")
        );
        assert!(service("http://[::1").unwrap_err().contains("not a URL"));
    }

    /// A registry on loopback that wants bearer tokens, as Docker Hub does:
    /// `/v2/...` answers 401 with a `Bearer` challenge until a request carries
    /// a token its `/token` endpoint handed out for the right credentials.
    mod token_registry {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex};

        use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
        use base64::Engine as _;

        /// What `/token` does.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum TokenAnswer {
            Token,
            RedirectElsewhere,
            Huge,
            NoToken,
        }

        pub struct Fake {
            pub port: u16,
            pub state: Arc<Mutex<State>>,
            handle: actix_web::dev::ServerHandle,
        }

        pub struct State {
            /// The challenge's realm; `/token` on this server unless a test changes it.
            pub realm: String,
            pub answer: TokenAnswer,
            pub tags: Vec<String>,
            /// Each token request's query (or form body for a POST).
            pub token_requests: Vec<HashMap<String, String>>,
            /// Tokens handed out.
            pub issued: Vec<String>,
            /// Requests that reached `/v2/` with a valid token.
            pub authorized: usize,
            /// Token requests refused for their credentials.
            pub refused: usize,
        }

        pub const USER: &str = "alice";
        pub const PASSWORD: &str = "s3cret";
        pub const REFRESH: &str = "refresh-1";

        impl Fake {
            pub async fn start(tags: usize) -> Fake {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let port = listener.local_addr().unwrap().port();
                let state = Arc::new(Mutex::new(State {
                    realm: format!("http://127.0.0.1:{port}/token"),
                    answer: TokenAnswer::Token,
                    tags: (0..tags).map(|i| format!("1.{i}.0")).collect(),
                    token_requests: Vec::new(),
                    issued: Vec::new(),
                    authorized: 0,
                    refused: 0,
                }));
                let data = web::Data::from(state.clone());
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .route("/token", web::get().to(token))
                        .route("/token", web::post().to(refresh))
                        .route("/v2/{name:.+}/tags/list", web::get().to(tags_list))
                        .route("/v2/{name:.+}/manifests/{tag}", web::head().to(manifest))
                })
                .workers(1)
                .listen(listener)
                .unwrap()
                .run();
                let handle = server.handle();
                tokio::spawn(server);
                Fake { port, state, handle }
            }

            pub fn addr(&self) -> String {
                format!("127.0.0.1:{}", self.port)
            }

            pub fn set(&self, change: impl FnOnce(&mut State)) {
                change(&mut self.state.lock().unwrap());
            }

            pub fn state<T>(&self, read: impl FnOnce(&State) -> T) -> T {
                read(&self.state.lock().unwrap())
            }

            pub async fn stop(self) {
                self.handle.stop(false).await;
            }
        }

        fn issue(state: &mut State, query: HashMap<String, String>) -> HttpResponse {
            state.token_requests.push(query);
            match state.answer {
                TokenAnswer::Token => {
                    let token = format!("tok-{}", state.issued.len());
                    state.issued.push(token.clone());
                    HttpResponse::Ok().json(serde_json::json!({"token": token, "expires_in": 300}))
                }
                TokenAnswer::RedirectElsewhere => HttpResponse::TemporaryRedirect()
                    .insert_header(("Location", "http://127.0.0.1:9/token"))
                    .finish(),
                TokenAnswer::Huge => HttpResponse::Ok().body(format!(r#"{{"token":"{}"}}"#, "x".repeat(100_000))),
                TokenAnswer::NoToken => HttpResponse::Ok().json(serde_json::json!({"expires_in": 300})),
            }
        }

        async fn token(
            req: HttpRequest,
            query: web::Query<HashMap<String, String>>,
            state: web::Data<Mutex<State>>,
        ) -> HttpResponse {
            let expected = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
            let given = req.headers().get("authorization").and_then(|v| v.to_str().ok());
            let public = query.get("scope").is_some_and(|s| s.contains(":public"));
            if given != Some(&format!("Basic {expected}")) && !(given.is_none() && public) {
                state.lock().unwrap().refused += 1;
                return HttpResponse::Unauthorized()
                    .json(serde_json::json!({"details": "incorrect username or password"}));
            }
            issue(&mut state.lock().unwrap(), query.into_inner())
        }

        async fn refresh(form: web::Form<HashMap<String, String>>, state: web::Data<Mutex<State>>) -> HttpResponse {
            let form = form.into_inner();
            if form.get("grant_type").map(String::as_str) != Some("refresh_token")
                || form.get("refresh_token").map(String::as_str) != Some(REFRESH)
            {
                return HttpResponse::Unauthorized().finish();
            }
            let mut state = state.lock().unwrap();
            state.token_requests.push(form);
            let token = format!("tok-{}", state.issued.len());
            state.issued.push(token.clone());
            HttpResponse::Ok().json(serde_json::json!({"access_token": token}))
        }

        /// `None` and a 401 with the challenge unless the request carries an issued token.
        fn authorize(req: &HttpRequest, state: &mut State, name: &str) -> Option<HttpResponse> {
            let given = req.headers().get("authorization").and_then(|v| v.to_str().ok());
            let valid = given
                .and_then(|g| g.strip_prefix("Bearer "))
                .is_some_and(|t| state.issued.iter().any(|i| i == t));
            if valid {
                state.authorized += 1;
                return None;
            }
            let challenge = format!(
                r#"Bearer realm="{}",service="loopback-registry",scope="repository:{name}:pull""#,
                state.realm
            );
            Some(
                HttpResponse::Unauthorized()
                    .insert_header(("WWW-Authenticate", challenge))
                    .json(serde_json::json!({"errors": [{"code": "UNAUTHORIZED"}]})),
            )
        }

        async fn tags_list(
            req: HttpRequest,
            name: web::Path<String>,
            query: web::Query<HashMap<String, String>>,
            state: web::Data<Mutex<State>>,
        ) -> HttpResponse {
            let mut state = state.lock().unwrap();
            if let Some(refused) = authorize(&req, &mut state, &name) {
                return refused;
            }
            let n: usize = query.get("n").and_then(|n| n.parse().ok()).unwrap_or(usize::MAX);
            let from = match query.get("last") {
                Some(last) => state.tags.iter().position(|t| t == last).map_or(0, |i| i + 1),
                None => 0,
            };
            let page: Vec<&String> = state.tags.iter().skip(from).take(n).collect();
            let mut response = HttpResponse::Ok();
            if from + page.len() < state.tags.len()
                && let Some(last) = page.last()
            {
                response.insert_header((
                    "Link",
                    format!(r#"</v2/{name}/tags/list?last={last}&n={n}>; rel="next""#),
                ));
            }
            response.json(serde_json::json!({"name": name.as_str(), "tags": page}))
        }

        async fn manifest(
            req: HttpRequest,
            path: web::Path<(String, String)>,
            state: web::Data<Mutex<State>>,
        ) -> HttpResponse {
            let mut state = state.lock().unwrap();
            if let Some(refused) = authorize(&req, &mut state, &path.0) {
                return refused;
            }
            if !state.tags.contains(&path.1) {
                return HttpResponse::NotFound().finish();
            }
            HttpResponse::Ok()
                .insert_header(("Docker-Content-Digest", format!("sha256:{:0>64}", path.1.len())))
                .finish()
        }
    }

    use token_registry::{Fake, PASSWORD, REFRESH, TokenAnswer, USER};

    fn password(user: &str, password: &str) -> RegistryAuth {
        RegistryAuth {
            server: "test".into(),
            username: Some(user.into()),
            password: Some(password.into()),
            identity_token: None,
            origin: "test".into(),
        }
    }

    #[tokio::test]
    async fn tags_come_over_pages_from_a_registry_that_wants_a_bearer_token() {
        let fake = Fake::start(250).await;
        let auth = password(USER, PASSWORD);
        let tags = Registry::new()
            .tags(&fake.addr(), "team/app", Some(&auth))
            .await
            .unwrap();
        assert_eq!(tags.len(), 250);
        assert_eq!(tags.first().map(String::as_str), Some("1.0.0"));
        assert_eq!(tags.last().map(String::as_str), Some("1.249.0"));
        // One token for all three pages, asked for with the challenge's
        // service and scope.
        let (asked, authorized) = fake.state(|s| (s.token_requests.clone(), s.authorized));
        assert_eq!(asked.len(), 1, "{asked:?}");
        assert_eq!(asked[0].get("service").map(String::as_str), Some("loopback-registry"));
        assert_eq!(
            asked[0].get("scope").map(String::as_str),
            Some("repository:team/app:pull")
        );
        assert_eq!(authorized, 3);
        fake.stop().await;
    }

    #[tokio::test]
    async fn a_public_repository_gets_an_anonymous_token_and_an_identity_token_is_exchanged() {
        let fake = Fake::start(3).await;
        let registry = Registry::new();
        let tags = registry.tags(&fake.addr(), "app:public", None).await;
        // The repository name is not one a registry accepts, but the fake's
        // token service hands anonymous tokens for scopes that say public.
        assert_eq!(tags.unwrap().len(), 3);
        let identity = RegistryAuth {
            username: None,
            password: None,
            identity_token: Some(REFRESH.into()),
            ..password("", "")
        };
        let tags = registry.tags(&fake.addr(), "team/app", Some(&identity)).await.unwrap();
        assert_eq!(tags.len(), 3);
        let asked = fake.state(|s| s.token_requests.clone());
        assert_eq!(asked.len(), 2);
        assert_eq!(asked[1].get("grant_type").map(String::as_str), Some("refresh_token"));
        assert_eq!(
            asked[1].get("scope").map(String::as_str),
            Some("repository:team/app:pull")
        );
        fake.stop().await;
    }

    #[tokio::test]
    async fn a_digest_is_looked_up_with_a_token_too() {
        let fake = Fake::start(2).await;
        let auth = password(USER, PASSWORD);
        let registry = Registry::new();
        let digest = registry
            .manifest_digest(&fake.addr(), "team/app", "1.1.0", Some(&auth))
            .await
            .unwrap();
        assert_eq!(digest, Some(format!("sha256:{:0>64}", 5)));
        let missing = registry
            .manifest_digest(&fake.addr(), "team/app", "9.9.9", Some(&auth))
            .await;
        assert_eq!(missing.unwrap(), None);
        fake.stop().await;
    }

    #[tokio::test]
    async fn wrong_credentials_at_the_token_service_are_unauthorized() {
        let fake = Fake::start(3).await;
        let wrong = password(USER, "wrong");
        let err = Registry::new()
            .tags(&fake.addr(), "team/app", Some(&wrong))
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
        // Anonymous, for a repository that is not public: refused as well.
        let err = Registry::new().tags(&fake.addr(), "team/app", None).await.unwrap_err();
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
        // Both were refused by the token service, not by a lack of asking.
        assert_eq!(fake.state(|s| (s.refused, s.issued.len())), (2, 0));
        fake.stop().await;
    }

    #[tokio::test]
    async fn a_token_service_that_misbehaves_is_refused_within_bounds() {
        let fake = Fake::start(3).await;
        let auth = password(USER, PASSWORD);
        let registry = Registry::new();
        // Where a plain-HTTP realm elsewhere would send the credentials:
        // nothing may connect to it.
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let elsewhere_port = elsewhere.local_addr().unwrap().port();
        let cases = [
            (
                Some(format!("http://127.0.0.1:{elsewhere_port}/token")),
                TokenAnswer::Token,
                "neither the registry nor HTTPS",
            ),
            (None, TokenAnswer::RedirectElsewhere, "which is not followed"),
            (None, TokenAnswer::Huge, "larger than 65536 bytes"),
            (None, TokenAnswer::NoToken, "holds no token"),
        ];
        for (realm, answer, says) in cases {
            fake.set(|s| {
                s.realm = realm
                    .clone()
                    .unwrap_or_else(|| format!("http://127.0.0.1:{}/token", fake.port));
                s.answer = answer;
            });
            let err = registry.tags(&fake.addr(), "team/app", Some(&auth)).await.unwrap_err();
            assert!(matches!(err, RegistryError::Untrusted { .. }), "{answer:?}: {err}");
            assert!(err.to_string().contains(says), "{answer:?}: {err}");
        }
        let followed = futures_util::FutureExt::now_or_never(elsewhere.accept());
        assert!(followed.is_none(), "a request reached the realm on another origin");
        assert_eq!(fake.state(|s| s.authorized), 0);
        fake.stop().await;
    }

    /// A registry of one tag that records each request's `Authorization`
    /// and `Host`; with `challenge`, it answers `401` with a `Basic`
    /// challenge to a request without credentials.
    mod recording {
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

        pub type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;

        pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, challenge: bool, seen: Seen) {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let header = |name: &str| {
                head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
            };
            let authorization = header("authorization");
            let answer = if challenge && authorization.is_none() {
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"r\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
            } else {
                let body = r#"{"tags":["1.0.0"]}"#;
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            seen.lock().unwrap().push((authorization, header("host")));
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    }

    #[tokio::test]
    async fn over_plain_http_credentials_go_only_in_answer_to_the_registrys_basic_challenge() {
        let auth = password("selfup", "secret");
        for challenge in [false, true] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let seen = recording::Seen::default();
            let record = seen.clone();
            let server = tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    recording::serve(stream, challenge, record.clone()).await;
                }
            });
            let tags = Registry::new().tags(&addr, "selfup", Some(&auth)).await.unwrap();
            assert_eq!(tags, ["1.0.0"]);
            let authorizations: Vec<_> = seen.lock().unwrap().iter().map(|(a, _)| a.clone()).collect();
            match challenge {
                // A listener that does not ask (a stand-in on the port) gets none.
                false => assert_eq!(authorizations, [None]),
                true => assert_eq!(authorizations, [None, Some(format!("Basic {}", b64("selfup:secret")))]),
            }
            server.abort();
        }
    }

    #[tokio::test]
    async fn over_the_registrys_unix_socket_credentials_go_with_the_first_request_and_nothing_uses_the_port() {
        let dir = std::env::temp_dir().join(format!("selfup-unit-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("registry.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let seen = recording::Seen::default();
        let record = seen.clone();
        let server = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                recording::serve(stream, true, record.clone()).await;
            }
        });
        // The name's port: a listener there would see any request over TCP.
        let port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let name = port.local_addr().unwrap().to_string();
        let registry = Registry::new().with_socket(&name, &path);
        let auth = password("selfup", "secret");
        let tags = registry.tags(&name, "selfup", Some(&auth)).await.unwrap();
        assert_eq!(tags, ["1.0.0"]);
        assert_eq!(
            *seen.lock().unwrap(),
            [(Some(format!("Basic {}", b64("selfup:secret"))), Some(name.clone()))]
        );
        assert!(futures_util::FutureExt::now_or_never(port.accept()).is_none());
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_registry_socket_that_is_not_there_is_named_in_the_error() {
        let path = std::env::temp_dir().join(format!("selfup-unit-no-registry-{}.sock", std::process::id()));
        let err = Registry::new()
            .with_socket("localhost:5000", &path)
            .tags("localhost:5000", "selfup", None)
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }

    fn b64(text: &str) -> String {
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, text)
    }
}
