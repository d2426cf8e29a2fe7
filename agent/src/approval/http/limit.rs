//! A flood of refused calls must not flood the journal (every record takes disk, and below
//! `audit.min_free_bytes` statements are refused: a network peer could stop the databases'
//! work by sending bad tokens). Per peer address and kind of refusal (the record's rule), the
//! first [`PER_WINDOW`] refusals of a minute are recorded one by one; the rest are counted and recorded as one summary when the
//! minute is over, so nothing is dropped without a record saying how much.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Refusals recorded one by one per peer and window.
pub const PER_WINDOW: u32 = 20;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Peers tracked at once; beyond that, new peers share one slot.
const MAX_PEERS: usize = 4096;

#[derive(Clone, Copy)]
struct Slot {
    start: Instant,
    recorded: u32,
    suppressed: u64,
}

/// The refusals of one peer that were not recorded one by one.
#[derive(Debug, PartialEq, Eq)]
pub struct Suppressed {
    /// The peer (`None`: the shared slot of peers beyond the table's size).
    pub peer: Option<IpAddr>,
    /// The kind: the rule their records would have had.
    pub kind: &'static str,
    /// How many.
    pub count: u64,
}

/// Per-peer refusal counts.
#[derive(Default)]
pub struct Limiter {
    slots: Mutex<HashMap<(Option<IpAddr>, &'static str), Slot>>,
}

impl Limiter {
    /// Whether this refusal of kind `kind` gets its own record.
    pub fn admit(&self, peer: IpAddr, kind: &'static str, now: Instant) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let key = if slots.len() < MAX_PEERS || slots.contains_key(&(Some(peer), kind)) {
            (Some(peer), kind)
        } else {
            (None, kind)
        };
        let slot = slots.entry(key).or_insert(Slot {
            start: now,
            recorded: 0,
            suppressed: 0,
        });
        if slot.recorded < PER_WINDOW {
            slot.recorded += 1;
            true
        } else {
            slot.suppressed += 1;
            false
        }
    }

    /// Ends the windows that are over: what each suppressed, to be recorded.
    pub fn roll(&self, now: Instant) -> Vec<Suppressed> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        slots.retain(|&(peer, kind), slot| {
            if now.duration_since(slot.start) < WINDOW {
                return true;
            }
            if slot.suppressed > 0 {
                out.push(Suppressed {
                    peer,
                    kind,
                    count: slot.suppressed,
                });
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_window_budget_refusals_are_counted_then_summarised() {
        let l = Limiter::default();
        let t = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let k = "approval.unauthenticated";
        for _ in 0..PER_WINDOW {
            assert!(l.admit(a, k, t));
        }
        assert!(!l.admit(a, k, t));
        assert!(!l.admit(a, k, t));
        // Another peer, or another kind of refusal, has its own budget.
        assert!(l.admit(b, k, t));
        assert!(l.admit(a, "approval.workload_caller", t));
        assert!(l.roll(t + Duration::from_secs(1)).is_empty());
        let rolled = l.roll(t + WINDOW);
        assert_eq!(
            rolled,
            vec![Suppressed {
                peer: Some(a),
                kind: k,
                count: 2
            }]
        );
        // A new window: recorded one by one again.
        assert!(l.admit(a, k, t + WINDOW));
    }
}
