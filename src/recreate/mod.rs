//! What both roles stand on: recreating a container from a new image.
//!
//! The self-upgrade ([`crate::handover`]) and companion mode
//! ([`crate::companion`]) do the same things in a different order; the
//! rules they share live here, and nothing here knows either role.
//!
//! - [`bake`]: the one bake's judge, paces and ends, for the self-upgrade
//!   and blue-green apps alike.
//! - [`journal`]: the companion's swaps, recorded for every instance: a
//!   self-upgrade waits for running ones.
//! - [`resolve`]: one path from a request to an image: pick the tag, pull,
//!   inspect, read the version, decide.
//! - [`upgrade`]: the interface both backends of the self-upgrade share.
//! - [`clone`]: the create body of a container recreated from a new image.
//! - [`watch`]: one watcher that says whether a new container came up or
//!   died, and the stop-then-remove of an old one.

pub mod bake;
pub mod clone;
pub mod journal;
pub mod resolve;
pub mod upgrade;
pub mod watch;
