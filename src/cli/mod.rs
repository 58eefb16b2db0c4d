//! The operator's commands: `selfup upgrade [REQ]`, `rollback`, `status`,
//! `history`. They talk to the live instance on this host: the control
//! socket when it answers, else `127.0.0.1` on the first port that answers.
//!
//! Exit codes: 0 done (or already there), 1 the instance refused or the
//! upgrade failed (the reason on stderr), 69 no instance answered, 2 bad
//! arguments.

mod address;
mod answer;
pub mod program;
pub mod sse;
mod view;

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;

pub use self::address::Address;
use self::answer::{Ending, Refusal, Status};
use self::view::View;

/// No instance answered (`EX_UNAVAILABLE`).
pub const UNAVAILABLE: u8 = 69;

/// How long a plain question may take; an upgrade's stream takes as long as
/// the upgrade.
const ANSWER: Duration = Duration::from_secs(30);

/// What every command needs.
#[derive(Debug, Clone)]
pub struct Client {
    /// The control socket or a port on loopback.
    pub address: Address,
    /// The bearer token, when the instance wants one.
    pub token: Option<String>,
    /// JSON on stdout instead of text for a person.
    pub json: bool,
}

/// Why a command did not succeed, and its exit code.
#[derive(Debug)]
pub struct Failure {
    /// The exit code: 1, 2 or [`UNAVAILABLE`].
    pub code: u8,
    /// What stderr says, after `selfup: `.
    pub message: String,
}

impl Failure {
    fn unreachable(address: &Address, e: &reqwest::Error) -> Failure {
        Failure {
            code: UNAVAILABLE,
            message: format!("no selfup instance answers at {address}: {}", cause(e)),
        }
    }
}

/// The innermost cause of `e`: reqwest wraps the system's word ("Connection
/// refused (os error 111)") in layers that only repeat the URL.
fn cause(e: &reqwest::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}

impl Client {
    /// `--url`, else the default address for `control_socket` and `ports`.
    /// The token goes to the control socket, or over TCP to an address the
    /// operator named with `--url`; never to a port the fallback found,
    /// which any local user may hold once a handover has freed it.
    pub fn new(
        url: Option<&str>,
        token: Option<String>,
        json: bool,
        control_socket: &Path,
        ports: &[u16],
    ) -> Result<Client, Failure> {
        let (address, token) = match url {
            Some(url) => (
                Address::parse(url).map_err(|message| Failure { code: 2, message })?,
                token,
            ),
            None => match address::default_address(control_socket, ports) {
                Address::Tcp(addr) => {
                    if token.is_some() {
                        eprintln!(
                            "selfup: the control socket {} does not answer; asking {addr} without the token (a token goes to a port only with --url)",
                            control_socket.display()
                        );
                    }
                    (Address::Tcp(addr), None)
                }
                socket => (socket, token),
            },
        };
        Ok(Client { address, token, json })
    }

    /// `method path`, accepting `accept`, with the token if there is one;
    /// `timeout` bounds the whole exchange (none for a stream).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        accept: &str,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, Failure> {
        let client = self.address.client().map_err(|e| Failure {
            code: 1,
            message: format!("building the HTTP client: {}", cause(&e)),
        })?;
        let mut request = client.request(method, self.address.url(path)).header(ACCEPT, accept);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        request
            .send()
            .await
            .map_err(|e| Failure::unreachable(&self.address, &e))
    }

    /// `GET path` as JSON; an error answer is a failure with its `error`.
    async fn get_json(&self, path: &str) -> Result<Value, Failure> {
        self.json_answer(reqwest::Method::GET, path).await
    }

    async fn json_answer(&self, method: reqwest::Method, path: &str) -> Result<Value, Failure> {
        let response = self.send(method, path, "application/json", Some(ANSWER)).await?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| Failure::unreachable(&self.address, &e))?;
        let body: Value = serde_json::from_str(&text).map_err(|_| Failure {
            code: 1,
            message: format!("{path} answered {status} with no JSON: {}", text.trim()),
        })?;
        if status >= 400 {
            let refusal: Refusal = answer::read(&body);
            return Err(Failure {
                code: 1,
                message: format!(
                    "{path} answered {status}: {}",
                    refusal.error.as_deref().unwrap_or(&text)
                ),
            });
        }
        Ok(body)
    }

    /// `selfup status`.
    pub fn status(&self) -> Result<(), Failure> {
        let body = block_on(self.get_json("/status"))?;
        if self.json {
            println!("{body}");
        } else {
            print!("{}", answer::status_text(&answer::read(&body)));
        }
        Ok(())
    }

    /// `selfup pause` and `selfup resume`: `POST path`, and what it did.
    pub fn pause_word(&self, path: &str) -> Result<(), Failure> {
        let body = block_on(self.json_answer(reqwest::Method::POST, path))?;
        if self.json {
            println!("{body}");
        } else if let Some(ends) = body["paused"]["ends_ms"].as_u64() {
            let secs = body["hold_secs"].as_u64().unwrap_or_default();
            println!(
                "paused: new public requests wait until `selfup resume`, or {secs} s (until {ends} ms after the epoch)"
            );
        } else {
            println!(
                "resumed after {} ms; {} held requests go on",
                body["paused_ms"].as_u64().unwrap_or_default(),
                body["held"].as_u64().unwrap_or_default()
            );
        }
        Ok(())
    }

    /// `selfup history`.
    pub fn history(&self) -> Result<(), Failure> {
        let body = block_on(self.get_json("/status"))?;
        if self.json {
            println!("{}", body["history"]);
        } else {
            print!("{}", answer::history_text(&answer::read::<Status>(&body).history));
        }
        Ok(())
    }

    /// `selfup upgrade [REQ]` and `selfup rollback`: the upgrade's events as
    /// they come (a progress bar for the pull, a line per step), then the outcome.
    pub fn upgrade(&self, method: &str, path: &str) -> Result<(), Failure> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| Failure {
            code: 2,
            message: format!("{method:?} is no HTTP method: {e}"),
        })?;
        block_on(self.stream(method, path))
    }

    async fn stream(&self, method: reqwest::Method, path: &str) -> Result<(), Failure> {
        let mut response = self.send(method, path, "text/event-stream", None).await?;
        let streamed = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|t| t.to_str().ok())
            .is_some_and(|t| t.starts_with("text/event-stream"));
        if !streamed {
            // Refused before anything ran (403, 401, 400): one JSON answer.
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            let body: Value =
                serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "error": text.trim() }));
            return self.outcome(status, body);
        }
        let mut view = View::new(self.json);
        let mut decoder = sse::Decoder::default();
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    return Err(Failure {
                        code: 1,
                        message: format!("the event stream broke off: {}", cause(&e)),
                    });
                }
            };
            for event in decoder.push(&chunk) {
                let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                    continue;
                };
                if event.event == "result" {
                    view.finish();
                    let status = answer::read::<Ending>(&data).http_status.unwrap_or(500);
                    return self.outcome(status, data);
                }
                view.show(&data);
            }
        }
        view.finish();
        Err(Failure {
            code: 1,
            message: "the connection closed before the upgrade's answer; see `selfup history`".into(),
        })
    }

    fn outcome(&self, status: u16, body: Value) -> Result<(), Failure> {
        if self.json {
            println!("{body}");
        }
        if status >= 400 {
            let refusal: Refusal = answer::read(&body);
            let mut message = format!(
                "failed ({status}): {}",
                refusal.error.as_deref().unwrap_or("no reason given")
            );
            let log = &refusal.successor_log;
            if !log.is_empty() {
                message.push_str("\nthe successor's last log lines:");
                for line in &log[log.len().saturating_sub(10)..] {
                    message.push_str(&format!("\n  {line}"));
                }
            }
            return Err(Failure { code: 1, message });
        }
        if !self.json {
            println!("{}", answer::outcome_text(&body));
        }
        Ok(())
    }
}

/// Runs one command's requests. The CLI asks one thing at a time, so a
/// runtime on this thread is all it needs.
fn block_on<T>(work: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: 1,
            message: format!("starting the client: {e}"),
        })?
        .block_on(work)
}

/// Runs a command and turns its result into the exit code.
pub fn exit(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("selfup: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::cli::sse::{Decoder, SseEvent};

    /// Serves one connection from `listener`: reads the request, writes
    /// `answer`, then waits for the client to close. The connection stays
    /// open, so a client must stop where the body ends, not at the close.
    fn serve_once<S: Read + Write>(
        accept: impl FnOnce() -> S + Send + 'static,
        answer: String,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut s = accept();
            let mut head = [0u8; 1024];
            let _ = s.read(&mut head).unwrap();
            s.write_all(answer.as_bytes()).unwrap();
            let _ = s.read(&mut head);
        })
    }

    fn on_loopback(answer: &str) -> (Client, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = Address::Tcp(listener.local_addr().unwrap().to_string());
        let server = serve_once(move || listener.accept().unwrap().0, answer.to_string());
        (client(address), server)
    }

    fn client(address: Address) -> Client {
        Client {
            address,
            token: Some("t0ken".into()),
            json: false,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_chunked_event_stream_is_read_event_by_event() {
        let body = [
            "retry: 1000\n\n",
            ": keep-alive\n\nid: 3\nevent: upgrade_step\ndata: {\"step\":",
            "\"pulling\"}\n\n",
            "event: result\ndata: {}\n\n",
        ];
        let mut answer =
            String::from("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
        for chunk in body {
            answer.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
        }
        answer.push_str("0\r\n\r\n");
        let (client, server) = on_loopback(&answer);
        let events = runtime().block_on(async {
            let mut response = client
                .send(reqwest::Method::GET, "/events", "text/event-stream", None)
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["Content-Type"], "text/event-stream");
            let mut decoder = Decoder::default();
            let mut events = Vec::new();
            while let Some(chunk) = response.chunk().await.unwrap() {
                events.extend(decoder.push(&chunk));
            }
            events
        });
        assert_eq!(
            events,
            vec![
                SseEvent {
                    id: Some("3".into()),
                    event: "upgrade_step".into(),
                    data: "{\"step\":\"pulling\"}".into()
                },
                SseEvent {
                    id: None,
                    event: "result".into(),
                    data: "{}".into()
                },
            ]
        );
        server.join().unwrap();
    }

    #[test]
    fn a_body_by_length_is_read_whole_and_no_further() {
        let (client, server) = on_loopback("HTTP/1.1 409 Conflict\r\ncontent-length: 13\r\n\r\n{\"error\":\"x\"}");
        let (status, text) = runtime().block_on(async {
            let response = client
                .send(reqwest::Method::GET, "/status", "application/json", Some(ANSWER))
                .await
                .unwrap();
            (response.status(), response.text().await.unwrap())
        });
        assert_eq!(status, 409);
        assert_eq!(text, "{\"error\":\"x\"}");
        server.join().unwrap();
    }

    #[test]
    fn the_control_socket_is_asked_with_the_token_and_a_refusal_gives_its_reason() {
        let dir = std::env::temp_dir().join(format!("selfup-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = [0u8; 1024];
            let n = s.read(&mut head).unwrap();
            tx.send(String::from_utf8_lossy(&head[..n]).into_owned()).unwrap();
            s.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 22\r\n\r\n{\"error\":\"bad token\"}\n")
                .unwrap();
            let _ = s.read(&mut head);
        });
        let failure = runtime()
            .block_on(client(Address::Unix(path)).get_json("/status"))
            .unwrap_err();
        assert_eq!(
            (failure.code, failure.message.as_str()),
            (1, "/status answered 401: bad token")
        );
        let request = rx.recv().unwrap().to_ascii_lowercase();
        assert!(request.starts_with("get /status http/1.1\r\n"), "{request}");
        assert!(request.contains("authorization: bearer t0ken\r\n"), "{request}");
        assert!(request.contains("accept: application/json\r\n"), "{request}");
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_token_goes_over_tcp_only_to_an_explicit_url_and_always_to_the_control_socket() {
        let token = || Some("t0ken".to_string());
        let nowhere = Path::new("/nonexistent/selfup/control.sock");
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        // The fallback finds the port: no token goes there.
        let fallback = Client::new(None, token(), false, nowhere, &[port, port]).unwrap();
        assert_eq!(fallback.address, Address::Tcp(format!("127.0.0.1:{port}")));
        assert_eq!(fallback.token, None);
        // The operator named the port: the token goes.
        let url = format!("http://127.0.0.1:{port}");
        let named = Client::new(Some(&url), token(), false, nowhere, &[port, port]).unwrap();
        assert_eq!(named.token, token());
        // The control socket answers: the token goes there.
        let dir = std::env::temp_dir().join(format!("selfup-cli-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let _ = std::fs::remove_file(&path);
        let _socket = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let socket = Client::new(None, token(), false, &path, &[port, port]).unwrap();
        assert_eq!((socket.address, socket.token), (Address::Unix(path), token()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nothing_listening_is_unavailable_with_the_systems_reason() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = Address::Tcp(format!("127.0.0.1:{port}"));
        let failure = client(address).status().unwrap_err();
        assert_eq!(failure.code, UNAVAILABLE);
        assert!(
            failure.message.starts_with(&format!(
                "no selfup instance answers at http://127.0.0.1:{port}: Connection refused"
            )),
            "{}",
            failure.message
        );
    }
}
