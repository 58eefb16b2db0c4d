//! A bounded load through nginx: GET `/` and POST `/echo`, every answer
//! checked, for the tests and for the benchmark.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request and what came of it.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Which client sent it, from 0.
    pub client: usize,
    pub sent: Instant,
    pub latency: Duration,
    /// The version that answered, if the answer was right.
    pub version: Option<String>,
    /// Why the request counts as failed: an error, a non-200, or an echo
    /// that did not return the body sent.
    pub error: Option<String>,
}

/// How a load's clients use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// One connection per client, reused for every request.
    KeepAlive,
    /// A new connection for every request.
    New,
}

/// Clients sending requests back to back until stopped: by [`Load::finish`],
/// by their own limits, or by dropping the `Load` (a failing test's clients
/// stop with it instead of running into the next test).
pub struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` clients against `base` (nginx's public address); each
    /// stops by itself after `max_requests` or `max_time`. Each client keeps
    /// its connection open across requests (as far as the server lets it).
    pub fn start(base: String, clients: usize, max_requests: usize, max_time: Duration) -> Load {
        Load::start_with(base, clients, max_requests, max_time, Connections::KeepAlive)
    }

    /// [`Load::start`], with each request on the connections `connections` says.
    pub fn start_with(
        base: String,
        clients: usize,
        max_requests: usize,
        max_time: Duration,
        connections: Connections,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|c| {
                let stop = stop.clone();
                let samples = samples.clone();
                let base = base.clone();
                tokio::spawn(async move {
                    let idle = match connections {
                        Connections::KeepAlive => usize::MAX,
                        Connections::New => 0,
                    };
                    let http = reqwest::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(10))
                        .pool_idle_timeout(Duration::from_secs(30))
                        .pool_max_idle_per_host(idle)
                        .build()
                        .unwrap();
                    let start = Instant::now();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) && n < max_requests && start.elapsed() < max_time {
                        n += 1;
                        let sent = Instant::now();
                        let (version, error) = if n.is_multiple_of(2) {
                            get(&http, &base).await
                        } else {
                            echo(&http, &base, &format!("client {c} request {n}")).await
                        };
                        let sample = Sample {
                            client: c,
                            sent,
                            latency: sent.elapsed(),
                            version,
                            error,
                        };
                        samples.lock().unwrap().push(sample);
                    }
                })
            })
            .collect();
        Load { stop, samples, tasks }
    }

    /// How many requests sent at or after `after` have been answered.
    pub fn answered_after(&self, after: Instant) -> usize {
        self.samples.lock().unwrap().iter().filter(|s| s.sent >= after).count()
    }

    /// Waits until at least `n` requests sent at or after `after` have been
    /// answered (right or wrong): the load has covered that moment. Panics
    /// after `timeout`, or when the clients stopped before that.
    pub async fn wait_for_samples_after(&self, after: Instant, n: usize, timeout: Duration) {
        let start = Instant::now();
        loop {
            let got = self.answered_after(after);
            if got >= n {
                return;
            }
            if self.tasks.iter().all(|t| t.is_finished()) {
                panic!("the load stopped with {got} of {n} requests answered after the mark");
            }
            if start.elapsed() > timeout {
                panic!("only {got} of {n} requests answered within {timeout:?} after the mark");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the clients and returns every sample, in the order answered.
    pub async fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            t.await.expect("a load client panicked");
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The fewest requests a load must have sent for its "0 failed" to say
/// anything (a load that sent none fails none).
pub const MIN_REQUESTS: usize = 100;

/// Asserts that none of `samples` failed, and that there were at least
/// [`MIN_REQUESTS`]; `what` says around what.
pub fn assert_none_failed(samples: &[Sample], what: &str) {
    assert!(
        samples.len() >= MIN_REQUESTS,
        "only {} requests were sent {what} (at least {MIN_REQUESTS} wanted)",
        samples.len()
    );
    let failed: Vec<_> = samples.iter().filter_map(|s| s.error.as_ref()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed {what}, e.g. {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(5)]
    );
}

/// Across a pause from `paused_at` to `resumed_at`: asserts that nothing was
/// answered during it (past its first 200 ms, in which what was already
/// running finishes), and returns how long after the resume each request
/// that waited across it was answered.
pub fn held_across(samples: &[Sample], paused_at: Instant, resumed_at: Instant) -> Vec<Duration> {
    let answered = |s: &Sample| s.sent + s.latency;
    let during: Vec<_> = samples
        .iter()
        .filter(|s| answered(s) > paused_at + Duration::from_millis(200) && answered(s) < resumed_at)
        .collect();
    assert!(during.is_empty(), "answered during the pause: {during:?}");
    samples
        .iter()
        .filter(|s| s.sent < resumed_at && answered(s) >= resumed_at)
        .map(|s| answered(s) - resumed_at)
        .collect()
}

/// The samples whose request was in flight at some moment of `[from, to]`.
pub fn overlapping(samples: &[Sample], from: Instant, to: Instant) -> Vec<&Sample> {
    samples
        .iter()
        .filter(|s| s.sent <= to && s.sent + s.latency >= from)
        .collect()
}

async fn get(http: &reqwest::Client, base: &str) -> (Option<String>, Option<String>) {
    let response = match http
        .get(format!("{base}/"))
        .header("accept", "application/json")
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return (None, Some(format!("GET /: {e}"))),
    };
    if !response.status().is_success() {
        return (None, Some(format!("GET / answered {}", response.status())));
    }
    match response.json::<serde_json::Value>().await {
        Ok(v) => match v["version"].as_str() {
            Some(version) => (Some(version.to_string()), None),
            None => (None, Some(format!("GET / answered without a version: {v}"))),
        },
        Err(e) => (None, Some(format!("GET / body: {e}"))),
    }
}

async fn echo(http: &reqwest::Client, base: &str, body: &str) -> (Option<String>, Option<String>) {
    let response = match http.post(format!("{base}/echo")).body(body.to_string()).send().await {
        Ok(r) => r,
        Err(e) => return (None, Some(format!("POST /echo: {e}"))),
    };
    if !response.status().is_success() {
        return (None, Some(format!("POST /echo answered {}", response.status())));
    }
    let version = response
        .headers()
        .get("x-selfup-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match response.text().await {
        Ok(text) if text == body => match version {
            Some(v) => (Some(v), None),
            None => (None, Some("POST /echo answered without a version header".into())),
        },
        Ok(text) => (None, Some(format!("POST /echo returned {text:?} for {body:?}"))),
        Err(e) => (None, Some(format!("POST /echo body: {e}"))),
    }
}

/// A keep-alive HTTP server on a free loopback port that answers every
/// request `200 {}`, counting requests and open connections.
async fn counting_server() -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (requests, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (r, o) = (requests.clone(), open.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (requests, open) = (r.clone(), o.clone());
            open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                'conn: loop {
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        match stream.read_line(&mut line).await {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(_) => {}
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if stream.read_exact(&mut body).await.is_err() {
                        break;
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}";
                    if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        break;
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (port, requests, open)
}

/// The clients of a `Load` dropped without `finish` (a test that panics)
/// stop sending and close their connections.
pub async fn a_dropped_load_stops_its_clients_and_closes_their_connections(_suite: Arc<crate::harness::Suite>) {
    let (port, requests, open) = counting_server().await;
    let load = Load::start(
        format!("http://127.0.0.1:{port}"),
        4,
        usize::MAX,
        Duration::from_secs(120),
    );
    let mark = Instant::now();
    load.wait_for_samples_after(mark, 50, Duration::from_secs(10)).await;
    assert_eq!(open.load(Ordering::SeqCst), 4, "one connection per client");
    drop(load);
    crate::harness::eventually("the clients' connections to close", Duration::from_secs(5), || async {
        (open.load(Ordering::SeqCst) == 0).then_some(())
    })
    .await;
    // Closed connections could be reopened by a client still running: none is.
    let after_close = requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        requests.load(Ordering::SeqCst),
        after_close,
        "requests went on after the drop"
    );
    assert_eq!(open.load(Ordering::SeqCst), 0);
}
