//! A registry that wants bearer tokens, as Docker Hub and GHCR do, for the
//! companion tests: an HTTP server on loopback in front of a real registry.
//!
//! Every `/v2/` request without a token it issued gets a `401` with
//! `WWW-Authenticate: Bearer realm=".../token",service=...,scope=...`;
//! `/token` hands out a token for the right Basic credentials only. A request
//! with a token is passed on to the registry behind it (with that registry's
//! own credentials), so the Engine's pull goes through the same flow as the
//! companion's tag list. Stopped on drop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine as _;

use crate::harness::eventually;

/// What the front saw, for the test to assert on.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Token requests with the right credentials, and their query.
    pub tokens: Vec<HashMap<String, String>>,
    /// Token requests refused for their credentials.
    pub refused: usize,
    /// `/v2/` requests without a valid token (answered with the challenge).
    pub challenged: usize,
    /// `/v2/` requests passed on, as `METHOD path`.
    pub passed: Vec<String>,
}

struct Front {
    backend: String,
    /// `Basic <base64>` for both `/token` and the registry behind.
    basic: String,
    realm: String,
    issued: Mutex<Vec<String>>,
    seen: Mutex<Seen>,
    http: reqwest::Client,
}

pub struct TokenFront {
    pub addr: String,
    front: Arc<Front>,
    handle: actix_web::dev::ServerHandle,
}

impl TokenFront {
    /// A front on a free loopback port for the registry at `backend`, taking
    /// `user`/`password` (the same as the registry's own).
    pub async fn start(backend: &str, user: &str, password: &str) -> TokenFront {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let front = Arc::new(Front {
            backend: format!("http://{backend}"),
            basic: format!("Basic {basic}"),
            realm: format!("http://{addr}/token"),
            issued: Mutex::new(Vec::new()),
            seen: Mutex::new(Seen::default()),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
                .unwrap(),
        });
        let data = web::Data::from(front.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/token", web::get().to(token))
                .default_service(web::to(pass_on))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        // The server starts when its task is first polled: wait until it
        // answers, before the test blocks its thread on a command.
        tokio::spawn(server);
        let url = format!("http://{addr}/v2/");
        let http = front.http.clone();
        eventually("the token front to answer", Duration::from_secs(10), || {
            let request = http.get(&url).send();
            async move { request.await.ok().map(|_| ()) }
        })
        .await;
        TokenFront { addr, front, handle }
    }

    pub fn seen(&self) -> Seen {
        self.front.seen.lock().unwrap().clone()
    }
}

impl Drop for TokenFront {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

async fn token(req: HttpRequest, query: web::Query<HashMap<String, String>>, front: web::Data<Front>) -> HttpResponse {
    let given = req.headers().get("authorization").and_then(|v| v.to_str().ok());
    if given != Some(front.basic.as_str()) {
        front.seen.lock().unwrap().refused += 1;
        return HttpResponse::Unauthorized().json(serde_json::json!({"details": "incorrect username or password"}));
    }
    let mut issued = front.issued.lock().unwrap();
    let token = format!("front-token-{}", issued.len());
    issued.push(token.clone());
    drop(issued);
    front.seen.lock().unwrap().tokens.push(query.into_inner());
    HttpResponse::Ok().json(serde_json::json!({"token": token, "expires_in": 300}))
}

async fn pass_on(req: HttpRequest, body: web::Bytes, front: web::Data<Front>) -> HttpResponse {
    let given = req.headers().get("authorization").and_then(|v| v.to_str().ok());
    let valid = given
        .and_then(|g| g.strip_prefix("Bearer "))
        .is_some_and(|t| front.issued.lock().unwrap().iter().any(|i| i == t));
    if !valid {
        front.seen.lock().unwrap().challenged += 1;
        // The scope the registry's docs give for a pull: the repository in the path.
        let repository = req
            .path()
            .strip_prefix("/v2/")
            .and_then(|p| {
                p.split_once("/manifests/")
                    .or_else(|| p.split_once("/tags/"))
                    .or_else(|| p.split_once("/blobs/"))
            })
            .map(|(r, _)| r.to_string());
        let mut challenge = format!(r#"Bearer realm="{}",service="selfup-e2e-front""#, front.realm);
        if let Some(r) = repository {
            challenge.push_str(&format!(r#",scope="repository:{r}:pull""#));
        }
        return HttpResponse::Unauthorized()
            .insert_header(("WWW-Authenticate", challenge))
            .insert_header(("Docker-Distribution-API-Version", "registry/2.0"))
            .json(serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}));
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    front
        .seen
        .lock()
        .unwrap()
        .passed
        .push(format!("{} {}", req.method(), req.path()));
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap();
    let mut request = front
        .http
        .request(method, format!("{}{path}", front.backend))
        .header("Authorization", &front.basic)
        .body(body.to_vec());
    for (name, value) in req.headers() {
        if ["accept", "content-type"].contains(&name.as_str()) {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return HttpResponse::BadGateway().body(e.to_string()),
    };
    let mut answer = HttpResponse::build(actix_web::http::StatusCode::from_u16(response.status().as_u16()).unwrap());
    for (name, value) in response.headers() {
        let kept = [
            "content-type",
            "docker-content-digest",
            "docker-distribution-api-version",
            "link",
            "etag",
        ];
        if kept.contains(&name.as_str()) {
            answer.insert_header((name.as_str(), value.as_bytes()));
        }
    }
    let length = response.content_length();
    let is_head = req.method() == actix_web::http::Method::HEAD;
    match response.bytes().await {
        // A HEAD answer says how long the GET body would be.
        Ok(_) if is_head => answer.no_chunking(length.unwrap_or_default()).finish(),
        Ok(bytes) => answer.body(bytes),
        Err(e) => HttpResponse::BadGateway().body(e.to_string()),
    }
}
