//! What both roles stand on: recreating a container from a new image.
//!
//! The self-upgrade ([`crate::handover`]) and companion mode
//! ([`crate::companion`]) do the same things in a different order; the
//! rules they share live here, and nothing here knows either role.
//!
//! - [`version`]: which tag a requirement picks, what an image's label says,
//!   and whether a version is an upgrade, a rollback or refused.
//! - [`clone`]: the create body of a container recreated from a new image.

pub mod clone;
pub mod version;
