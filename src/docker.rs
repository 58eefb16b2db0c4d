//! The one wrapper around bollard. Each method is one Engine API call, and
//! each failure becomes a [`DockerError`] that names the object it concerned.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, ContainerUpdateBody, EndpointSettings, ExecConfig,
    ImageInspect, ImageSummary, NetworkConnectRequest, NetworkDisconnectRequest, RestartPolicy,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions, ListImagesOptions,
    LogsOptions, RemoveContainerOptions, RemoveImageOptions, RenameContainerOptions, StopContainerOptions, TopOptions,
};
use futures_util::StreamExt;
use tokio::sync::OnceCell;

use crate::image_ref::ImageRef;

/// How long one Engine call may take. A graceful stop waits up to the stop
/// timeout, so this must exceed the longest stop we ask for.
const CALL_TIMEOUT_SECS: u64 = 300;

/// bollard's timeout covers a call's response head only; a streamed body
/// (a pull's progress, an exec's output, a log) gets a deadline of its own,
/// so that nothing holds the upgrade lock forever.
pub const PULL_DEADLINE: Duration = Duration::from_secs(600);
/// The longest an exec may run, output included (`nginx -t` takes
/// milliseconds).
pub const EXEC_DEADLINE: Duration = Duration::from_secs(15);
/// The longest a read of a log tail may take.
pub const LOGS_DEADLINE: Duration = Duration::from_secs(10);

/// What went wrong talking to the Docker Engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The daemon did not answer at all.
    #[error("the Docker daemon at {socket} is unreachable: {reason}")]
    Unreachable { socket: String, reason: String },
    /// The container does not exist (any more).
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    /// The image does not exist locally, or the registry has no such tag.
    #[error("no such image: {0}")]
    NoSuchImage(String),
    /// A streamed answer did not end within its deadline.
    #[error("{op} {target}: not finished within {waited:?}")]
    DeadlinePassed {
        op: &'static str,
        target: String,
        waited: Duration,
    },
    /// The daemon answered with an error.
    #[error("{op} {target}: {message}")]
    Call {
        op: &'static str,
        target: String,
        message: String,
    },
}

impl DockerError {
    fn from_bollard(socket: &str, op: &'static str, target: &str, err: BollardError) -> Self {
        match err {
            BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            } => match op {
                "pulling" | "inspecting image" | "removing image" => {
                    DockerError::NoSuchImage(format!("{target} ({message})"))
                }
                _ => DockerError::NoSuchContainer(target.to_string()),
            },
            BollardError::DockerResponseServerError { message, .. } => DockerError::Call {
                op,
                target: target.to_string(),
                message,
            },
            BollardError::SocketNotFoundError(_)
            | BollardError::IOError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::RequestTimeoutError => DockerError::Unreachable {
                socket: socket.to_string(),
                reason: format!("{op} {target}: {err}"),
            },
            other => DockerError::Call {
                op,
                target: target.to_string(),
                message: other.to_string(),
            },
        }
    }

    /// Whether the daemon itself is the problem (as opposed to one object).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, DockerError::Unreachable { .. })
    }
}

/// A lazily connected Docker client. Connecting (and negotiating the API
/// version, since the daemon may be older than bollard's default) happens on
/// first use, so an instance starts and answers `/health` with 503 even when
/// the daemon is down.
#[derive(Debug)]
pub struct Engine {
    socket: PathBuf,
    client: OnceCell<Docker>,
}

/// The outcome of a command run inside a container.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub output: String,
}

impl Engine {
    pub fn new(socket: PathBuf) -> Engine {
        Engine {
            socket,
            client: OnceCell::new(),
        }
    }

    fn socket_name(&self) -> String {
        self.socket.display().to_string()
    }

    fn err(&self, op: &'static str, target: &str) -> impl FnOnce(BollardError) -> DockerError + '_ {
        let target = target.to_string();
        move |e| DockerError::from_bollard(&self.socket_name(), op, &target, e)
    }

    async fn client(&self) -> Result<&Docker, DockerError> {
        self.client
            .get_or_try_init(|| async {
                let path = self.socket.to_string_lossy().into_owned();
                let docker = Docker::connect_with_unix(&path, CALL_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                    .map_err(self.err("connecting to", &path))?;
                docker
                    .negotiate_version()
                    .await
                    .map_err(self.err("negotiating the API version with", &path))
            })
            .await
    }

    /// Checks that the daemon answers, within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), DockerError> {
        let unreachable = |reason: String| DockerError::Unreachable {
            socket: self.socket_name(),
            reason,
        };
        match tokio::time::timeout(timeout, async {
            let docker = self.client().await?;
            docker.ping().await.map_err(self.err("pinging", "the daemon"))
        })
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.is_unreachable() => Err(e),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!("no answer within {timeout:?}"))),
        }
    }

    pub async fn inspect_container(&self, id: &str) -> Result<ContainerInspectResponse, DockerError> {
        #[cfg(feature = "faults")]
        if let Some(message) = crate::faults::inspect_error(id) {
            return Err(DockerError::Call {
                op: "inspecting container",
                target: id.to_string(),
                message,
            });
        }
        let docker = self.client().await?;
        docker
            .inspect_container(id, None)
            .await
            .map_err(self.err("inspecting container", id))
    }

    /// Containers (running or not) that carry every one of `labels`.
    pub async fn list_by_labels(&self, labels: &[(String, String)]) -> Result<Vec<ContainerSummary>, DockerError> {
        let docker = self.client().await?;
        let label_filters = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), label_filters)])),
            ..Default::default()
        };
        docker
            .list_containers(Some(options))
            .await
            .map_err(self.err("listing containers labelled", &format!("{labels:?}")))
    }

    /// The running containers that carry the label `key`, whatever its value.
    pub async fn list_running_with_label(&self, key: &str) -> Result<Vec<ContainerSummary>, DockerError> {
        let docker = self.client().await?;
        let options = ListContainersOptions {
            all: false,
            filters: Some(HashMap::from([("label".to_string(), vec![key.to_string()])])),
            ..Default::default()
        };
        docker
            .list_containers(Some(options))
            .await
            .map_err(self.err("listing containers labelled", key))
    }

    /// The ids of the containers that start from now on and carry every one
    /// of `labels` (`key` or `key=value`), as the Engine reports their
    /// start; the stream ends when the Engine closes it.
    pub async fn container_starts(
        &self,
        labels: Vec<String>,
    ) -> Result<impl futures_util::Stream<Item = Result<String, DockerError>> + '_, DockerError> {
        let docker = self.client().await?;
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("event", vec!["start".to_string()]),
            ("label", labels),
        ]);
        let options = bollard::query_parameters::EventsOptionsBuilder::default()
            .filters(&filters)
            .build();
        Ok(docker.events(Some(options)).map(move |event| {
            event
                .map(|m| m.actor.and_then(|a| a.id).unwrap_or_default())
                .map_err(self.err("following the starts of", "containers"))
        }))
    }

    /// Pulls one tag of an image. The tag is always explicit: without one the
    /// Engine would pull every tag of the repository.
    pub async fn pull(&self, image: &ImageRef, credentials: Option<DockerCredentials>) -> Result<(), DockerError> {
        self.pull_observed(image, credentials, |_| {}).await
    }

    /// [`Engine::pull`], showing `observe` each message of the Engine's
    /// progress stream (per layer: status and bytes).
    pub async fn pull_observed(
        &self,
        image: &ImageRef,
        credentials: Option<DockerCredentials>,
        mut observe: impl FnMut(&bollard::models::CreateImageInfo),
    ) -> Result<(), DockerError> {
        let docker = self.client().await?;
        let options = CreateImageOptions {
            from_image: Some(image.repository()),
            tag: Some(image.tag.clone()),
            ..Default::default()
        };
        let target = image.to_string();
        let mut stream = docker.create_image(Some(options), None, credentials);
        within(PULL_DEADLINE, "pulling", &target, async {
            while let Some(item) = stream.next().await {
                let info = item.map_err(self.err("pulling", &target))?;
                observe(&info);
                if let Some(detail) = info.error_detail {
                    return Err(DockerError::Call {
                        op: "pulling",
                        target: target.clone(),
                        message: detail.message.unwrap_or_else(|| "unknown pull error".into()),
                    });
                }
            }
            Ok(())
        })
        .await
    }

    pub async fn inspect_image(&self, image: &str) -> Result<ImageInspect, DockerError> {
        let docker = self.client().await?;
        docker
            .inspect_image(image)
            .await
            .map_err(self.err("inspecting image", image))
    }

    /// The local images with a tag in `repository` (`registry/name`, no tag).
    pub async fn list_images(&self, repository: &str) -> Result<Vec<ImageSummary>, DockerError> {
        let docker = self.client().await?;
        let options = ListImagesOptions {
            filters: Some(HashMap::from([("reference".to_string(), vec![repository.to_string()])])),
            ..Default::default()
        };
        docker
            .list_images(Some(options))
            .await
            .map_err(self.err("listing images of", repository))
    }

    /// Removes an image, or one tag of it when it has others; never forced,
    /// so the Engine refuses an image a container uses.
    pub async fn remove_image(&self, image: &str) -> Result<(), DockerError> {
        let docker = self.client().await?;
        let options = RemoveImageOptions {
            force: false,
            noprune: false,
            ..Default::default()
        };
        docker
            .remove_image(image, Some(options), None)
            .await
            .map(|_| ())
            .map_err(self.err("removing image", image))
    }

    /// Creates a container and returns its id.
    pub async fn create_container(&self, name: &str, body: ContainerCreateBody) -> Result<String, DockerError> {
        let docker = self.client().await?;
        let options = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        let created = docker
            .create_container(Some(options), body)
            .await
            .map_err(self.err("creating container", name))?;
        Ok(created.id)
    }

    pub async fn start_container(&self, id: &str) -> Result<(), DockerError> {
        let docker = self.client().await?;
        docker
            .start_container(id, None)
            .await
            .map_err(self.err("starting container", id))
    }

    /// SIGTERM (or the image's stop signal), then SIGKILL after `timeout`.
    /// Never `kill_container` for this: without a signal it sends SIGKILL.
    pub async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), DockerError> {
        let docker = self.client().await?;
        let options = StopContainerOptions {
            t: Some(timeout.as_secs() as i32),
            signal: None,
        };
        match docker.stop_container(id, Some(options)).await {
            // 304: already stopped.
            Err(BollardError::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            other => other.map_err(self.err("stopping container", id)),
        }
    }

    pub async fn remove_container(&self, id: &str, force: bool) -> Result<(), DockerError> {
        let docker = self.client().await?;
        let options = RemoveContainerOptions {
            force,
            v: false,
            link: false,
        };
        docker
            .remove_container(id, Some(options))
            .await
            .map_err(self.err("removing container", id))
    }

    pub async fn rename_container(&self, id: &str, name: &str) -> Result<(), DockerError> {
        let docker = self.client().await?;
        let options = RenameContainerOptions { name: name.to_string() };
        docker
            .rename_container(id, options)
            .await
            .map_err(self.err("renaming container", id))
    }

    /// Connects a (created, not yet started) container to one more network.
    /// Engines before API 1.44 accept only one network at create time.
    pub async fn connect_network(
        &self,
        network: &str,
        container: &str,
        endpoint: EndpointSettings,
    ) -> Result<(), DockerError> {
        let docker = self.client().await?;
        let request = NetworkConnectRequest {
            container: container.to_string(),
            endpoint_config: Some(endpoint),
        };
        docker
            .connect_network(network, request)
            .await
            .map_err(self.err("connecting to network", &format!("{network} (container {container})")))
    }

    /// Disconnects a container from a network (gracefully: not forced).
    pub async fn disconnect_network(&self, network: &str, container: &str) -> Result<(), DockerError> {
        let docker = self.client().await?;
        let request = NetworkDisconnectRequest {
            container: container.to_string(),
            force: Some(false),
        };
        docker.disconnect_network(network, request).await.map_err(self.err(
            "disconnecting from network",
            &format!("{network} (container {container})"),
        ))
    }

    /// Sets a container's restart policy (running or not).
    pub async fn set_restart_policy(&self, id: &str, policy: RestartPolicy) -> Result<(), DockerError> {
        let docker = self.client().await?;
        let body = ContainerUpdateBody {
            restart_policy: Some(policy),
            ..Default::default()
        };
        docker
            .update_container(id, body)
            .await
            .map_err(self.err("setting the restart policy of", id))
    }

    /// Sends a signal, which must be named: bollard's default is SIGKILL.
    pub async fn signal(&self, id: &str, signal: &str) -> Result<(), DockerError> {
        let docker = self.client().await?;
        let options = KillContainerOptions {
            signal: signal.to_string(),
        };
        docker
            .kill_container(id, Some(options))
            .await
            .map_err(self.err("signalling container", id))
    }

    /// Runs a command in a running container and collects its output and exit code.
    pub async fn exec(&self, id: &str, cmd: &[&str]) -> Result<ExecOutput, DockerError> {
        let docker = self.client().await?;
        let target = format!("{id} ({})", cmd.join(" "));
        let config = ExecConfig {
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec = docker
            .create_exec(id, config)
            .await
            .map_err(self.err("creating exec in", &target))?;
        let mut output = String::new();
        within(EXEC_DEADLINE, "running exec in", &target, async {
            if let bollard::exec::StartExecResults::Attached { output: mut stream, .. } = docker
                .start_exec(&exec.id, None)
                .await
                .map_err(self.err("starting exec in", &target))?
            {
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(self.err("reading exec output of", &target))?;
                    output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                }
            }
            Ok(())
        })
        .await?;
        let inspect = docker
            .inspect_exec(&exec.id)
            .await
            .map_err(self.err("inspecting exec in", &target))?;
        Ok(ExecOutput {
            exit_code: inspect.exit_code.unwrap_or(-1),
            output,
        })
    }

    /// The processes running in a container: (pid, command line).
    pub async fn processes(&self, id: &str) -> Result<Vec<(String, String)>, DockerError> {
        let docker = self.client().await?;
        let options = TopOptions {
            ps_args: "-eo pid,args".into(),
        };
        let top = docker
            .top_processes(id, Some(options))
            .await
            .map_err(self.err("listing processes of", id))?;
        let titles = top.titles.unwrap_or_default();
        let pid = titles.iter().position(|t| t == "PID").unwrap_or(0);
        let cmd = titles
            .iter()
            .position(|t| t == "COMMAND" || t == "CMD")
            .unwrap_or(titles.len().saturating_sub(1));
        Ok(top
            .processes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|row| Some((row.get(pid)?.clone(), row.get(cmd)?.clone())))
            .collect())
    }

    /// The last `lines` lines a container wrote to stdout and stderr.
    pub async fn logs_tail(&self, id: &str, lines: usize) -> Result<String, DockerError> {
        let docker = self.client().await?;
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let mut stream = docker.logs(id, Some(options));
        let mut text = String::new();
        within(LOGS_DEADLINE, "reading logs of", id, async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(self.err("reading logs of", id))?;
                text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
            Ok(())
        })
        .await?;
        Ok(text)
    }

    /// A Swarm service: its spec, its version (which an update must name)
    /// and the state of its last update.
    pub async fn inspect_service(&self, service: &str) -> Result<bollard::models::Service, DockerError> {
        let docker = self.client().await?;
        docker
            .inspect_service(service, None)
            .await
            .map_err(self.err("inspecting service", service))
    }

    /// Replaces a Swarm service's spec (`rollback`: `Some("previous")` asks
    /// Swarm to go back to the spec before the last update instead);
    /// `version` is the service's version this spec was read at.
    /// `credentials` go to every node that pulls the image.
    pub async fn update_service(
        &self,
        service: &str,
        spec: bollard::models::ServiceSpec,
        version: i32,
        rollback: Option<&str>,
        credentials: Option<DockerCredentials>,
    ) -> Result<Vec<String>, DockerError> {
        let docker = self.client().await?;
        let options = bollard::query_parameters::UpdateServiceOptions {
            version,
            rollback: rollback.map(str::to_string),
            ..Default::default()
        };
        let answer = docker
            .update_service(service, spec, options, credentials)
            .await
            .map_err(self.err("updating service", service))?;
        Ok(answer.warnings.unwrap_or_default())
    }

    /// The tasks of a Swarm service, every desired state included.
    pub async fn service_tasks(&self, service: &str) -> Result<Vec<bollard::models::Task>, DockerError> {
        let docker = self.client().await?;
        let options = bollard::query_parameters::ListTasksOptions {
            filters: Some(HashMap::from([("service".to_string(), vec![service.to_string()])])),
        };
        docker
            .list_tasks(Some(options))
            .await
            .map_err(self.err("listing the tasks of service", service))
    }
}

/// Runs a streamed call within `waited`: bollard's own timeout covers only
/// the response head, not the stream behind it.
async fn within<T>(
    waited: Duration,
    op: &'static str,
    target: &str,
    work: impl std::future::Future<Output = Result<T, DockerError>>,
) -> Result<T, DockerError> {
    tokio::time::timeout(waited, work).await.unwrap_or_else(|_| {
        Err(DockerError::DeadlinePassed {
            op,
            target: target.to_string(),
            waited,
        })
    })
}
