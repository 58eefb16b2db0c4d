//! Wiring only: the version this binary carries, then the program.

use std::process::ExitCode;

fn main() -> ExitCode {
    // The version is in a section of the binary that `build.sh` writes after
    // the build (`selfup::embedded_version`), so one build serves every version.
    selfup::cli::program::main(selfup::embedded_version())
}
