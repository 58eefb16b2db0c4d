//! Pause and resume of the public traffic, for a step that cannot be
//! blue-green (a schema migration): while paused, a new public request
//! waits, it is not refused, until `POST /resume`, or until the pause ends
//! by itself `hold_secs` after it began; requests already running finish.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// A pause under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Paused {
    /// When it began, milliseconds since the epoch.
    pub since_ms: u64,
    /// When it ends by itself, milliseconds since the epoch.
    pub ends_ms: u64,
    /// Which pause this is: an ending timer ends only its own.
    #[serde(skip)]
    id: u64,
}

/// The pause state of this instance's public traffic.
#[derive(Debug)]
pub struct Pause {
    now: watch::Sender<Option<Paused>>,
    next_id: AtomicU64,
    /// The public requests waiting now.
    held: AtomicUsize,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            now: watch::Sender::new(None),
            next_id: AtomicU64::new(1),
            held: AtomicUsize::new(0),
        }
    }
}

impl Pause {
    /// Pauses the public traffic for at most `hold`. `Err` with the pause
    /// already under way (it is not extended).
    pub fn pause(&self, hold: Duration, now_ms: u64) -> Result<Paused, Paused> {
        let mut outcome = None;
        self.now.send_if_modified(|current| match current {
            Some(running) => {
                outcome = Some(Err(*running));
                false
            }
            None => {
                let paused = Paused {
                    since_ms: now_ms,
                    ends_ms: now_ms + hold.as_millis() as u64,
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                };
                *current = Some(paused);
                outcome = Some(Ok(paused));
                true
            }
        });
        outcome.expect("send_if_modified runs its closure")
    }

    /// Resumes: every waiting request goes on. The pause that ended, if one was on.
    pub fn resume(&self) -> Option<Paused> {
        let mut ended = None;
        self.now.send_if_modified(|current| {
            ended = current.take();
            ended.is_some()
        });
        ended
    }

    /// Ends `paused` if it is still the one under way (its time is up).
    pub fn end(&self, paused: Paused) -> bool {
        self.now.send_if_modified(|current| match current {
            Some(running) if running.id == paused.id => {
                *current = None;
                true
            }
            _ => false,
        })
    }

    /// The pause under way, if any.
    pub fn current(&self) -> Option<Paused> {
        *self.now.borrow()
    }

    /// The public requests waiting now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Returns at once when nothing is paused; else when the pause ends.
    /// `limit` bounds the wait, should the pause's own end never come.
    pub async fn wait(&self, limit: Duration) {
        if self.now.borrow().is_none() {
            return;
        }
        let mut rx = self.now.subscribe();
        self.held.fetch_add(1, Ordering::Relaxed);
        let _ = tokio::time::timeout(limit, rx.wait_for(Option::is_none)).await;
        self.held.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_second_pause_is_the_first_and_a_resume_ends_it() {
        let pause = Pause::default();
        let first = pause.pause(Duration::from_secs(30), 1_000).unwrap();
        assert_eq!((first.since_ms, first.ends_ms), (1_000, 31_000));
        assert_eq!(pause.pause(Duration::from_secs(5), 2_000), Err(first));
        assert_eq!(pause.current(), Some(first));
        assert_eq!(pause.resume(), Some(first));
        assert_eq!(pause.resume(), None);
        assert_eq!(pause.current(), None);
    }

    #[test]
    fn a_timer_ends_only_its_own_pause() {
        let pause = Pause::default();
        let old = pause.pause(Duration::from_secs(1), 0).unwrap();
        pause.resume();
        let new = pause.pause(Duration::from_secs(1), 10).unwrap();
        assert!(!pause.end(old), "the old timer ended a newer pause");
        assert_eq!(pause.current(), Some(new));
        assert!(pause.end(new));
        assert_eq!(pause.current(), None);
    }

    #[tokio::test]
    async fn waiting_requests_go_on_at_the_resume_and_are_counted_meanwhile() {
        let pause = Arc::new(Pause::default());
        // Not paused: no wait.
        tokio::time::timeout(Duration::from_millis(50), pause.wait(Duration::from_secs(60)))
            .await
            .expect("no wait without a pause");
        pause.pause(Duration::from_secs(30), 0).unwrap();
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let pause = pause.clone();
                tokio::spawn(async move { pause.wait(Duration::from_secs(60)).await })
            })
            .collect();
        while pause.held() < 3 {
            tokio::task::yield_now().await;
        }
        assert!(waiting.iter().all(|w| !w.is_finished()));
        pause.resume();
        for w in waiting {
            tokio::time::timeout(Duration::from_secs(1), w).await.unwrap().unwrap();
        }
        assert_eq!(pause.held(), 0);
    }

    #[tokio::test]
    async fn a_wait_is_bounded_by_its_limit() {
        let pause = Pause::default();
        pause.pause(Duration::from_secs(30), 0).unwrap();
        tokio::time::timeout(Duration::from_secs(1), pause.wait(Duration::from_millis(20)))
            .await
            .expect("the limit ends the wait");
        assert_eq!(pause.held(), 0);
    }
}
