//! The request path of a companion update, in the order it runs:
//! admission, the registry's credentials, the tag and the decision, the
//! pull; then one of two paths, decided once from the old container's one
//! inspect: *recreate* (the clone takes its place, beside it or after
//! stopping it) or *blue-green* (the successor takes the app's socket).
//! Each path ends by retiring the old container, or by rolling back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use tokio::time::Instant;

use super::Companion;
use super::admission::Slot;
use super::app_bake::Baking;
use super::blue_green::{self, AppFront, AppHandover, AppSpec};
use super::container::{SIGNING_KEY_LABEL, labels, name_of};
use super::outcome::{Offer, OldContainer, UpdateError, UpdateOutcome, outcome_of};
use super::placement::{self, Placement};
use super::progress::{Progress, Step};
use super::swap::{NewContainer, Swap, SwapError, SwapFailure};
use crate::events::Event;
use crate::image_ref::ImageRef;
use crate::recreate::clone::{self, COMPOSE_IMAGE, Overrides, clone_body};
use crate::recreate::journal::{Phase, SwapRecord};
use crate::recreate::resolve::{self, Go};
use crate::recreate::watch::{self, StopFailed};
use crate::registry::credentials::{self, RegistryAuth};
use crate::version::{self, Requirement};

impl Companion {
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
        self.not_paused(&name_of(&old))?;
        self.wait_retired(&name_of(&old)).await;
        self.check_lane(&old, &image)?;
        let mut slot = self.take_slot(&old).await?;
        let old = self.still_running(&old).await?;
        let auth = self.credentials(image.registry_host()).await?;
        // On the heap: the swap's state is large, and a future that holds
        // it inline can overflow an HTTP worker's stack where it is made.
        Box::pin(self.replace(progress, old, image, auth, &mut slot)).await
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
        self.not_paused(&name)?;
        self.wait_retired(&name).await;
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
        Box::pin(self.replace(progress, old, image, auth, &mut slot)).await
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

    /// Pulls `image` and swaps the new container in for `old`, by the path
    /// decided here, once.
    async fn replace(
        &self,
        progress: &Progress<'_>,
        old: ContainerInspectResponse,
        image: ImageRef,
        auth: Option<RegistryAuth>,
        slot: &mut Slot<'_>,
    ) -> Result<UpdateOutcome, UpdateError> {
        let started = Instant::now();
        let path = self.path(&old)?;
        let old = Old::of(old);
        let new_image_id = self.pull(progress, &old, &image, auth.as_ref()).await?;
        if new_image_id == old.image_id {
            return Ok(UpdateOutcome::Unchanged {
                message: format!("container '{}' already runs image '{image}'", old.name),
                container: old.name,
                image: image.to_string(),
                image_id: new_image_id,
            });
        }
        let new = self.new_container(&old, &image, &new_image_id).await;
        let job = Job {
            progress,
            aside: placement::aside_name(&old.name, &old.id),
            old,
            image,
            new_image_id,
            started,
        };
        match path {
            Path::Recreate(placement) => self.recreate(&job, new, placement, slot).await,
            Path::BlueGreen(spec, front) => self.hand_over(&job, new, &spec, &front, slot).await,
        }
    }

    /// The recreate path: the clone takes the old container's name, beside
    /// it or after stopping it, and the old one goes once the new one is up.
    async fn recreate(
        &self,
        job: &Job<'_>,
        new: NewContainer,
        placement: Placement,
        slot: &mut Slot<'_>,
    ) -> Result<UpdateOutcome, UpdateError> {
        if let (Placement::StopFirst(reason), true) = (&placement, placement::auto_removes(&job.old.inspect)) {
            return Err(UpdateError::AutoRemove {
                container: job.old.name.clone(),
                reason: reason.clone(),
            });
        }
        tracing::info!(container = %job.old.name, ?placement, "replacing");
        let bake = Duration::from_secs(self.settings.update_bake_secs);
        let mut swap = self.swap(job, &new, &placement, slot, self.settings.update_settle(), bake);
        let new_id = match swap.run(&job.old.inspect, new, &placement).await {
            Ok(id) => id,
            Err(failure) => {
                let error = self.roll_back(job, &swap, failure).await;
                return Err(slot.failed(error));
            }
        };
        self.retire(job, &swap, new_id, placement).await
    }

    /// The blue-green path: the successor starts beside the elder, answers
    /// at its own address, takes the app's socket, and (with
    /// `update_bake_secs`) bakes with the elder warm; then the elder goes.
    async fn hand_over(
        &self,
        job: &Job<'_>,
        new: NewContainer,
        spec: &AppSpec,
        front: &AppFront,
        slot: &mut Slot<'_>,
    ) -> Result<UpdateOutcome, UpdateError> {
        let placement = Placement::Beside;
        tracing::info!(container = %job.old.name, ?placement, "replacing");
        // A health path is the check: no settle time on top of it. The
        // bake comes after the switch, below.
        let settle = match spec.health {
            Some(_) => Duration::ZERO,
            None => self.settings.update_settle(),
        };
        let mut swap = self.swap(job, &new, &placement, slot, settle, Duration::ZERO);
        let checked = Instant::now();
        let run = match swap.run(&job.old.inspect, new, &placement).await {
            Ok(id) => self.ready(&id, spec).await.map(|addr| (id, addr)),
            Err(e) => Err(e),
        };
        let handover = match run {
            Ok((new_id, to)) => match self.switch(job, front, &new_id, to, spec, checked).await {
                Ok(handover) => Ok((new_id, handover)),
                Err(reason) => Err(SwapFailure {
                    reason: SwapError::Baked(reason),
                    new_id: Some(new_id),
                }),
            },
            Err(e) => Err(e),
        };
        match handover {
            Ok((new_id, handover)) => {
                let old_ids = (swap.old_id.to_string(), swap.aside.to_string());
                // The swap's borrow of the slot ends here: its holds go on
                // with the old container's stop.
                drop(swap);
                Ok(self.retire_later(job, old_ids, slot, new_id, Box::new(handover)))
            }
            Err(failure) => {
                let error = self.roll_back(job, &swap, failure).await;
                Err(slot.failed(error))
            }
        }
    }

    /// A blue-green app's successor has the socket and its elder no
    /// connection left: the answer goes now, and the elder's stop (SIGTERM,
    /// its stop timeout, removal) goes on in the background, reported as
    /// `update_step` events; a later update of the same container waits
    /// for it ([`Companion::wait_retired`]).
    fn retire_later(
        &self,
        job: &Job<'_>,
        (old_id, aside): (String, String),
        slot: &mut Slot<'_>,
        new_id: String,
        handover: Box<AppHandover>,
    ) -> UpdateOutcome {
        let (old, image, name) = (&job.old, &job.image, job.old.name.clone());
        job.progress.step(Step::Retiring { stopped: false });
        let (done, waiting) = tokio::sync::watch::channel(false);
        self.retiring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), waiting.clone());
        let engine = self.engine.clone();
        let retiring = self.retiring.clone();
        let shared = self.shared.clone();
        let timeout = placement::stop_timeout(&old.inspect);
        let container = job.progress.container.to_string();
        let holds = slot.take_holds();
        tokio::spawn(async move {
            let started = Instant::now();
            match watch::stop_and_remove(&engine, &old_id, timeout, StopFailed::Force).await {
                Ok(()) => tracing::info!(
                    container = %name,
                    old = %short(&old_id),
                    ms = started.elapsed().as_millis() as u64,
                    "the old container is stopped and removed"
                ),
                Err(e) => tracing::warn!(container = %name, error = %e, "the old container was left as {aside}"),
            }
            shared.events.emit(Event::UpdateStep {
                container,
                step: Step::Retired.into(),
            });
            drop(holds);
            let mut retiring = retiring.lock().unwrap_or_else(|p| p.into_inner());
            if retiring.get(&name).is_some_and(|r| r.same_channel(&waiting)) {
                retiring.remove(&name);
            }
            let _ = done.send(true);
        });
        tracing::info!(container = %job.old.name, image = %image, new = %short(&new_id), "updated; the old container stops in the background");
        let stopping = OldContainer::Stopping {
            id: short(&old.id),
            stopping: true,
        };
        updated(job, &new_id, stopping, Placement::Beside, None, Some(handover))
    }

    /// Refuses an update of an app whose traffic is paused: its held
    /// connections wait for the container that is there now.
    fn not_paused(&self, name: &str) -> Result<(), UpdateError> {
        match self.app_front(name).is_some_and(|f| f.pause().current().is_some()) {
            true => Err(UpdateError::Paused {
                container: name.to_string(),
            }),
            false => Ok(()),
        }
    }

    /// Waits while the old container of this container's last update is
    /// still being stopped (a blue-green app's answer goes before that).
    async fn wait_retired(&self, name: &str) {
        let waiting = self
            .retiring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        if let Some(mut waiting) = waiting {
            tracing::info!(container = name, "waiting for the last update's old container to stop");
            let _ = tokio::time::timeout(RETIRE_WAIT, waiting.wait_for(|done| *done)).await;
        }
    }

    /// The way an update goes, from the old container's labels and
    /// placement: a blue-green app must be able to run beside its successor.
    fn path(&self, old: &ContainerInspectResponse) -> Result<Path, UpdateError> {
        let placement = placement::placement(old);
        match blue_green::spec(old) {
            Ok(Some(spec)) if self.fronts.is_some() => match placement {
                Placement::StopFirst(reason) => Err(UpdateError::NotBeside {
                    container: name_of(old),
                    reason,
                }),
                Placement::Beside => {
                    let front = self.front(old, &spec)?;
                    Ok(Path::BlueGreen(spec, front))
                }
            },
            Ok(_) => Ok(Path::Recreate(placement)),
            Err(reason) => Err(UpdateError::BadAppLabels {
                container: name_of(old),
                reason,
            }),
        }
    }

    /// Pulls `image`, reporting its progress; the id of the image pulled.
    async fn pull(
        &self,
        progress: &Progress<'_>,
        old: &Old,
        image: &ImageRef,
        auth: Option<&RegistryAuth>,
    ) -> Result<String, UpdateError> {
        tracing::info!(container = %old.name, image = %image, "pulling");
        progress.step(Step::Pulling);
        let credentials = auth.map(RegistryAuth::docker);
        let pulled =
            resolve::pull_reporting(&self.engine, image, credentials, progress.log, Some(progress.container)).await?;
        // What was pulled runs only if it is signed: with the key the
        // container's label names, else the operator's.
        let key = match labels(&old.inspect).get(SIGNING_KEY_LABEL) {
            Some(name) => Some(
                self.settings
                    .named_key(name)
                    .map_err(|reason| UpdateError::BadKeyLabel {
                        container: old.name.clone(),
                        reason,
                    })?,
            ),
            None => None,
        };
        let digest = resolve::digest_in(&image.repository(), &pulled);
        let policy = self.settings.signature_policy();
        resolve::check_signed(&self.registry, &policy, key.as_deref(), image, digest.as_deref(), auth).await?;
        Ok(pulled.id.unwrap_or_default())
    }

    /// The old container's clone on `image`, with its restart policy and
    /// later networks held back for the swap.
    async fn new_container(&self, old: &Old, image: &ImageRef, new_image_id: &str) -> NewContainer {
        let old_config = self
            .engine
            .inspect_image(&old.image_id)
            .await
            .ok()
            .and_then(|i| i.config);
        let overrides = Overrides {
            image: image.to_string(),
            // Compose compares this label with the image id behind the tag.
            labels: if labels(&old.inspect).contains_key(COMPOSE_IMAGE) {
                vec![(COMPOSE_IMAGE.into(), new_image_id.to_string())]
            } else {
                vec![]
            },
            ..Default::default()
        };
        let mut body = clone_body(&old.inspect, old_config.as_ref(), &overrides);
        clone::complete_clone(&mut body, &old.inspect);
        let later_networks = clone::split_networks(&mut body);
        let restart_policy = clone::defer_restart_policy(&mut body);
        NewContainer {
            body,
            later_networks,
            restart_policy,
        }
    }

    /// The swap of `job`'s old container for `new` at `placement`,
    /// journalled under the slot's claim when there is a data directory.
    fn swap<'a>(
        &'a self,
        job: &'a Job<'a>,
        new: &NewContainer,
        placement: &Placement,
        slot: &'a Slot<'_>,
        settle: Duration,
        bake: Duration,
    ) -> Swap<'a> {
        let old = &job.old;
        Swap {
            engine: &self.engine,
            name: &old.name,
            old_id: &old.id,
            aside: &job.aside,
            image: job.image.to_string(),
            deadline: self.settings.update_deadline(),
            settle,
            bake,
            stopped_old: false,
            progress: Some(job.progress),
            journal: slot.claim.as_ref().map(|claim| {
                (
                    claim,
                    SwapRecord {
                        container: old.name.clone(),
                        old_id: old.id.clone(),
                        aside: job.aside.clone(),
                        image: job.image.to_string(),
                        phase: Phase::Planned,
                        new_id: None,
                        stop_first: matches!(placement, Placement::StopFirst(_)),
                        restart_policy: new.restart_policy.clone(),
                        owner: self.self_id.clone(),
                    },
                )
            }),
        }
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

    /// Switches the app's socket to the successor at `to`, drains the
    /// elder, and bakes the successor if `update_bake_secs` asks: the
    /// handover's report, or why the bake sent the traffic back.
    async fn switch(
        &self,
        job: &Job<'_>,
        front: &AppFront,
        new_id: &str,
        to: SocketAddr,
        spec: &AppSpec,
        checked: Instant,
    ) -> Result<AppHandover, String> {
        let (progress, name) = (job.progress, &job.old.name);
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
                let image = job.image.to_string();
                let baking = Baking {
                    progress,
                    name,
                    image: &image,
                    front,
                    new_id,
                    to,
                    elder,
                    spec,
                    window: bake,
                };
                Some(self.bake_app(baking).await?)
            }
        };
        Ok(AppHandover {
            socket: front.path(),
            from: elder.to_string(),
            to: to.to_string(),
            health_ms,
            drain_ms,
            left_open,
            bake: baked,
        })
    }

    /// The new container did not come up, or did not stick through its
    /// bake: it is removed and the old one runs again under its name.
    async fn roll_back(&self, job: &Job<'_>, swap: &Swap<'_>, failure: SwapFailure) -> UpdateError {
        let SwapFailure { reason, new_id } = failure;
        let name = &job.old.name;
        let log = match &new_id {
            Some(id) => watch::log_tail(&self.engine, id).await,
            None => String::new(),
        };
        job.progress.step(Step::RollingBack);
        let restored = swap.roll_back(new_id.as_deref()).await;
        match (&restored, &reason) {
            (Ok(()), SwapError::Baked(_)) => {}
            (Ok(()), reason) => {
                tracing::warn!(container = %name, %reason, "update failed; the old container runs again")
            }
            (Err(e), SwapError::Baked(reason)) => {
                tracing::error!(container = %name, %reason, error = %e, "rolled back during the bake, and removing the new container failed")
            }
            (Err(e), reason) => {
                tracing::error!(container = %name, %reason, error = %e, "update failed and the rollback too")
            }
        }
        UpdateError::Failed {
            container: name.clone(),
            image: job.image.to_string(),
            reason: Box::new(reason),
            log,
            restored,
        }
    }

    /// The new container is up: the old one is stopped (unless it was
    /// already) and removed, and the outcome names both.
    async fn retire(
        &self,
        job: &Job<'_>,
        swap: &Swap<'_>,
        new_id: String,
        placement: Placement,
    ) -> Result<UpdateOutcome, UpdateError> {
        let (old, image, name) = (&job.old, &job.image, &job.old.name);
        job.progress.step(Step::Retiring {
            stopped: swap.stopped_old,
        });
        let warning = swap.retire(&old.inspect).await.err();
        match &warning {
            Some(w) => tracing::warn!(container = %name, warning = %w, "the new container runs; the old one stays"),
            None => tracing::info!(container = %name, image = %image, new = %short(&new_id), "updated"),
        }
        let removed = OldContainer::Removed(short(&old.id));
        Ok(updated(job, &new_id, removed, placement, warning, None))
    }
}

/// The outcome of an update that ran: the new container `new_id` serves.
fn updated(
    job: &Job<'_>,
    new_id: &str,
    old_container: OldContainer,
    placement: Placement,
    warning: Option<String>,
    handover: Option<Box<AppHandover>>,
) -> UpdateOutcome {
    let (old, image, name) = (&job.old, &job.image, &job.old.name);
    UpdateOutcome::Updated {
        message: format!("Container '{name}' restarted with new image '{image}'"),
        container: name.clone(),
        old_image: old.image.clone(),
        old_image_id: old.image_id.clone(),
        new_image: image.to_string(),
        new_image_id: job.new_image_id.clone(),
        old_container,
        new_container: short(new_id),
        placement,
        warning,
        handover,
        duration_ms: job.started.elapsed().as_millis(),
    }
}

/// How long a later update of a blue-green app waits for the last one's
/// old container to stop: a stop timeout of up to a minute, and removal.
const RETIRE_WAIT: Duration = Duration::from_secs(90);

/// The way an update goes, decided once from the old container.
enum Path {
    /// Recreated in its place: beside it, or after stopping it.
    Recreate(Placement),
    /// Handed over blue-green through the app's socket, its front.
    BlueGreen(AppSpec, Arc<AppFront>),
}

/// The old container as inspected under the slot, and what an outcome
/// names of it.
struct Old {
    inspect: ContainerInspectResponse,
    name: String,
    id: String,
    /// The reference it runs, and the image behind it.
    image: String,
    image_id: String,
}

impl Old {
    fn of(inspect: ContainerInspectResponse) -> Old {
        Old {
            name: name_of(&inspect),
            id: inspect.id.clone().unwrap_or_default(),
            image: inspect
                .config
                .as_ref()
                .and_then(|c| c.image.clone())
                .unwrap_or_default(),
            image_id: inspect.image.clone().unwrap_or_default(),
            inspect,
        }
    }
}

/// One update on its path: the old container, the image it gets, the name
/// it waits under meanwhile, and where the steps go.
struct Job<'a> {
    progress: &'a Progress<'a>,
    old: Old,
    image: ImageRef,
    new_image_id: String,
    aside: String,
    started: Instant,
}

fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}
