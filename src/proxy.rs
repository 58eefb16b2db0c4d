//! The nginx in front of the live instance: its upstream include, the config
//! test, the reload and the wait for the old workers.
//!
//! The include lives in a directory that both selfup and nginx bind-mount: a
//! single-file mount pins the inode and never sees the atomic rename.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::atomic::write_atomically;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep};

use crate::docker::{DockerError, Engine};

/// What went wrong switching nginx.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("nginx container {container} is not running")]
    NotRunning { container: String },
    #[error("writing the upstream include {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("nginx rejected the new upstream (nginx -t exited {exit_code}): {output}")]
    ConfigTest { exit_code: i64, output: String },
    #[error("nginx did not serve version {version} on port {port} within {waited:?}: last seen {last_seen}")]
    NotConfirmed {
        version: String,
        port: u16,
        waited: Duration,
        last_seen: String,
    },
    #[error("nginx: {0}")]
    Docker(#[from] DockerError),
}

/// The nginx container and the include it reads.
#[derive(Debug, Clone)]
pub struct Nginx {
    engine: Arc<Engine>,
    container: String,
    include: PathBuf,
    url: String,
    http: reqwest::Client,
}

/// The upstream servers: the live instance first, the other port as backup so
/// that a crash of the live instance fails over without anyone rewriting anything.
pub fn render_upstream(primary: SocketAddr, backup: SocketAddr) -> String {
    format!(
        "# Written by selfup on every handover; the live instance is the primary.\n\
         server {primary} max_fails=1 fail_timeout=2s;\n\
         server {backup} backup;\n"
    )
}

/// The primary server of an include written by [`render_upstream`].
pub fn primary_of(include: &str) -> Option<SocketAddr> {
    include
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("server ") && !l.contains(" backup"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|a| a.trim_end_matches(';').parse().ok())
}

impl Nginx {
    pub fn new(engine: Arc<Engine>, container: String, include: PathBuf, url: String) -> Nginx {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .expect("a reqwest client with static settings builds");
        Nginx {
            engine,
            container,
            include,
            url,
            http,
        }
    }

    pub fn container(&self) -> &str {
        &self.container
    }

    /// The primary server nginx is told to use now, from the include on disk.
    pub fn current_primary(&self) -> Option<SocketAddr> {
        std::fs::read_to_string(&self.include)
            .ok()
            .as_deref()
            .and_then(primary_of)
    }

    async fn ensure_running(&self) -> Result<(), ProxyError> {
        let inspect = self
            .engine
            .inspect_container(&self.container)
            .await
            .map_err(|e| match e {
                DockerError::NoSuchContainer(_) => ProxyError::NotRunning {
                    container: self.container.clone(),
                },
                other => other.into(),
            })?;
        match inspect.state.and_then(|s| s.running) {
            Some(true) => Ok(()),
            _ => Err(ProxyError::NotRunning {
                container: self.container.clone(),
            }),
        }
    }

    /// `Ok(())` when the nginx container runs; why not otherwise.
    pub async fn check_running(&self) -> Result<(), ProxyError> {
        self.ensure_running().await
    }

    /// Points nginx at `primary`, with `backup` behind it. A running nginx is
    /// switched ([`Nginx::switch_to`]) and the workers from before its reload
    /// are returned; a stopped (or absent) one gets the include only, which
    /// it reads when it starts: a stopped proxy does not block a handover.
    pub async fn point_at(&self, primary: SocketAddr, backup: SocketAddr) -> Result<Option<OldWorkers>, ProxyError> {
        match self.switch_to(primary, backup).await {
            Ok(old) => Ok(Some(old)),
            Err(ProxyError::NotRunning { container }) => {
                write_atomically(&self.include, &render_upstream(primary, backup)).map_err(|source| {
                    ProxyError::Write {
                        path: self.include.clone(),
                        source,
                    }
                })?;
                tracing::warn!(%container, %primary, "nginx is not running: it reads the include when it starts");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The pids of nginx's worker processes now.
    async fn workers(&self) -> Result<Vec<String>, ProxyError> {
        let processes = self.engine.processes(&self.container).await?;
        Ok(processes
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("worker process"))
            .map(|(pid, _)| pid)
            .collect())
    }

    /// Points nginx at `primary` with `backup` behind it: writes the include
    /// atomically, has nginx test the whole config (a SIGHUP "succeeds" even
    /// when the config is broken), and only then reloads. A failed test puts
    /// the previous include back. Returns the workers from before the reload:
    /// they may still be proxying to the old primary.
    #[tracing::instrument(skip(self), fields(container = %self.container))]
    pub async fn switch_to(&self, primary: SocketAddr, backup: SocketAddr) -> Result<OldWorkers, ProxyError> {
        self.ensure_running().await?;
        let old = self.workers().await?;
        let previous = std::fs::read_to_string(&self.include).ok();
        let write = |text: &str| {
            write_atomically(&self.include, text).map_err(|source| ProxyError::Write {
                path: self.include.clone(),
                source,
            })
        };
        write(&render_upstream(primary, backup))?;
        let test = self.engine.exec(&self.container, &["nginx", "-t", "-q"]).await;
        let failure = match test {
            Ok(out) if out.exit_code == 0 => None,
            Ok(out) => Some(ProxyError::ConfigTest {
                exit_code: out.exit_code,
                output: out.output.trim().to_string(),
            }),
            Err(e) => Some(e.into()),
        };
        if let Some(err) = failure {
            if let Some(text) = previous {
                write(&text)?;
            }
            return Err(err);
        }
        self.engine.signal(&self.container, "HUP").await?;
        tracing::info!(%primary, %backup, "nginx reloaded");
        Ok(OldWorkers(old))
    }

    /// Polls nginx's public address until the expected version on the expected
    /// port answers there.
    #[tracing::instrument(skip(self))]
    pub async fn confirm_serving(&self, version: &str, port: u16, deadline: Duration) -> Result<(), ProxyError> {
        let start = Instant::now();
        let mut last_seen: String;
        loop {
            match self
                .http
                .get(format!("{}/", self.url))
                .header("accept", "application/json")
                .send()
                .await
            {
                Ok(r) => match r.json::<serde_json::Value>().await {
                    Ok(v) if v["version"] == version && v["port"] == port => return Ok(()),
                    Ok(v) => last_seen = format!("version {} on port {}", v["version"], v["port"]),
                    Err(e) => last_seen = e.to_string(),
                },
                Err(e) => last_seen = e.to_string(),
            }
            if start.elapsed() >= deadline {
                return Err(ProxyError::NotConfirmed {
                    version: version.to_string(),
                    port,
                    waited: start.elapsed(),
                    last_seen,
                });
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every worker from before the reload has exited. Their
    /// title says "is shutting down" only once the master has told them, and
    /// until then they still accept requests for the old primary, so they
    /// are followed by pid. Returns how many were left at the deadline.
    #[tracing::instrument(skip(self))]
    pub async fn wait_old_workers(&self, old: &OldWorkers, deadline: Duration) -> Result<usize, ProxyError> {
        let start = Instant::now();
        loop {
            let now = self.workers().await?;
            let left = old.0.iter().filter(|pid| now.contains(pid)).count();
            if left == 0 {
                return Ok(0);
            }
            if start.elapsed() >= deadline {
                tracing::warn!(left, "old nginx workers still busy at the deadline");
                return Ok(left);
            }
            sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The pids of the nginx workers that ran before a reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OldWorkers(pub Vec<String>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rendered_include_names_the_primary_and_the_backup() {
        let text = render_upstream("127.0.0.1:5801".parse().unwrap(), "127.0.0.1:5800".parse().unwrap());
        assert!(text.contains("server 127.0.0.1:5801 max_fails=1 fail_timeout=2s;\n"));
        assert!(text.contains("server 127.0.0.1:5800 backup;\n"));
        assert_eq!(primary_of(&text), Some("127.0.0.1:5801".parse().unwrap()));
    }
}
