//! The one bake: after the switch the old instance (selfup's elder, or an
//! app's old container) stays warm out of rotation while its successor is
//! judged; a breach sends the traffic back to it. The self-upgrade
//! (`handover::bake`) and blue-green apps (`companion::app_bake`) run their
//! own loops, since they look at different things, with the same paces, the
//! same [`Judge`], the same [`BakeEnd`], and the same way to be asked
//! ([`crate::state::BakeAsk`]); both report with [`crate::state::BakeOutcome`].

use std::time::Duration;

/// How many public answers the successor must have given before its share
/// of 5xx is judged: one 500 among the first three answers is no verdict.
pub const MIN_ANSWERS: u64 = 20;
/// How often the elder asks the successor's `/health` during a bake (and
/// an app's bake its health check).
pub const HEALTH_EVERY: Duration = Duration::from_millis(250);
/// How long one `/health` may take before it counts as a miss.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// How many misses in a row are a hang.
const MISSES: u32 = 3;
/// How often the elder asks the Engine about its successor.
pub const LOOK_EVERY: Duration = Duration::from_millis(25);
/// For the first [`EARLY_LOOKS`] of a bake the elder looks this often: a
/// successor that answers 5xx to everything is judged from its first 20
/// answers, and at some 1,500 public answers a second 25 ms between looks
/// is some 40 failed requests before the verdict, 5 ms under ten.
pub const EARLY_LOOK_EVERY: Duration = Duration::from_millis(5);
pub const EARLY_LOOKS: Duration = Duration::from_millis(500);

/// Judges a successor from its `/health` answers, one at a time. Pure, so
/// that each rule is tested on its own. An app's bake judges its successor
/// by the same rules.
#[derive(Debug)]
pub struct Judge {
    max_ratio: f64,
    /// The check a miss is one of, as the breach names it.
    check: String,
    misses: u32,
    /// The successor's public answers and 5xx, as it last reported them.
    pub answers: (u64, u64),
}

impl Judge {
    pub fn new(max_ratio: f64) -> Judge {
        Judge::of(max_ratio, "/health")
    }

    /// A judge whose misses are of `check` (an app's health check).
    pub fn of(max_ratio: f64, check: &str) -> Judge {
        Judge {
            max_ratio,
            check: check.to_string(),
            misses: 0,
            answers: (0, 0),
        }
    }

    /// Takes one look at `/health`: its counts, or what went wrong. Returns
    /// the breach this look makes, if any.
    pub fn look(&mut self, look: Result<(u64, u64), String>) -> Option<String> {
        match look {
            Ok(answers) => {
                self.misses = 0;
                self.answers = answers;
                self.ratio_breach()
            }
            Err(e) => {
                self.misses += 1;
                (self.misses >= MISSES).then(|| {
                    format!(
                        "the successor's {} failed {MISSES} times in a row (last: {e})",
                        self.check
                    )
                })
            }
        }
    }

    /// Whether the successor's last `/health` answered.
    pub fn answering(&self) -> bool {
        self.misses == 0
    }

    /// Takes the successor's counts of its answers alone (the quick look
    /// between two `/health`): a breach of the 5xx share, if any. A failed
    /// quick look says nothing; `/health` judges hangs.
    pub fn counts(&mut self, answers: (u64, u64)) -> Option<String> {
        self.answers = answers;
        self.ratio_breach()
    }

    fn ratio_breach(&self) -> Option<String> {
        let (total, errors) = self.answers;
        if total < MIN_ANSWERS {
            return None;
        }
        let ratio = errors as f64 / total as f64;
        (ratio > self.max_ratio).then(|| {
            format!(
                "{errors} of its {total} public answers were 5xx ({:.1} %), above bake_max_5xx_ratio {}",
                ratio * 100.0,
                self.max_ratio
            )
        })
    }
}

/// How a bake ended, as the one who ran it acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BakeEnd {
    /// The successor stays: the time is up, an operator promoted it, or
    /// this instance was asked to stop (`stopped`: no end to send, the
    /// successor sees the elder go).
    Promoted { reason: String, stopped: bool },
    /// The traffic is back with the elder; the successor is to be removed:
    /// drained while it still answers (`answering`), else at once.
    RolledBack {
        reason: String,
        by_operator: bool,
        answering: bool,
    },
}

impl BakeEnd {
    /// The window passed without a breach.
    pub fn clean(secs: u64) -> BakeEnd {
        BakeEnd::Promoted {
            reason: format!("the bake ended clean after {secs} s"),
            stopped: false,
        }
    }

    /// `POST /promote`.
    pub fn promoted_by_operator() -> BakeEnd {
        BakeEnd::Promoted {
            reason: "promoted by the operator (POST /promote)".into(),
            stopped: false,
        }
    }

    /// `POST /rollback`; `answering`: whether the successor still answered.
    pub fn rolled_back_by_operator(answering: bool) -> BakeEnd {
        BakeEnd::RolledBack {
            reason: "the operator asked for it (POST /rollback)".into(),
            by_operator: true,
            answering,
        }
    }

    /// A breach the judge or the watcher found.
    pub fn breach(reason: String, answering: bool) -> BakeEnd {
        BakeEnd::RolledBack {
            reason,
            by_operator: false,
            answering,
        }
    }

    /// Why it ended, as the report says.
    pub fn reason(&self) -> &str {
        match self {
            BakeEnd::Promoted { reason, .. } | BakeEnd::RolledBack { reason, .. } => reason,
        }
    }

    /// The outcome this end is reported as.
    pub fn outcome(&self) -> crate::state::BakeOutcome {
        match self {
            BakeEnd::Promoted { .. } => crate::state::BakeOutcome::Promoted,
            BakeEnd::RolledBack { .. } => crate::state::BakeOutcome::RolledBack,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_misses_in_a_row_are_a_hang_and_an_answer_between_resets_them() {
        let mut judge = Judge::new(0.01);
        assert_eq!(judge.look(Err("timeout".into())), None);
        assert_eq!(judge.look(Err("timeout".into())), None);
        assert_eq!(judge.look(Ok((0, 0))), None);
        assert_eq!(judge.look(Err("timeout".into())), None);
        assert_eq!(judge.look(Err("timeout".into())), None);
        let breach = judge.look(Err("no answer within 1s".into())).unwrap();
        assert!(
            breach.contains("failed 3 times in a row (last: no answer within 1s)"),
            "{breach}"
        );
        let mut app = Judge::of(0.01, "GET /healthz");
        for _ in 0..2 {
            assert_eq!(app.look(Err("it answered 404".into())), None);
        }
        assert_eq!(
            app.look(Err("it answered 404".into())).as_deref(),
            Some("the successor's GET /healthz failed 3 times in a row (last: it answered 404)")
        );
    }

    #[test]
    fn the_share_of_5xx_is_judged_from_twenty_answers_on() {
        let mut judge = Judge::new(0.01);
        assert_eq!(judge.look(Ok((19, 19))), None, "too few answers to judge");
        assert_eq!(judge.look(Ok((200, 2))), None, "1 % is allowed");
        let breach = judge.look(Ok((200, 3))).unwrap();
        assert!(
            breach.contains("3 of its 200 public answers were 5xx (1.5 %)"),
            "{breach}"
        );
        let mut lenient = Judge::new(1.0);
        assert_eq!(lenient.look(Ok((50, 50))), None);
        let mut quick = Judge::new(0.01);
        assert_eq!(quick.counts((10, 10)), None);
        assert!(quick.counts((40, 10)).unwrap().contains("10 of its 40"));
        let mut strict = Judge::new(0.0);
        assert!(strict.look(Ok((20, 1))).is_some());
        assert_eq!(Judge::new(0.0).look(Ok((20, 0))), None);
    }
}
