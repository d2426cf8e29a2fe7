//! Polling instead of fixed sleeps: wait until something shows up (a journal record, a status
//! field, a log line), or fail saying what was seen instead.
use std::fmt::Display;
use std::time::{Duration, Instant};

/// How often [`wait_for`] looks again.
pub const POLL: Duration = Duration::from_millis(25);

/// Calls `probe` every [`POLL`] until it returns `Ok`, and returns that value. After `within`,
/// panics naming `what` was awaited and showing the `Err` the last call returned: what was
/// there instead.
///
/// # Panics
///
/// When `probe` has not returned `Ok` within `within`.
#[track_caller]
pub fn wait_for<T, S: Display>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Result<T, S>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what}: not there after {within:?}; last seen:\n{seen}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_condition_holds() {
        let mut n = 0;
        let got = wait_for("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            if n >= 3 { Ok(n) } else { Err(n) }
        });
        assert_eq!(got, 3);
    }

    #[test]
    #[should_panic(expected = "never: not there after 50ms; last seen:\nstill no")]
    fn fails_with_what_was_last_seen() {
        wait_for::<(), _>("never", Duration::from_millis(50), || Err("still no"));
    }
}
