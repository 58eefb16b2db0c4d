//! Companion mode: selfup recreates *another* container from a new image on
//! request, with the settings its operator gave it, and answers only once it
//! knows whether the new container came up. The files, in the order an
//! update runs:
//!
//! 1. [`auth`]: the request carries the API key (checked by the route).
//! 2. [`update`]: the request path. [`admission`] first: the image must come
//!    from an allowed registry, the container must exist, run and carry
//!    `selfup.enable=true` (read off it by [`container`]); one update per
//!    container at a time. Then the registry's credentials
//!    ([`crate::registry::credentials`]), the tag, the pull and the decision
//!    ([`crate::recreate::resolve`]), and one of two paths, chosen once:
//!    - *recreate*: the clone ([`crate::recreate::clone`]) takes the old
//!      container's place by its [`placement`], beside it or after stopping
//!      it, in a [`swap`] that is rolled back if the new one does not come up;
//!    - *blue-green*, for a container labelled `selfup.port` ([`blue_green`]):
//!      its successor runs beside it, is checked at its own address, and
//!      takes the traffic of the app's socket before the elder stops; with
//!      `update_bake_secs`, [`app_bake`] keeps the elder warm out of rotation
//!      that long and switches back to it if the successor fails.
//! 3. [`progress`]: each step goes to the event log as it begins;
//!    [`outcome`]: what the update answers, or why it failed.
//! 4. [`crate::recreate::journal`]: with a data directory, the
//!    one-swap-per-container lock and the swap's journal are files there,
//!    shared by every instance: a self-upgrade waits for running swaps, and
//!    an instance that starts resolves a swap left half-done ([`recover`]).
//! 5. [`apps`]: the sockets of the blue-green apps, bound at start and kept
//!    joined to each app's address as containers start.
//!
//! The types the files share live in [`container`], [`progress`] and
//! [`outcome`], which import neither this file nor any file that adds to
//! `Companion`: so nothing this file imports imports it back.

pub mod admission;
pub mod app_bake;
pub mod apps;
pub mod auth;
pub mod blue_green;
pub mod container;
pub mod outcome;
pub mod placement;
pub mod progress;
pub mod recover;
pub mod swap;
pub mod update;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::Settings;
use crate::docker::Engine;
use crate::notify::Notifier;
use crate::recreate::journal::Swaps;
use crate::registry::Registry;
use crate::registry::credentials::Helpers;
use crate::state::{BakeAsk, Shared};
use auth::ApiKey;
use blue_green::AppFronts;
pub use outcome::{Offer, UpdateError, UpdateOutcome, outcome_of};
pub use progress::{Progress, Step};

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
    /// Blue-green apps whose old container is being stopped after the
    /// update's answer, by name: a later update of one waits for it.
    retiring: Arc<Mutex<HashMap<String, tokio::sync::watch::Receiver<bool>>>>,
    /// The swaps of every instance that shares the data directory, if there is one.
    swaps: Option<Arc<Swaps>>,
    /// The sockets of the blue-green apps, unless `app_socket_dir` is empty.
    fronts: Option<Arc<AppFronts>>,
    /// For the successors' health paths: no proxy, no pooling.
    http: reqwest::Client,
    /// The blue-green apps baking now, by name: an operator's promote or
    /// rollback reaches the bake through it.
    bakes: Mutex<HashMap<String, Arc<BakeAsk>>>,
    /// The event log every step goes to, and the metrics every finished update counts in.
    shared: Arc<Shared>,
    /// Where finished updates are reported (`notify_urls`), if anywhere.
    notifier: Option<Arc<Notifier>>,
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
            retiring: Arc::default(),
            swaps,
            fronts: (!settings.app_socket_dir.as_os_str().is_empty()).then(|| {
                Arc::new(AppFronts::new(
                    settings.app_socket_dir.clone(),
                    settings.port,
                    settings.hold(),
                ))
            }),
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

    /// The front of blue-green app `name`, if this instance has one.
    pub fn app_front(&self, name: &str) -> Option<Arc<blue_green::AppFront>> {
        self.fronts.as_ref()?.get(name)
    }

    /// The blue-green apps whose traffic is paused now: name, since when,
    /// until when, and how many connections wait.
    pub fn paused_apps(&self) -> Vec<(String, crate::pause::Paused, usize)> {
        self.fronts.as_ref().map(|f| f.paused()).unwrap_or_default()
    }

    /// The blue-green apps whose old container is being stopped now.
    pub fn retiring(&self) -> Vec<String> {
        let retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = retiring.keys().cloned().collect();
        names.sort();
        names
    }

    fn bakes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<BakeAsk>>> {
        self.bakes.lock().unwrap_or_else(|p| p.into_inner())
    }
}
