//! Read budgets: rows of a workload's results actually sent, per rule, in a sliding window,
//! shared by all the workload's sessions (so pagination and parallel sessions draw on one
//! budget). Sessions take rows in small blocks before sending them and give back what they
//! did not send, so a session never sends a row the budget did not grant. Pure apart from
//! its lock; the clock is passed in.
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// A read budget: rows in a sliding window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Budget {
    /// Rows allowed in the window.
    pub rows: u64,
    /// The window.
    #[serde(with = "humantime_serde_secs")]
    pub per: std::time::Duration,
}

mod humantime_serde_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

/// Every workload's budgets.
#[derive(Debug, Default)]
pub struct Budgets {
    windows: Mutex<HashMap<(String, String), Window>>,
}

/// What one budget granted, newest last.
#[derive(Debug, Default)]
struct Window {
    entries: VecDeque<(Instant, u64)>,
    used: u64,
}

impl Window {
    fn expire(&mut self, budget: Budget, now: Instant) {
        while let Some((at, n)) = self.entries.front()
            && now.saturating_duration_since(*at) >= budget.per
        {
            self.used -= n;
            self.entries.pop_front();
        }
    }
}

/// One budget's use, for status.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Use {
    /// Workload.
    pub workload: String,
    /// Rule id.
    pub rule: String,
    /// Rows sent (or taken to be sent) in the window.
    pub used: u64,
}

impl Budgets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Window>> {
        self.windows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes up to `want` rows of `workload`'s budget under `rule`; returns how many it
    /// granted (0: the budget is used up for now).
    pub fn take(&self, workload: &str, rule: &str, budget: Budget, want: u64, now: Instant) -> u64 {
        let mut windows = self.lock();
        let w = windows
            .entry((workload.to_owned(), rule.to_owned()))
            .or_default();
        w.expire(budget, now);
        let granted = want.min(budget.rows.saturating_sub(w.used));
        if granted > 0 {
            w.used += granted;
            w.entries.push_back((now, granted));
        }
        granted
    }

    /// Gives back rows taken but not sent (newest grants first).
    pub fn give_back(&self, workload: &str, rule: &str, mut n: u64) {
        let mut windows = self.lock();
        let Some(w) = windows.get_mut(&(workload.to_owned(), rule.to_owned())) else {
            return;
        };
        while n > 0 {
            let Some((_, last)) = w.entries.back_mut() else {
                break;
            };
            let back = n.min(*last);
            *last -= back;
            w.used -= back;
            n -= back;
            if *last == 0 {
                w.entries.pop_back();
            }
        }
    }

    /// Every budget's use now.
    pub fn uses(&self) -> Vec<Use> {
        let mut out: Vec<Use> = self
            .lock()
            .iter()
            .map(|((workload, rule), w)| Use {
                workload: workload.clone(),
                rule: rule.clone(),
                used: w.used,
            })
            .collect();
        out.sort_by(|a, b| (&a.workload, &a.rule).cmp(&(&b.workload, &b.rule)));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_budget_is_shared_spent_given_back_and_renewed_by_the_window() {
        let b = Budgets::default();
        let budget = Budget {
            rows: 100,
            per: Duration::from_secs(3600),
        };
        let t0 = Instant::now();
        // Two sessions of one workload draw on one budget.
        assert_eq!(b.take("w", "r", budget, 64, t0), 64);
        assert_eq!(b.take("w", "r", budget, 64, t0), 36);
        assert_eq!(b.take("w", "r", budget, 64, t0), 0, "used up");
        // Another workload, or another rule, has its own.
        assert_eq!(b.take("v", "r", budget, 64, t0), 64);
        assert_eq!(b.take("w", "q", budget, 64, t0), 64);
        // Rows taken and not sent come back.
        b.give_back("w", "r", 30);
        assert_eq!(b.take("w", "r", budget, 64, t0), 30);
        // The window moves on.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.take("w", "r", budget, 64, later), 64);
        assert_eq!(
            b.uses()
                .iter()
                .find(|u| u.workload == "w" && u.rule == "r")
                .map(|u| u.used),
            Some(64)
        );
    }
}
