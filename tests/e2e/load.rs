//! A bounded load through nginx: GET `/` and POST `/echo`, every answer
//! checked, for the tests and for the benchmark.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One request and what came of it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub sent: Instant,
    pub latency: Duration,
    /// The version that answered, if the answer was right.
    pub version: Option<String>,
    /// Why the request counts as failed: an error, a non-200, or an echo
    /// that did not return the body sent.
    pub error: Option<String>,
}

/// Clients sending requests back to back until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// Starts `clients` clients against `base` (nginx's public address); each
    /// stops by itself after `max_requests` or `max_time`.
    pub fn start(base: String, clients: usize, max_requests: usize, max_time: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|c| {
                let stop = stop.clone();
                let base = base.clone();
                tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(10))
                        .pool_idle_timeout(Duration::from_secs(30))
                        .build()
                        .unwrap();
                    let start = Instant::now();
                    let mut samples = Vec::new();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) && n < max_requests && start.elapsed() < max_time {
                        n += 1;
                        let sent = Instant::now();
                        let (version, error) = if n.is_multiple_of(2) {
                            get(&http, &base).await
                        } else {
                            echo(&http, &base, &format!("client {c} request {n}")).await
                        };
                        samples.push(Sample {
                            sent,
                            latency: sent.elapsed(),
                            version,
                            error,
                        });
                    }
                    samples
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the clients and returns every sample, in no particular order.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("a load client panicked"));
        }
        all
    }
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
