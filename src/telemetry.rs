//! Logging: `tracing` events to stderr, filtered by `RUST_LOG` (default `info`).
//! `SELFUP_LOG=json` writes one JSON object a line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = if std::env::var("SELFUP_LOG").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // A second init (in tests) keeps the first subscriber.
    let _ = result;
}
