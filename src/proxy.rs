//! The nginx in front of the live instance. nginx never reloads for a
//! handover: its upstream is the live socket (`live_socket`), whose path the
//! live instance holds, and connect(2) resolves that path for every new
//! upstream connection. What is left to know about nginx is whether it runs,
//! which `/health` reports.

use std::sync::Arc;

use crate::docker::{DockerError, Engine};

/// Why nginx is not serving.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("nginx container {container} is not running")]
    NotRunning { container: String },
    #[error("nginx: {0}")]
    Docker(#[from] DockerError),
}

/// The nginx container.
#[derive(Debug, Clone)]
pub struct Nginx {
    engine: Arc<Engine>,
    container: String,
}

impl Nginx {
    pub fn new(engine: Arc<Engine>, container: String) -> Nginx {
        Nginx { engine, container }
    }

    pub fn container(&self) -> &str {
        &self.container
    }

    /// `Ok(())` when the nginx container runs; why not otherwise.
    pub async fn check_running(&self) -> Result<(), ProxyError> {
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
}
