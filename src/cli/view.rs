//! The person's view of an upgrade's events: a line per step with its time
//! since the first event, and a bar for the pull.

use serde_json::Value;

use super::answer::{self, Event, Stamp};

/// The person's view of an upgrade's events.
pub(super) struct View {
    json: bool,
    start_ms: Option<u64>,
    bar: Option<indicatif::ProgressBar>,
}

impl View {
    pub(super) fn new(json: bool) -> View {
        View {
            json,
            start_ms: None,
            bar: None,
        }
    }

    /// Shows one event (its JSON data); with `--json`, nothing: the answer
    /// alone is printed.
    pub(super) fn show(&mut self, data: &Value) {
        if self.json {
            return;
        }
        let at = answer::read::<Stamp>(data).time_ms;
        let start = *self.start_ms.get_or_insert(at);
        let elapsed = at.saturating_sub(start) as f64 / 1000.0;
        let line = match answer::read::<Event>(data) {
            Event::UpgradeStarted { from, requested } => Some(format!("upgrading {from} to {requested}")),
            Event::UpgradeStep { step } => Some(step),
            Event::Takeover { phase } => Some(format!("successor: {phase}")),
            Event::BakeStarted { to, secs } => Some(format!(
                "baking {to} for {secs} s: the elder stands by (POST /promote ends it, POST /rollback goes back)"
            )),
            Event::BakeEnded { outcome, reason } => Some(format!("bake {}: {reason}", outcome.replace('_', " "))),
            // The attempt that passed; every attempt is in /events.
            Event::HealthAttempt { attempt, result } if result == "answered as the successor" => {
                Some(format!("the successor answered /health (attempt {attempt})"))
            }
            Event::PullProgress { done, total } => {
                let bar = self.bar.get_or_insert_with(|| {
                    let bar = indicatif::ProgressBar::new(total);
                    if let Ok(style) = indicatif::ProgressStyle::with_template(
                        "           [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    ) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar
                });
                bar.set_length(total);
                bar.set_position(done);
                None
            }
            Event::HealthAttempt { .. } | Event::Other => None,
        };
        if let Some(line) = line {
            self.end_bar();
            println!("{elapsed:>8.3}s  {line}");
        }
    }

    fn end_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
            if bar.is_hidden() {
                // No terminal: the pull's size in one line instead.
                println!("           pulled {} bytes", bar.position());
            }
        }
    }

    /// Ends the pull's bar, if one is drawn, before the answer is printed.
    pub(super) fn finish(&mut self) {
        self.end_bar();
    }
}
