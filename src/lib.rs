//! selfup: a web service that upgrades itself with a blue-green handover, and
//! upgrades other containers on request with the same engine.
//!
//! The modules, from the outside in:
//!
//! - [`config`]: the typed, layered settings (defaults, TOML, `SELFUP_*`).
//! - [`telemetry`]: the tracing subscriber.
//! - [`app`]: the HTTP server: it binds the listener and registers every route.
//! - [`routes`]: one file per group of endpoints, the state every handler
//!   gets, and errors as JSON.
//! - [`control`]: the stable addresses the live instance holds across
//!   handovers: the live socket nginx sends public traffic to, the root-only
//!   control socket and companion mode's update socket.
//! - [`state`]: the one small struct the routes share with the orchestrator,
//!   with the upgrade's steps, the takeover's phases and the history.
//! - [`events`]: the event log every step is emitted to, kept in the data
//!   volume so ids go on across generations; `/events` streams it.
//! - [`metrics`]: the counters and histograms `/metrics` exports.
//! - [`cli`]: `selfup upgrade|status|history|rollback`, the
//!   operator's client of the control endpoints.
//!
//! The two roles, each in its own folder, neither importing the other's
//! workings:
//!
//! - [`handover`]: the self-upgrade protocol, read top to bottom in the order
//!   it runs: the elder's side ([`handover::elder`]), then the successor's
//!   ([`handover::takeover`]); as a Swarm task, a service update instead
//!   ([`handover::swarm`]).
//! - [`companion`]: companion mode, `/update` of *other* containers:
//!   admission, the API key, placement, the swap with its rollback, and the
//!   swap journal every instance shares.
//!
//! The layer beneath both roles, which imports neither:
//!
//! - [`recreate`]: recreating a container from a new image: the version
//!   rules, the cloning rules, one resolve-pull-decide path, and one watcher
//!   that says whether a new container came up or died.
//!
//! Unattended upgrades, beside the roles:
//!
//! - [`watch`]: the watch policy: the live instance checks the registry
//!   every interval (and when the registry hook says a tag was pushed), and
//!   upgrades through the same lock and path as a request; in companion
//!   mode, containers labelled `selfup.watch` follow a policy of their own
//!   through the same path as `/update/<container>/<req>`.
//! - [`notify`]: a JSON POST for every finished upgrade, rollback or
//!   companion update, in the background, with retries.
//!
//! And what everything stands on:
//!
//! - [`retention`]: which old images of this service a takeover removes.
//! - [`proxy`]: whether nginx runs (it follows the live socket, never reloaded).
//! - [`registry`]: tags and digests over the registry API (Basic or bearer
//!   token), and the credentials for it from a `config.json`; both roles use it.
//! - [`docker`]: the one wrapper around bollard, one call a method.
//! - [`image_ref`]: image references, parsed and checked.
//! - [`atomic`]: the one way a file is replaced, whole or not at all.
//! - [`identity`]: how a container finds its own id.
//! - [`secret`]: tokens and their constant-time comparison.
//! - `faults`: fault switches that only test images carry (feature `faults`).

pub mod app;
pub mod atomic;
pub mod cli;
pub mod companion;
pub mod config;
pub mod control;
pub mod docker;
pub mod events;
#[cfg(feature = "faults")]
pub mod faults;
pub mod handover;
pub mod identity;
pub mod image_ref;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod recreate;
pub mod registry;
pub mod retention;
pub mod routes;
pub mod secret;
pub mod state;
pub mod telemetry;
pub mod watch;

/// The version this binary was built as, once [`set_build_version`] has run;
/// the crate's own version before that (unit tests, `cargo run`).
static BUILD_VERSION: std::sync::OnceLock<semver::Version> = std::sync::OnceLock::new();

/// Records the version the binary was built as. `main` calls it first thing:
/// the version is compiled into the binary alone (`build.sh` sets
/// `SELFUP_BUILD_VERSION`), so that a new version relinks the binary instead
/// of recompiling this library. A version that is not semver is an error; a
/// second call keeps the first version.
pub fn set_build_version(version: &str) -> Result<(), semver::Error> {
    let parsed = semver::Version::parse(version)?;
    let _ = BUILD_VERSION.set(parsed);
    Ok(())
}

/// The version this instance reports in `/health`, the history, the events and
/// `selfup_build_info`.
pub fn build_version() -> &'static semver::Version {
    BUILD_VERSION
        .get_or_init(|| semver::Version::parse(env!("CARGO_PKG_VERSION")).expect("the crate version is semver"))
}
