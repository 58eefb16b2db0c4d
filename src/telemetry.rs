//! Logging: `tracing` events to stderr, filtered by `RUST_LOG` (default `info`).
//! `SELFUP_LOG=json` writes one JSON object a line.
//!
//! The filter is a comma-separated list of `target=level` directives and at
//! most one bare `level` for everything else (`info,selfup=debug,actix_web=warn`),
//! matched by target prefix. It is parsed by `tracing_subscriber`'s
//! `Targets`, which needs no regular-expression engine: the binary is smaller
//! by it. A value that does not parse is reported once and `info` applies.

use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter when `RUST_LOG` is unset, empty, or does not parse.
const DEFAULT_LEVEL: LevelFilter = LevelFilter::INFO;

pub fn init() {
    let (filter, rejected) = match std::env::var("RUST_LOG") {
        Ok(value) => match log_filter(&value) {
            Ok(filter) => (filter, None),
            Err(reason) => (Targets::new().with_default(DEFAULT_LEVEL), Some((value, reason))),
        },
        Err(_) => (Targets::new().with_default(DEFAULT_LEVEL), None),
    };
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    let result = if std::env::var("SELFUP_LOG").as_deref() == Ok("json") {
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_ansi(ansi);
        registry.with(layer).try_init()
    } else {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi);
        registry.with(layer).try_init()
    };
    // A second init (in tests) keeps the first subscriber.
    if result.is_ok()
        && let Some((value, reason)) = rejected
    {
        tracing::warn!("RUST_LOG={value:?} is not a log filter ({reason}); logging at info");
    }
}

/// Parses `RUST_LOG`'s value: directives separated by commas, each
/// `target=level`, a bare `level` (the default for targets no directive
/// names), or a bare `target` (everything from it). Blank directives are
/// skipped; an empty value is the default, `info`.
pub fn log_filter(value: &str) -> Result<Targets, String> {
    let directives: Vec<&str> = value.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    if directives.is_empty() {
        return Ok(Targets::new().with_default(DEFAULT_LEVEL));
    }
    let mut filter = Targets::new();
    for directive in directives {
        let parsed = match directive.split_once('=') {
            Some((target, level)) => {
                let target = target.trim();
                if target.is_empty() || target.contains(['[', '{', ' ']) {
                    return Err(format!(
                        "{directive:?}: expected target=level, with a module path as the target"
                    ));
                }
                let level = LevelFilter::from_str(level.trim()).map_err(|_| {
                    format!(
                        "{directive:?}: {:?} is not a level (off, error, warn, info, debug, trace)",
                        level.trim()
                    )
                })?;
                filter.with_target(target, level)
            }
            None => match LevelFilter::from_str(directive) {
                Ok(level) => filter.with_default(level),
                Err(_) if directive.contains(['[', '{', ' ', '=']) => {
                    return Err(format!("{directive:?}: expected target=level, a level or a target"));
                }
                Err(_) => filter.with_target(directive, LevelFilter::TRACE),
            },
        };
        filter = parsed;
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn allows(filter: &Targets, target: &str, level: Level) -> bool {
        filter.would_enable(target, &level)
    }

    #[test]
    fn the_readme_example_filters_by_target_prefix() {
        let f = log_filter("selfup=debug,actix_web=warn").unwrap();
        assert!(allows(&f, "selfup", Level::DEBUG));
        assert!(allows(&f, "selfup::handover::elder", Level::DEBUG));
        assert!(!allows(&f, "selfup::handover::elder", Level::TRACE));
        assert!(allows(&f, "actix_web::middleware::logger", Level::WARN));
        assert!(!allows(&f, "actix_web::middleware::logger", Level::INFO));
        // No default given: targets no directive names are off.
        assert!(!allows(&f, "bollard", Level::ERROR));
    }

    #[test]
    fn a_bare_level_is_the_default_and_targets_override_it() {
        let f = log_filter("info,selfup=debug").unwrap();
        assert!(allows(&f, "bollard::docker", Level::INFO));
        assert!(!allows(&f, "bollard::docker", Level::DEBUG));
        assert!(allows(&f, "selfup::watch", Level::DEBUG));
        let f = log_filter("warn").unwrap();
        assert!(!allows(&f, "selfup", Level::INFO));
        assert!(allows(&f, "selfup", Level::WARN));
    }

    #[test]
    fn the_longest_matching_target_wins() {
        let f = log_filter("selfup=warn,selfup::handover=trace").unwrap();
        assert!(allows(&f, "selfup::handover::takeover", Level::TRACE));
        assert!(!allows(&f, "selfup::watch", Level::INFO));
    }

    #[test]
    fn levels_are_case_insensitive_and_off_silences() {
        let f = log_filter("DEBUG,actix_server=Off").unwrap();
        assert!(allows(&f, "selfup", Level::DEBUG));
        assert!(!allows(&f, "actix_server::builder", Level::ERROR));
    }

    #[test]
    fn a_bare_target_enables_everything_from_it() {
        let f = log_filter("selfup").unwrap();
        assert!(allows(&f, "selfup::docker", Level::TRACE));
        assert!(!allows(&f, "hyper", Level::ERROR));
    }

    #[test]
    fn an_empty_value_and_blank_directives_mean_the_default() {
        for value in ["", " ", ",", " , "] {
            let f = log_filter(value).unwrap();
            assert!(allows(&f, "selfup", Level::INFO), "{value:?}");
            assert!(!allows(&f, "selfup", Level::DEBUG), "{value:?}");
        }
        let f = log_filter("selfup=debug, ,").unwrap();
        assert!(allows(&f, "selfup", Level::DEBUG));
    }

    #[test]
    fn what_is_not_a_filter_is_refused_with_the_directive() {
        for (value, names) in [
            ("selfup=loud", "\"selfup=loud\""),
            ("=debug", "\"=debug\""),
            ("selfup[{port}]=debug", "selfup[{port}]=debug"),
            ("a=b=c", "\"a=b=c\""),
            ("info,selfup=5x", "\"selfup=5x\""),
        ] {
            let err = log_filter(value).unwrap_err();
            assert!(err.contains(names), "{value:?}: {err}");
        }
    }
}
