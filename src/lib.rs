//! selfup: a web service that upgrades itself with a blue-green handover, and
//! upgrades other containers on request with the same engine.
//!
//! The modules, from the outside in:
//!
//! - [`config`]: the typed, layered settings (defaults, TOML, `SELFUP_*`).
//! - [`telemetry`]: the tracing subscriber.
//! - [`app`]: the HTTP server, its routes and the state they share.
//! - [`routes`]: one file per group of endpoints; errors become JSON.
//! - [`control`]: the stable control address, a root-only unix socket that
//!   the live instance holds across handovers.
//! - [`state`]: the one small struct the routes share with the orchestrator.
//! - [`handover`]: the protocol, read top to bottom in the order it runs.
//! - [`companion`]: companion mode, `/update` of *other* containers: the API
//!   key, registry credentials, and the swap with its rollback.
//! - [`retention`]: which old images of this service a takeover removes.
//! - [`proxy`]: nginx's upstream include, its config test and reload.
//! - [`registry`]: tags and digests over the registry API.
//! - [`docker`]: the one wrapper around bollard, one call a method.
//! - [`identity`]: how a container finds its own id.
//! - [`secret`]: tokens and their constant-time comparison.
//! - `faults`: fault switches that only test images carry (feature `faults`).

pub mod app;
pub mod atomic;
pub mod companion;
pub mod config;
pub mod control;
pub mod docker;
#[cfg(feature = "faults")]
pub mod faults;
pub mod handover;
pub mod identity;
pub mod image_ref;
pub mod proxy;
pub mod recreate;
pub mod registry;
pub mod retention;
pub mod routes;
pub mod secret;
pub mod state;
pub mod telemetry;
