//! Single use within a window: the `jti`s of signed requests and client assertions,
//! each remembered until its window ends and refused if seen again before then.
//! Bounded: past its bound, a new one is refused rather than a replay let through.
//! Per node: a replay sent to another node within the window is not caught here.

use std::collections::{BTreeSet, HashSet};

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Seen before, within its window.
    Seen,
    /// Too many windows open: retry later.
    Full,
}

pub struct Seen {
    max: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    keys: HashSet<String>,
    /// (until, key), earliest end first, so that every expired one is forgotten
    /// whatever order they came in.
    by_end: BTreeSet<(u64, String)>,
}

impl Seen {
    pub fn new(max: usize) -> Seen {
        Seen {
            max,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// How many are remembered now.
    pub fn len(&self) -> usize {
        self.inner.lock().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes `key` once: remembered until `until` (seconds), refused if seen before
    /// then. `now` forgets every window that ended before it.
    pub fn first_use(&self, key: String, until: u64, now: u64) -> Result<(), Replay> {
        let mut guard = self.inner.lock();
        let Inner { keys, by_end } = &mut *guard;
        while by_end.first().is_some_and(|(end, _)| *end < now) {
            if let Some((_, old)) = by_end.pop_first() {
                keys.remove(&old);
            }
        }
        if keys.contains(&key) {
            return Err(Replay::Seen);
        }
        if keys.len() >= self.max {
            return Err(Replay::Full);
        }
        keys.insert(key.clone());
        by_end.insert((until, key));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_taken_once_until_its_window_ends_and_the_bound_holds() {
        let seen = Seen::new(2);
        assert_eq!(seen.first_use("a".into(), 100, 10), Ok(()));
        assert_eq!(seen.first_use("a".into(), 100, 50), Err(Replay::Seen));
        assert_eq!(seen.first_use("b".into(), 20, 10), Ok(()));
        assert_eq!(seen.first_use("c".into(), 20, 10), Err(Replay::Full));
        // b's window over: forgotten, room for c; a is still within its own.
        assert_eq!(seen.first_use("c".into(), 200, 21), Ok(()));
        assert_eq!(seen.first_use("a".into(), 100, 99), Err(Replay::Seen));
        assert_eq!(seen.first_use("a".into(), 300, 101), Ok(()));
    }
}
