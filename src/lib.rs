//! selfup: a web service that upgrades itself with a blue-green handover, and
//! upgrades other containers on request with the same engine.
//!
//! The modules by layer, top down. An import only points down a layer; the
//! two roles never import each other; `tests/layers.rs` checks both, and
//! that no files import each other in a circle.
//!
//! **Entry**: [`app`] wires everything and binds the listeners (`main.rs`
//! only calls it); [`cli`] is `selfup upgrade|status|history|rollback`, the
//! operator's client of the control endpoints.
//!
//! **Drivers**, what sets a role going: [`routes`], one file per group of
//! endpoints, the guards and errors as JSON; [`watch`], the watch policy
//! that upgrades on a schedule or a registry notification.
//!
//! **Roles**:
//! - [`handover`]: the self-upgrade, in the order it runs: the elder's
//!   side, its steps, the bake, the successor's takeover.
//! - [`companion`]: `/update` of *other* containers: admission, the API
//!   key, placement, the recreate and blue-green paths, recovery.
//!
//! **Backend**: [`swarm`], the self-upgrade's second backend, a Swarm
//! service update; only [`handover`] picks it.
//!
//! **Shared** by both roles: [`recreate`]: the upgrade interface, cloning a
//! container, one resolve-pull-decide path, the watcher, the one bake's
//! judge, and the companion's swap journal the self-upgrade waits on.
//!
//! **Base**, imports nothing above it:
//! - [`config`]: the typed, layered settings (defaults, TOML, `SELFUP_*`).
//! - [`state`]: the small struct the routes share with the roles.
//! - [`events`]: the event log every step is emitted to, with the states
//!   it records as enums; [`metrics`]: what `/metrics` exports;
//!   [`notify`]: a JSON POST for every finished upgrade or update.
//! - [`control`]: the stable sockets the live instance holds across
//!   handovers; [`proxy`]: whether nginx runs; [`pause`]: public traffic
//!   held, not refused (`/pause`, an app's pause); [`hold`]: `selfup
//!   hold`, where nginx's connections wait while no instance is live.
//! - [`docker`]: the one wrapper around bollard; [`registry`]: tags and
//!   digests over the registry API (over its unix socket when it has one),
//!   with credentials.
//! - [`version`]: the semver rules; [`image_ref`]: image references.
//! - [`peer_uid`]: who owns the caller's end of a loopback TCP connection
//!   (the kernel's socket table), for the control endpoints' guard.
//! - [`atomic`], [`identity`], [`secret`], [`telemetry`]: small tools.
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
pub mod hold;
pub mod identity;
pub mod image_ref;
pub mod metrics;
pub mod notify;
pub mod pause;
pub mod peer_uid;
pub mod proxy;
pub mod recreate;
pub mod registry;
pub mod routes;
pub mod secret;
pub mod state;
pub mod swarm;
pub mod telemetry;
pub mod version;
pub mod watch;

/// The length of [`VERSION_SLOT`]: the longest version a binary can carry.
pub const VERSION_SLOT_LEN: usize = 64;

/// The name of the ELF section that holds [`VERSION_SLOT`], for `build.sh`.
pub const VERSION_SECTION: &str = ".selfup_version";

/// The version this binary reports, in a section of its own: the crate's
/// version as compiled, which `build.sh` overwrites in its copy of the
/// binary with the version it builds (`objcopy --update-section`), padded
/// with NUL bytes. The library and the binary are built once per source
/// tree, however many versions are made of them; link-time optimization then
/// costs once per change of the code, never per version.
#[used]
#[unsafe(link_section = ".selfup_version")]
static VERSION_SLOT: [u8; VERSION_SLOT_LEN] = padded(env!("CARGO_PKG_VERSION"));

const fn padded(version: &str) -> [u8; VERSION_SLOT_LEN] {
    let bytes = version.as_bytes();
    let mut slot = [0; VERSION_SLOT_LEN];
    let mut i = 0;
    while i < bytes.len() {
        slot[i] = bytes[i];
        i += 1;
    }
    slot
}

/// The version [`VERSION_SLOT`] holds in this binary, as written there after
/// the build: the bytes before the first NUL. Not checked here: `main`
/// refuses to run as a version that is not semver.
pub fn embedded_version() -> &'static str {
    // A volatile read: the compiler must not fold the compiled-in value, since
    // the section is rewritten after linking.
    let slot = unsafe { std::ptr::read_volatile(&VERSION_SLOT) };
    let version = version_in_slot(&slot).unwrap_or_else(|e| format!("<{e}>"));
    Box::leak(version.into_boxed_str())
}

/// The version text in a slot: its bytes up to the first NUL (or all of
/// them), which must be UTF-8 and not empty.
pub fn version_in_slot(slot: &[u8]) -> Result<String, String> {
    let end = slot.iter().position(|&b| b == 0).unwrap_or(slot.len());
    match std::str::from_utf8(&slot[..end]) {
        Ok("") => Err("an empty version slot".into()),
        Ok(version) => Ok(version.to_string()),
        Err(_) => Err("a version slot that is not UTF-8".into()),
    }
}

/// The version this binary was built as, once [`set_build_version`] has run;
/// the crate's own version before that (unit tests, `cargo run`).
static BUILD_VERSION: std::sync::OnceLock<semver::Version> = std::sync::OnceLock::new();

/// Records the version the binary was built as. `main` calls it first thing,
/// with [`embedded_version`]. A version that is not semver is an error; a
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

#[cfg(test)]
mod version_slot_tests {
    use super::*;

    #[test]
    fn the_compiled_slot_holds_the_crate_version() {
        assert_eq!(embedded_version(), env!("CARGO_PKG_VERSION"));
        assert_eq!(VERSION_SLOT.len(), VERSION_SLOT_LEN);
    }

    #[test]
    fn a_slot_is_read_up_to_its_first_nul() {
        let mut slot = [0u8; VERSION_SLOT_LEN];
        slot[..11].copy_from_slice(b"1.5.0-rc.1\0");
        assert_eq!(version_in_slot(&slot).unwrap(), "1.5.0-rc.1");
        assert_eq!(version_in_slot(&padded("2.0.0")).unwrap(), "2.0.0");
        // Bytes after the terminator (a longer version before) are ignored.
        let mut slot = padded("10.20.30-beta.4");
        slot[..6].copy_from_slice(b"1.0.0\0");
        assert_eq!(version_in_slot(&slot).unwrap(), "1.0.0");
        // A slot filled to the end has no terminator and is whole.
        let full = [b'1'; VERSION_SLOT_LEN];
        assert_eq!(version_in_slot(&full).unwrap().len(), VERSION_SLOT_LEN);
    }

    #[test]
    fn build_sh_writes_the_slot_this_binary_reads() {
        let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/build.sh")).unwrap();
        assert!(
            script.contains(&format!("\nslot={VERSION_SLOT_LEN}\n")),
            "build.sh's slot size"
        );
        assert!(
            script.contains(&format!("--update-section \"{VERSION_SECTION}=")),
            "build.sh's section name"
        );
    }

    #[test]
    fn an_empty_or_garbled_slot_is_an_error_not_a_version() {
        assert!(version_in_slot(&[0u8; VERSION_SLOT_LEN]).unwrap_err().contains("empty"));
        assert!(version_in_slot(&[0xff, 0xfe, 0]).unwrap_err().contains("UTF-8"));
    }
}
