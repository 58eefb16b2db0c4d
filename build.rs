//! Link options for the static binary `build.sh` makes, and for nothing else.
//!
//! A static PIE relocates itself at start: each pointer in its data needs a
//! relocation, 24 bytes apiece (445 KB of `.rela.dyn` in a 14 MB binary).
//! `-z pack-relative-relocs` stores them as a bitmap (`DT_RELR`) instead,
//! which glibc 2.36 and later read, static binaries included; the binary
//! keeps its randomized load address. Only with `crt-static`: a dynamically
//! linked binary would then need a glibc as recent at run time.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" && features.split(',').any(|f| f == "crt-static") {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
