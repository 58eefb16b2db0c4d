//! Companion mode: selfup recreates *another* container from a new image on
//! request, with the settings its operator gave it, and answers only once it
//! knows whether the new container came up. In the order an update runs:
//!
//! 1. [`auth`]: the request carries the API key (checked by the route).
//! 2. [`admission`]: the image must come from an allowed registry, the
//!    container must exist, run and carry `selfup.enable=true`; one update per
//!    container at a time.
//! 3. [`crate::registry::credentials`]: the registry's credentials from a
//!    `config.json`, for the tag list and the pull.
//! 4. The image: the tag, the pull and the decision, by
//!    [`crate::recreate::resolve`].
//! 5. The clone ([`crate::recreate::clone`]) and its [`placement`]: beside
//!    the old container, or after stopping it.
//! 6. The [`swap`], and its rollback if the new container does not come up.
//! 7. [`crate::recreate::journal`]: with a data directory, the one-swap-per-container lock and
//!    the swap's journal are files there, shared by every instance: a
//!    self-upgrade waits for running swaps, and an instance that starts
//!    resolves a swap left half-done ([`Companion::recover`]).
//! 8. [`blue_green`]: a container labelled `selfup.port` is handed over like
//!    selfup itself: its successor runs beside it, is checked at its own
//!    address, and takes the traffic of the app's socket before the elder
//!    stops; with `update_bake_secs`, [`app_bake`] keeps the elder warm out
//!    of rotation that long and switches back to it if the successor fails.

pub mod admission;
pub mod app_bake;
pub mod auth;
pub mod blue_green;
pub mod placement;
pub mod swap;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use serde::Serialize;
use tokio::time::{Instant, sleep};

use crate::config::Settings;
use crate::docker::{DockerError, Engine};
pub use crate::events::UpdateStep as Step;
use crate::events::{Attempts, Event, EventLog, UpdateEnd};
use crate::image_ref::{ImageRef, ImageRefError};
use crate::notify::Notifier;
use crate::recreate::bake::BakeEnd;
use crate::recreate::clone::{self, COMPOSE_IMAGE, Overrides, clone_body};
use crate::recreate::journal::{self, Phase, Resolution, Seen, SwapRecord, Swaps};
use crate::recreate::resolve::{self, Go, ResolveError};
use crate::recreate::watch;
use crate::registry::Registry;
use crate::registry::credentials::{self, CredentialsError, Helpers, RegistryAuth};
use crate::state::Shared;
use crate::state::{BakeAsk, BakeOutcome, BakeVerdict};
use crate::version::{self, Requirement, RequirementError};
use admission::Slot;
use app_bake::AppBake;
use auth::ApiKey;
use blue_green::{AppFronts, AppHandover, AppSpec};
use placement::Placement;
use swap::{NewContainer, Swap, SwapError, SwapFailure};

/// Why an update did not happen, or did not stick. Each variant says what to do.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    BadImage(#[from] ImageRefError),
    #[error(transparent)]
    BadRequirement(#[from] RequirementError),
    #[error("invalid container name {0:?}: expected a name or id (letters, digits, _ . -)")]
    BadContainerName(String),
    #[error("images from {registry} are not accepted; allowed registries: {}", allowed.join(", "))]
    RegistryNotAllowed { registry: String, allowed: Vec<String> },
    #[error(
        "container {container} is not labelled {}=true, so it may not be updated",
        admission::ENABLE_LABEL
    )]
    NotEnabled { container: String },
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error("container {container} is {state}, not running; start it first")]
    NotRunning { container: String, state: String },
    #[error("an update of container {container} is already running; try again when it is done")]
    Busy { container: String },
    #[error("a self-upgrade of this service is running; try again when it is done")]
    UpgradeRunning,
    #[error("the swap lock in the data directory: {0}")]
    Lock(std::io::Error),
    #[error("container {container} is this companion itself; it upgrades itself through /upgrade")]
    OwnContainer { container: String },
    #[error("container {container} runs {image:?}, which is not a repository:tag reference: {reason}")]
    NotATag {
        container: String,
        image: String,
        reason: String,
    },
    #[error(
        "container {container} runs with --rm and {reason}: stopping it first would remove it, leaving nothing to roll back to"
    )]
    AutoRemove { container: String, reason: String },
    /// A blue-green app whose successor could not run beside it.
    #[error(
        "container {container} is handed over blue-green ({}), but its successor cannot run beside it: {reason}; nothing was stopped",
        blue_green::PORT_LABEL
    )]
    NotBeside { container: String, reason: String },
    /// The blue-green labels do not say how to reach the app.
    #[error("container {container} cannot be handed over blue-green: {reason}")]
    BadAppLabels { container: String, reason: String },
    /// The way to the image: the registry, the pull, the decision.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("credentials for {registry}: {source}")]
    Credentials { registry: String, source: CredentialsError },
    #[error("{context}: {source}")]
    Docker { context: String, source: DockerError },
    /// The new container did not come up; `restored` says whether the old one runs again.
    #[error("{}", failed_message(container, image, reason, restored))]
    Failed {
        container: String,
        image: String,
        reason: Box<SwapError>,
        log: String,
        restored: Result<(), String>,
    },
}

fn failed_message(container: &str, image: &str, reason: &SwapError, restored: &Result<(), String>) -> String {
    match restored {
        Ok(()) => format!(
            "updating container {container} to {image} failed: {reason}; the old container runs again under its name"
        ),
        Err(e) => format!(
            "updating container {container} to {image} failed: {reason}; restoring the old container FAILED: {e}"
        ),
    }
}

impl UpdateError {
    fn docker(context: impl Into<String>) -> impl FnOnce(DockerError) -> UpdateError {
        let context = context.into();
        move |source| UpdateError::Docker { context, source }
    }

    /// Whether the Docker daemon itself did not answer.
    pub fn docker_unreachable(&self) -> bool {
        match self {
            UpdateError::Docker { source, .. } => source.is_unreachable(),
            UpdateError::Resolve(e) => e.docker_unreachable(),
            _ => false,
        }
    }
}

/// What a finished update reports.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum UpdateOutcome {
    /// The container runs the new image.
    Updated {
        /// autodok's answer, for clients that show it.
        message: String,
        container: String,
        old_image: String,
        old_image_id: String,
        new_image: String,
        new_image_id: String,
        old_container: String,
        new_container: String,
        #[serde(flatten)]
        placement: Placement,
        /// Set when the new container runs but the old one could not be removed.
        #[serde(skip_serializing_if = "Option::is_none")]
        warning: Option<String>,
        /// For a blue-green app: the switch of its socket and the drain.
        #[serde(skip_serializing_if = "Option::is_none")]
        handover: Option<Box<AppHandover>>,
        duration_ms: u128,
    },
    /// The container already runs that image (or that version): nothing was done.
    Unchanged {
        message: String,
        container: String,
        image: String,
        image_id: String,
    },
}

/// The companion: everything an update needs, passed in.
#[derive(Debug)]
pub struct Companion {
    settings: Arc<Settings>,
    engine: Arc<Engine>,
    registry: Registry,
    key: ApiKey,
    helpers: Helpers,
    /// This instance's own container id: it is never a target.
    self_id: Option<String>,
    /// Ids and names of the containers being updated by this instance.
    running: Mutex<HashSet<String>>,
    /// The swaps of every instance that shares the data directory, if there is one.
    swaps: Option<Arc<Swaps>>,
    /// The sockets of the blue-green apps, unless `app_socket_dir` is empty.
    fronts: Option<Arc<AppFronts>>,
    /// For the successors' health paths: no proxy, no pooling.
    http: reqwest::Client,
    /// The blue-green apps baking now, by name: an operator's promote or
    /// rollback reaches the bake through it.
    bakes: Mutex<std::collections::HashMap<String, Arc<BakeAsk>>>,
    /// The event log every step goes to, and the metrics every finished update counts in.
    shared: Arc<Shared>,
    /// Where finished updates are reported (`notify_urls`), if anywhere.
    notifier: Option<Arc<Notifier>>,
}

/// Where one update's steps go: the event log, under the container as the
/// update was asked for, so that every event of it names the same one.
#[derive(Debug)]
pub struct Progress<'a> {
    log: &'a EventLog,
    container: &'a str,
}

impl<'a> Progress<'a> {
    pub fn new(log: &'a EventLog, container: &'a str) -> Self {
        Progress { log, container }
    }

    /// The update is at `step`.
    pub fn step(&self, step: Step) {
        tracing::debug!(container = self.container, %step, "update");
        self.log.emit(Event::UpdateStep {
            container: self.container.to_string(),
            step: step.into(),
        });
    }

    /// The reporter of the new container's looks.
    pub fn attempts(&self) -> Attempts<'a> {
        Attempts::for_container(self.log, self.container)
    }
}

/// How a finished update is counted and named in its `update_finished`
/// event, with its error: `updated`, `unchanged`, `rolled_back` (the new
/// container failed and the old one runs again) or `failed`.
pub fn outcome_of(result: &Result<UpdateOutcome, UpdateError>) -> (UpdateEnd, Option<String>) {
    match result {
        Ok(UpdateOutcome::Updated { .. }) => (UpdateEnd::Updated, None),
        Ok(UpdateOutcome::Unchanged { .. }) => (UpdateEnd::Unchanged, None),
        Err(e @ UpdateError::Failed { restored: Ok(()), .. }) => (UpdateEnd::RolledBack, Some(e.to_string())),
        Err(e) => (UpdateEnd::Failed, Some(e.to_string())),
    }
}

/// What the registry offers a watched container, beside what it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The container's name.
    pub container: String,
    /// The version it runs: its tag's, else its image's label, if either says.
    pub running: Option<semver::Version>,
    /// The tag the requirement picks.
    pub image: String,
    /// That tag's version: its name's for a semver requirement (as
    /// `/update/<container>/<req>` reads it), its image's label for `latest`.
    pub version: Option<semver::Version>,
    /// The registry's digest of the tag.
    pub digest: String,
    /// When its image was built, seconds since the epoch, if its config says.
    pub created: Option<u64>,
}

/// The container's name without Docker's leading slash.
fn name_of(container: &ContainerInspectResponse) -> String {
    container
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string()
}

fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// What a companion stands on beside the Engine and the registry: where
/// its events, metrics and notifications go.
#[derive(Debug)]
pub struct Reporting {
    pub shared: Arc<Shared>,
    pub notifier: Option<Arc<Notifier>>,
}

impl Companion {
    pub fn new(
        settings: Arc<Settings>,
        engine: Arc<Engine>,
        registry: Registry,
        key: ApiKey,
        self_id: Option<String>,
        swaps: Option<Arc<Swaps>>,
        reporting: Reporting,
    ) -> Companion {
        Companion {
            engine,
            registry,
            key,
            helpers: Helpers::from_env(),
            self_id,
            running: Mutex::default(),
            swaps,
            fronts: (!settings.app_socket_dir.as_os_str().is_empty())
                .then(|| Arc::new(AppFronts::new(settings.app_socket_dir.clone(), settings.port))),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .pool_max_idle_per_host(0)
                .no_proxy()
                .build()
                .expect("a reqwest client with static settings builds"),
            bakes: Mutex::default(),
            shared: reporting.shared,
            notifier: reporting.notifier,
            settings,
        }
    }

    /// The sockets of the blue-green apps, for the orchestrator to publish
    /// when this instance becomes the live one.
    pub fn fronts(&self) -> Option<Arc<AppFronts>> {
        self.fronts.clone()
    }

    /// Binds a socket for every running blue-green app (labelled
    /// `selfup.enable=true` and `selfup.port`), joined to its address now:
    /// before this instance takes the traffic, so that the apps' sockets
    /// move with it.
    pub async fn front_apps(&self) {
        if self.fronts.is_none() {
            return;
        }
        let wanted = [(admission::ENABLE_LABEL.to_string(), "true".to_string())];
        let listed = match self.engine.list_by_labels(&wanted).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for blue-green apps");
                return;
            }
        };
        for summary in listed {
            let labels = summary.labels.unwrap_or_default();
            if !labels.contains_key(blue_green::PORT_LABEL)
                || summary.state != Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            {
                continue;
            }
            let Some(id) = summary.id else { continue };
            let Ok(app) = self.engine.inspect_container(&id).await else {
                continue;
            };
            let name = name_of(&app);
            if name.contains("-selfup-old-") {
                continue;
            }
            match self.front_of(&app) {
                Ok(_) => {}
                Err(e) => tracing::warn!(app = %name, error = %e, "not fronting a blue-green app"),
            }
        }
    }

    /// Follows the Engine's container starts, until this instance is asked
    /// to stop: an app labelled for blue-green that starts after this
    /// instance gets its socket at once, and one recreated outside selfup
    /// (`docker compose up` after a change) has its socket joined to its
    /// new address. A lost stream is opened again, and the apps that started
    /// meanwhile are fronted then.
    pub async fn follow_apps(&self) {
        if self.fronts.is_none() {
            return;
        }
        let mut shutdown = self.shared.shutdown.subscribe();
        let labels = vec![
            format!("{}=true", admission::ENABLE_LABEL),
            blue_green::PORT_LABEL.to_string(),
        ];
        loop {
            if *shutdown.borrow_and_update() {
                return;
            }
            match self.engine.container_starts(labels.clone()).await {
                Ok(starts) => {
                    // Apps that started while no stream was open.
                    self.front_apps().await;
                    tokio::pin!(starts);
                    loop {
                        tokio::select! {
                            _ = shutdown.changed() => return,
                            next = futures_util::StreamExt::next(&mut starts) => match next {
                                Some(Ok(id)) => self.front_started(&id).await,
                                Some(Err(e)) => {
                                    tracing::warn!(error = %e, "the Engine's events stopped; following them again");
                                    break;
                                }
                                None => break,
                            },
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the Engine's events; apps started later get their socket at their first update")
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Fronts an app container that just started, unless it is one of an
    /// update's (the update switches the socket itself).
    async fn front_started(&self, id: &str) {
        if self.self_id.as_deref() == Some(id) {
            return;
        }
        let Ok(app) = self.engine.inspect_container(id).await else {
            return;
        };
        let name = name_of(&app);
        if name.contains("-selfup-old-") || self.not_busy(&name).is_err() {
            return;
        }
        match self.front_of(&app) {
            Ok((front, spec)) => {
                let Some(addr) = blue_green::address(&app, spec.port) else {
                    return;
                };
                if front.addr() != addr {
                    tracing::info!(app = %name, from = %front.addr(), to = %addr, "the app was started anew: its socket follows it");
                    front.switch(addr, None);
                }
            }
            Err(e) => tracing::warn!(app = %name, error = %e, "not fronting a blue-green app"),
        }
    }

    /// The app's front, bound now if need be, and what its labels say.
    fn front_of(&self, app: &ContainerInspectResponse) -> Result<(Arc<blue_green::AppFront>, AppSpec), UpdateError> {
        let name = name_of(app);
        let bad = |reason: String| UpdateError::BadAppLabels {
            container: name.clone(),
            reason,
        };
        let fronts = self
            .fronts
            .as_ref()
            .ok_or_else(|| bad("app_socket_dir is empty".into()))?;
        let spec = blue_green::spec(app)
            .map_err(&bad)?
            .ok_or_else(|| bad("no port label".into()))?;
        let addr = blue_green::address(app, spec.port)
            .ok_or_else(|| bad("it has no address of its own on a network (host or no networking)".into()))?;
        let front = fronts.ensure(&name, addr).map_err(|e| {
            bad(format!(
                "binding its socket in {}: {e}",
                self.settings.app_socket_dir.display()
            ))
        })?;
        Ok((front, spec))
    }

    /// The settings this companion runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The Engine this companion updates containers on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Where finished updates are reported, if anywhere.
    pub fn notifier(&self) -> Option<&Notifier> {
        self.notifier.as_deref()
    }

    /// Whether an `Authorization` header value carries the API key.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        self.key.admits(authorization)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `POST /update`: recreates `container` from `image`. Every step goes
    /// to the event log; the end is counted in the metrics and reported to
    /// `notify_urls`.
    #[tracing::instrument(skip(self))]
    pub async fn update(&self, container: &str, image: &str) -> Result<UpdateOutcome, UpdateError> {
        let progress = Progress::new(&self.shared.events, container);
        self.reported(&progress, image, self.run_update(&progress, container, image))
            .await
    }

    /// `POST /update/<container>/<req>`: recreates `container` from the
    /// highest tag of its own repository that matches `requirement`;
    /// reported as [`Companion::update`] is.
    #[tracing::instrument(skip(self, requirement), fields(requirement = %requirement))]
    pub async fn update_to(&self, container: &str, requirement: Requirement) -> Result<UpdateOutcome, UpdateError> {
        let progress = Progress::new(&self.shared.events, container);
        let asked = requirement.to_string();
        self.reported(&progress, &asked, self.run_update_to(&progress, container, requirement))
            .await
    }

    /// Emits the start and the end of an update around `work`, counts it,
    /// and reports it to `notify_urls`.
    async fn reported(
        &self,
        progress: &Progress<'_>,
        requested: &str,
        work: impl std::future::Future<Output = Result<UpdateOutcome, UpdateError>>,
    ) -> Result<UpdateOutcome, UpdateError> {
        let started = std::time::Instant::now();
        progress.log.emit(Event::UpdateStarted {
            container: progress.container.to_string(),
            requested: requested.to_string(),
        });
        let result = work.await;
        let (outcome, error) = outcome_of(&result);
        self.shared.metrics.update_finished(outcome);
        progress.log.emit(Event::UpdateFinished {
            container: progress.container.to_string(),
            outcome: outcome.into(),
            error,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        self.notify(progress.container, requested, started, &result);
        result
    }

    /// Reports a finished update to `notify_urls`, in the background.
    fn notify(
        &self,
        container: &str,
        asked: &str,
        started: std::time::Instant,
        result: &Result<UpdateOutcome, UpdateError>,
    ) {
        use crate::notify::{Event, Outcome};
        let Some(notifier) = &self.notifier else { return };
        let elapsed = started.elapsed().as_millis();
        let event = match result {
            Ok(UpdateOutcome::Updated {
                old_image,
                new_image,
                duration_ms,
                ..
            }) => Event::new(
                "update",
                Outcome::Updated,
                old_image,
                Some(new_image),
                *duration_ms,
                None,
            ),
            Ok(UpdateOutcome::Unchanged { image, .. }) => {
                Event::new("update", Outcome::Unchanged, image, Some(image), elapsed, None)
            }
            Err(e) => Event::new(
                "update",
                Outcome::Failed,
                "?",
                Some(asked),
                elapsed,
                Some(&e.to_string()),
            ),
        };
        notifier.send(event.for_container(container));
    }

    async fn run_update(
        &self,
        progress: &Progress<'_>,
        container: &str,
        image: &str,
    ) -> Result<UpdateOutcome, UpdateError> {
        progress.step(Step::Resolving);
        let image = ImageRef::parse(image)?;
        self.check_registry(image.registry_host())?;
        self.not_busy(container)?;
        let old = self.target(container).await?;
        let mut slot = self.take_slot(&old).await?;
        let old = self.still_running(&old).await?;
        let auth = self.credentials(image.registry_host()).await?;
        self.replace(progress, old, image, auth, &mut slot).await
    }

    /// The repository:tag reference `old` runs, which a requirement is resolved in.
    fn current_image(old: &ContainerInspectResponse) -> Result<(String, ImageRef), UpdateError> {
        let name = name_of(old);
        let reference = old.config.as_ref().and_then(|c| c.image.clone()).unwrap_or_default();
        let current = ImageRef::parse(&reference).map_err(|e| UpdateError::NotATag {
            container: name.clone(),
            image: reference.clone(),
            reason: e.reason.to_string(),
        })?;
        if reference.starts_with("sha256:") {
            return Err(UpdateError::NotATag {
                container: name,
                image: reference,
                reason: "it is an image id".into(),
            });
        }
        Ok((reference, current))
    }

    async fn run_update_to(
        &self,
        progress: &Progress<'_>,
        container: &str,
        requirement: Requirement,
    ) -> Result<UpdateOutcome, UpdateError> {
        progress.step(Step::Resolving);
        self.not_busy(container)?;
        let old = self.target(container).await?;
        let name = name_of(&old);
        let (reference, current) = Self::current_image(&old)?;
        let host = current.registry_host().to_string();
        self.check_registry(&host)?;
        let mut slot = self.take_slot(&old).await?;
        let old = self.still_running(&old).await?;
        let auth = self.credentials(&host).await?;
        let (image, version) = resolve::pick(&self.registry, &current, &requirement, auth.as_ref()).await?;
        if let (Some(version), Some(running)) = (version, self.running_version(&old, &current).await)
            && resolve::decide(&running, &version, &requirement)? == Go::AlreadyThere
        {
            return Ok(UpdateOutcome::Unchanged {
                message: format!("container '{name}' already runs version {running}"),
                container: name,
                image: reference,
                image_id: old.image.clone().unwrap_or_default(),
            });
        }
        self.replace(progress, old, image, auth, &mut slot).await
    }

    /// What the registry offers `container` under `requirement`, and what it
    /// runs, by the admission rules of an update (labelled, running, not this
    /// companion, from an allowed registry); nothing is pulled or locked.
    pub async fn offer(&self, container: &str, requirement: &Requirement) -> Result<Offer, UpdateError> {
        let old = self.target(container).await?;
        let name = name_of(&old);
        let (_, current) = Self::current_image(&old)?;
        let host = current.registry_host().to_string();
        self.check_registry(&host)?;
        let auth = self.credentials(&host).await?;
        let (image, tag_version, remote) =
            resolve::pick_remote(&self.registry, &current, requirement, auth.as_ref()).await?;
        let version = tag_version.or_else(|| remote.version.as_deref().and_then(|v| semver::Version::parse(v).ok()));
        Ok(Offer {
            running: self.running_version(&old, &current).await,
            container: name,
            image: image.to_string(),
            version,
            digest: remote.digest,
            created: remote.created,
        })
    }

    async fn credentials(&self, host: &str) -> Result<Option<RegistryAuth>, UpdateError> {
        let found = credentials::for_registry(&self.settings.docker_config, host, &self.helpers)
            .await
            .map_err(|source| UpdateError::Credentials {
                registry: host.to_string(),
                source,
            })?;
        if let Some(auth) = &found {
            tracing::info!(registry = host, origin = %auth.origin, "using registry credentials");
        }
        Ok(found)
    }

    /// The version the container runs: its tag's, else its image's label.
    async fn running_version(&self, old: &ContainerInspectResponse, current: &ImageRef) -> Option<semver::Version> {
        if let Some(v) = version::tag_version(&current.tag) {
            return Some(v);
        }
        let image = self.engine.inspect_image(old.image.as_deref()?).await.ok()?;
        semver::Version::parse(version::version_label(&image)?).ok()
    }

    /// Pulls `image` and swaps the new container in for `old`.
    async fn replace(
        &self,
        progress: &Progress<'_>,
        old: ContainerInspectResponse,
        image: ImageRef,
        auth: Option<RegistryAuth>,
        slot: &mut Slot<'_>,
    ) -> Result<UpdateOutcome, UpdateError> {
        let started = Instant::now();
        let name = name_of(&old);
        let old_id = old.id.clone().unwrap_or_default();
        let old_image = old.config.as_ref().and_then(|c| c.image.clone()).unwrap_or_default();
        let old_image_id = old.image.clone().unwrap_or_default();

        let blue_green = match blue_green::spec(&old) {
            Ok(Some(spec)) if self.fronts.is_some() => {
                if let Placement::StopFirst(reason) = placement::placement(&old) {
                    return Err(UpdateError::NotBeside {
                        container: name,
                        reason,
                    });
                }
                Some(spec)
            }
            Ok(_) => None,
            Err(reason) => {
                return Err(UpdateError::BadAppLabels {
                    container: name,
                    reason,
                });
            }
        };
        let front = match blue_green {
            Some(_) => Some(self.front_of(&old)?.0),
            None => None,
        };

        tracing::info!(container = %name, image = %image, "pulling");
        progress.step(Step::Pulling);
        let credentials = auth.as_ref().map(RegistryAuth::docker);
        let pulled = resolve::pull_reporting(
            &self.engine,
            &image,
            credentials,
            progress.log,
            Some(progress.container),
        )
        .await?;
        let new_image_id = pulled.id.unwrap_or_default();
        if new_image_id == old_image_id {
            return Ok(UpdateOutcome::Unchanged {
                message: format!("container '{name}' already runs image '{image}'"),
                container: name,
                image: image.to_string(),
                image_id: new_image_id,
            });
        }

        let old_config = self
            .engine
            .inspect_image(&old_image_id)
            .await
            .ok()
            .and_then(|i| i.config);
        let old_labels = old.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        let overrides = Overrides {
            image: image.to_string(),
            // Compose compares this label with the image id behind the tag.
            labels: if old_labels.contains_key(COMPOSE_IMAGE) {
                vec![(COMPOSE_IMAGE.into(), new_image_id.clone())]
            } else {
                vec![]
            },
            ..Default::default()
        };
        let mut body = clone_body(&old, old_config.as_ref(), &overrides);
        clone::complete_clone(&mut body, &old);
        let later_networks = clone::split_networks(&mut body);
        let restart_policy = clone::defer_restart_policy(&mut body);
        let new = NewContainer {
            body,
            later_networks,
            restart_policy,
        };
        let placement = placement::placement(&old);
        if let (Placement::StopFirst(reason), true) = (&placement, placement::auto_removes(&old)) {
            return Err(UpdateError::AutoRemove {
                container: name,
                reason: reason.clone(),
            });
        }
        let aside = placement::aside_name(&name, &old_id);
        tracing::info!(container = %name, ?placement, "replacing");

        let mut swap = Swap {
            engine: &self.engine,
            name: &name,
            old_id: &old_id,
            aside: &aside,
            image: image.to_string(),
            deadline: self.settings.update_deadline(),
            // A health path is the check: no settle time on top of it.
            settle: match &blue_green {
                Some(AppSpec { health: Some(_), .. }) => Duration::ZERO,
                _ => self.settings.update_settle(),
            },
            // A blue-green app bakes after the switch, below.
            bake: match blue_green {
                Some(_) => Duration::ZERO,
                None => Duration::from_secs(self.settings.update_bake_secs),
            },
            stopped_old: false,
            progress: Some(progress),
            journal: slot.claim.as_ref().map(|claim| {
                (
                    claim,
                    SwapRecord {
                        container: name.clone(),
                        old_id: old_id.clone(),
                        aside: aside.clone(),
                        image: image.to_string(),
                        phase: Phase::Planned,
                        new_id: None,
                        stop_first: matches!(placement, Placement::StopFirst(_)),
                        restart_policy: new.restart_policy.clone(),
                        owner: self.self_id.clone(),
                    },
                )
            }),
        };
        let checked = Instant::now();
        let run = match swap.run(&old, new, &placement).await {
            Ok(id) => match &blue_green {
                Some(spec) => self.ready(&id, spec).await.map(|addr| (id, Some(addr))),
                None => Ok((id, None)),
            },
            Err(e) => Err(e),
        };
        let (new_id, new_addr) = match run {
            Ok(done) => done,
            Err(SwapFailure { reason, new_id }) => {
                let log = match &new_id {
                    Some(id) => watch::log_tail(&self.engine, id).await,
                    None => String::new(),
                };
                progress.step(Step::RollingBack);
                let restored = swap.roll_back(new_id.as_deref()).await;
                match &restored {
                    Ok(()) => tracing::warn!(container = %name, %reason, "update failed; the old container runs again"),
                    Err(e) => {
                        tracing::error!(container = %name, %reason, error = %e, "update failed and the rollback too");
                        // Half-done: the next instance to start tries again.
                        if let Some(claim) = slot.claim.as_mut() {
                            claim.keep();
                        }
                    }
                }
                return Err(UpdateError::Failed {
                    container: name,
                    image: image.to_string(),
                    reason: Box::new(reason),
                    log,
                    restored,
                });
            }
        };

        let handover = match (front, new_addr, &blue_green) {
            (Some(front), Some(to), Some(spec)) => {
                let health_ms = checked.elapsed().as_millis();
                let elder = front.addr();
                let bake = Duration::from_secs(self.settings.update_bake_secs);
                progress.step(Step::Switching);
                // During a bake the elder stands by: a connection the
                // successor refuses is joined to it.
                let from = front.switch(to, (!bake.is_zero()).then_some(elder));
                let switched = Instant::now();
                tracing::info!(container = %name, %to, "the app's socket reaches the successor");
                progress.step(Step::Draining);
                let left_open = blue_green::drain(&from, self.settings.update_deadline()).await;
                let drain_ms = switched.elapsed().as_millis();
                let baked = match bake.is_zero() {
                    true => None,
                    false => {
                        let image = image.to_string();
                        let baking = Baking {
                            progress,
                            name: &name,
                            image: &image,
                            front: &front,
                            new_id: &new_id,
                            to,
                            elder,
                            spec,
                            window: bake,
                        };
                        match self.bake_app(baking).await {
                            Ok(report) => Some(report),
                            Err(reason) => {
                                let log = watch::log_tail(&self.engine, &new_id).await;
                                progress.step(Step::RollingBack);
                                let restored = swap.roll_back(Some(new_id.as_str())).await;
                                if let Err(e) = &restored {
                                    tracing::error!(container = %name, %reason, error = %e, "rolled back during the bake, and removing the new container failed");
                                    if let Some(claim) = slot.claim.as_mut() {
                                        claim.keep();
                                    }
                                }
                                return Err(UpdateError::Failed {
                                    container: name,
                                    image: image.to_string(),
                                    reason: Box::new(SwapError::Baked(reason)),
                                    log,
                                    restored,
                                });
                            }
                        }
                    }
                };
                Some(Box::new(AppHandover {
                    socket: front.path(),
                    from: elder.to_string(),
                    to: to.to_string(),
                    health_ms,
                    drain_ms,
                    left_open,
                    bake: baked,
                }))
            }
            _ => None,
        };
        progress.step(Step::Retiring {
            stopped: swap.stopped_old,
        });
        let warning = swap.retire(&old).await.err();
        match &warning {
            Some(w) => tracing::warn!(container = %name, warning = %w, "the new container runs; the old one stays"),
            None => tracing::info!(container = %name, image = %image, new = %short(&new_id), "updated"),
        }
        Ok(UpdateOutcome::Updated {
            message: format!("Container '{name}' restarted with new image '{image}'"),
            container: name,
            old_image,
            old_image_id,
            new_image: image.to_string(),
            new_image_id,
            old_container: short(&old_id),
            new_container: short(&new_id),
            placement,
            warning,
            handover,
            duration_ms: started.elapsed().as_millis(),
        })
    }

    /// Bakes a blue-green app's successor after the switch, the elder warm
    /// out of rotation: the report of a clean end, or why the traffic went
    /// back to the elder (the successor is then the caller's to remove).
    async fn bake_app(&self, b: Baking<'_>) -> Result<blue_green::AppBakeReport, String> {
        let container = b.progress.container.to_string();
        b.progress.step(Step::Baking);
        self.shared.events.emit(Event::BakeStarted {
            to: b.image.to_string(),
            secs: b.window.as_secs(),
            container: Some(container.clone()),
        });
        tracing::info!(
            container = b.name,
            secs = b.window.as_secs(),
            "baking the new container; the old one stands by"
        );
        let ask = Arc::new(BakeAsk::default());
        self.bakes().insert(b.name.to_string(), ask.clone());
        let started = Instant::now();
        let answers = b.front.answers();
        let end = AppBake {
            engine: &self.engine,
            http: &self.http,
            id: b.new_id,
            addr: b.to,
            health: b.spec.health.as_deref(),
            answers: answers.clone(),
            window: b.window,
            max_ratio: self.settings.bake_max_5xx_ratio,
            ask: &ask,
        }
        .run()
        .await;
        self.bakes().remove(b.name);
        let (total, server_errors) = answers.counts();
        let (outcome, reason, result) = match end {
            BakeEnd::Promoted { reason, .. } => {
                // The elder stands by no longer.
                b.front.switch(b.to, None);
                tracing::info!(container = b.name, %reason, "the bake passed");
                let report = blue_green::AppBakeReport {
                    outcome: BakeOutcome::Promoted,
                    reason: reason.clone(),
                    baked_ms: started.elapsed().as_millis(),
                    answers: total,
                    server_errors,
                };
                (BakeOutcome::Promoted, reason, Ok(report))
            }
            BakeEnd::RolledBack { reason, answering, .. } => {
                let breach = std::time::Instant::now();
                let successor = b.front.switch(b.elder, None);
                let reclaim_us = breach.elapsed().as_micros();
                tracing::warn!(container = b.name, %reason, reclaim_us, "bake breach: the app's traffic is back on the old container");
                // What the successor still relays ends before it is removed;
                // one that does not answer gets a moment only.
                let bound = match answering {
                    true => self.settings.update_deadline(),
                    false => UNANSWERING_DRAIN,
                };
                blue_green::drain(&successor, bound).await;
                let error = format!("rolled back during the bake: {reason}");
                (BakeOutcome::RolledBack, reason, Err(error))
            }
        };
        self.shared.events.emit(Event::BakeEnded {
            outcome,
            reason,
            container: Some(container),
        });
        result
    }

    fn bakes(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<BakeAsk>>> {
        self.bakes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An operator's word on the bake of app `container`: `promote` ends
    /// it with the successor kept, else the traffic goes back to the elder.
    /// False when no bake of it runs here.
    pub fn ask_bake(&self, container: &str, promote: bool) -> bool {
        let Some(ask) = self.bakes().get(container).cloned() else {
            return false;
        };
        match promote {
            true => ask.ask(BakeVerdict::Promote),
            false => ask.ask(BakeVerdict::Rollback),
        }
        true
    }

    /// The successor's address once it answers there: a failure is the
    /// swap's, so the elder comes back.
    async fn ready(&self, id: &str, spec: &AppSpec) -> Result<std::net::SocketAddr, SwapFailure> {
        let fail = |reason: String| SwapFailure {
            reason: SwapError::NotReady(reason),
            new_id: Some(id.to_string()),
        };
        let new = self
            .engine
            .inspect_container(id)
            .await
            .map_err(|e| fail(format!("inspecting it: {e}")))?;
        let addr =
            blue_green::address(&new, spec.port).ok_or_else(|| fail("it has no address on its network".into()))?;
        blue_green::until_ready(
            &self.http,
            addr,
            spec.health.as_deref(),
            self.settings.update_deadline(),
        )
        .await
        .map_err(fail)?;
        Ok(addr)
    }
}

/// How long a successor that no longer answers may keep the connections
/// it had when a bake went back to the elder, before it is removed.
const UNANSWERING_DRAIN: Duration = Duration::from_secs(2);

/// What an app bake works on.
struct Baking<'a> {
    progress: &'a Progress<'a>,
    name: &'a str,
    image: &'a str,
    front: &'a blue_green::AppFront,
    new_id: &'a str,
    to: std::net::SocketAddr,
    elder: std::net::SocketAddr,
    spec: &'a AppSpec,
    window: Duration,
}

/// What a container of a half-done swap is now; an error if Docker cannot say.
async fn seen(engine: &Engine, id: &str) -> Result<(Seen, Option<ContainerInspectResponse>), String> {
    match engine.inspect_container(id).await {
        Ok(c) => {
            let running = c.state.as_ref().and_then(|s| s.running) == Some(true);
            Ok((if running { Seen::Running } else { Seen::Stopped }, Some(c)))
        }
        Err(DockerError::NoSuchContainer(_)) => Ok((Seen::Absent, None)),
        Err(e) => Err(format!("inspecting {id}: {e}")),
    }
}

impl Companion {
    /// How long an instance that starts waits for a self-upgrade to release
    /// the swaps before it resolves the half-done ones.
    const RECOVER_WAIT: Duration = Duration::from_secs(120);
    /// How often it looks again meanwhile.
    const RECOVER_POLL: Duration = Duration::from_millis(250);

    /// Resolves the swaps that an instance left half-done when it died (see
    /// [`journal::resolve`] for the rule). Runs once this instance has
    /// reconciled, so an elder it took over from is gone and holds nothing.
    pub async fn recover(&self) {
        let Some(swaps) = &self.swaps else { return };
        let started = Instant::now();
        let _entry = loop {
            match swaps.enter() {
                Ok(Some(entry)) => break entry,
                Ok(None) if started.elapsed() < Self::RECOVER_WAIT => sleep(Self::RECOVER_POLL).await,
                Ok(None) => {
                    tracing::warn!("a self-upgrade still runs: half-done swaps are left to the next instance");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for half-done swaps");
                    return;
                }
            }
        };
        for (record, mut claim) in swaps.orphans().await {
            tracing::warn!(container = %record.container, phase = ?record.phase, owner = ?record.owner, "found a half-done swap");
            match self.resolve_orphan(&record).await {
                Ok(done) => tracing::info!(
                    container = %record.container,
                    done,
                    ms = started.elapsed().as_millis() as u64,
                    "half-done swap resolved"
                ),
                Err(e) => {
                    tracing::error!(container = %record.container, error = %e, "a half-done swap is still half-done; the next start tries again");
                    claim.keep();
                }
            }
        }
    }

    /// Finishes or rolls back one half-done swap; says which.
    async fn resolve_orphan(&self, record: &SwapRecord) -> Result<&'static str, String> {
        let (old_seen, old) = seen(&self.engine, &record.old_id).await?;
        // The new container: the one the journal names, else whatever holds
        // the name now that is not the old one (created before it was noted).
        let new_id = match &record.new_id {
            Some(id) => Some(id.clone()),
            None => match self.engine.inspect_container(&record.container).await {
                Ok(c) => c.id.filter(|id| *id != record.old_id),
                Err(DockerError::NoSuchContainer(_)) => None,
                Err(e) => return Err(format!("inspecting {}: {e}", record.container)),
            },
        };
        let new_seen = match &new_id {
            Some(id) => seen(&self.engine, id).await?.0,
            None => Seen::Absent,
        };
        let swap = Swap {
            engine: &self.engine,
            name: &record.container,
            old_id: &record.old_id,
            aside: &record.aside,
            image: record.image.clone(),
            deadline: self.settings.update_deadline(),
            settle: self.settings.update_settle(),
            bake: Duration::ZERO,
            stopped_old: record.stop_first,
            progress: None,
            journal: None,
        };
        match journal::resolve(record.phase, old_seen, new_seen) {
            Resolution::Forget => Err("neither the old nor the new container exists".into()),
            Resolution::RollBack => swap.roll_back(new_id.as_deref()).await.map(|()| "rolled back"),
            Resolution::Finish => {
                let new_id = new_id.unwrap_or_default();
                match swap.finish(record, &new_id, new_seen, old.as_ref()).await {
                    Ok(()) => Ok("finished"),
                    Err(reason) => {
                        tracing::warn!(container = %record.container, %reason, "the new container did not come up: rolling back");
                        match old {
                            Some(_) => swap.roll_back(Some(&new_id)).await.map(|()| "rolled back"),
                            None => Err(reason),
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_says_whether_the_old_container_runs_again() {
        let failed = |restored| UpdateError::Failed {
            container: "app".into(),
            image: "r:5000/app:2".into(),
            reason: Box::new(SwapError::NotUp(crate::recreate::watch::WaitError::Died(
                "it exited with code 3".into(),
            ))),
            log: String::new(),
            restored,
        };
        let restored = failed(Ok(()));
        let text = restored.to_string();
        assert!(
            text.contains("exited with code 3") && text.contains("old container runs again"),
            "{text}"
        );
        let broken = failed(Err("renaming: conflict".into()));
        assert!(
            broken
                .to_string()
                .contains("restoring the old container FAILED: renaming: conflict")
        );
    }

    #[test]
    fn the_outcome_names_both_images_and_the_placement() {
        let outcome = UpdateOutcome::Updated {
            message: "m".into(),
            container: "app".into(),
            old_image: "r/app:1".into(),
            old_image_id: "sha256:1".into(),
            new_image: "r/app:2".into(),
            new_image_id: "sha256:2".into(),
            old_container: "a".into(),
            new_container: "b".into(),
            placement: Placement::StopFirst("it publishes host port 80".into()),
            warning: None,
            handover: None,
            duration_ms: 5,
        };
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["status"], "updated");
        assert_eq!(json["old_image"], "r/app:1");
        assert_eq!(json["new_image"], "r/app:2");
        assert_eq!(json["placement"], "stop_first");
        assert_eq!(json["reason"], "it publishes host port 80");
        assert!(json.get("warning").is_none());
    }
}
