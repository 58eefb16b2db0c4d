//! Wiring only: the version this binary is built as, then the program.

use std::process::ExitCode;

/// The version `build.sh` builds this binary as (`SELFUP_BUILD_VERSION` at
/// compile time; `cargo build` alone gives the crate's version). Only this
/// file reads it, so a new version recompiles these lines and relinks,
/// and the library's build stays as it was.
const VERSION: &str = match option_env!("SELFUP_BUILD_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

fn main() -> ExitCode {
    selfup::cli::program::main(VERSION)
}
