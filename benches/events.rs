//! The event log's cost per event, in the data directory as the service
//! keeps it (`events.jsonl`, shared across generations under a file lock).
//!
//!   cargo bench --bench events [-- EVENTS]     (default: 2000 events per figure)
//!
//! Prints the mean time of one `emit` into a log that already holds 900
//! events (the size it runs at, between the cut to half and the bound), of
//! one `emit` while a second log instance on the same file (a successor)
//! writes every other event, and of one `after` (what each `/events`
//! stream does every 200 ms) when nothing changed and when one event was
//! added. It is not a test: nothing fails.

use std::time::{Duration, Instant};

use selfup::events::{Event, EventLog, UpgradeStep};

fn step() -> Event {
    Event::UpgradeStep {
        step: UpgradeStep::HealthChecking.into(),
    }
}

fn per(total: Duration, n: usize) -> String {
    format!("{:.1} µs", total.as_secs_f64() * 1e6 / n as f64)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000)
        .max(1);
    let dir = std::env::temp_dir().join(format!("selfup-bench-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // A log at its working size: 900 events, written by an earlier generation.
    {
        let earlier = EventLog::in_dir(&dir);
        for _ in 0..900 {
            earlier.emit(step());
        }
    }
    let log = EventLog::in_dir(&dir);
    let mut emits = Duration::ZERO;
    for _ in 0..n {
        // Keep the log near 900 events: what a cut past the bound leaves, and more.
        let t = Instant::now();
        log.emit(step());
        emits += t.elapsed();
    }
    println!(
        "emit, one writer:                     {} per event ({n} events)",
        per(emits, n)
    );

    let other = EventLog::in_dir(&dir);
    let mut shared = Duration::ZERO;
    for i in 0..n {
        let t = Instant::now();
        if i % 2 == 0 {
            log.emit(step());
        } else {
            other.emit(step());
        }
        shared += t.elapsed();
    }
    println!(
        "emit, two writers taking turns:       {} per event ({n} events)",
        per(shared, n)
    );

    let last = log.last_id();
    let mut idle = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        let found = log.after(last);
        idle += t.elapsed();
        assert!(found.is_empty());
    }
    println!(
        "after, nothing new:                   {} per call ({n} calls)",
        per(idle, n)
    );

    let mut fresh = Duration::ZERO;
    let rounds = n.min(500);
    for _ in 0..rounds {
        let id = other.emit(step());
        let t = Instant::now();
        let found = log.after(id - 1);
        fresh += t.elapsed();
        assert_eq!(found.len(), 1);
    }
    println!(
        "after, one new event from the other:  {} per call ({rounds} calls)",
        per(fresh, rounds)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
