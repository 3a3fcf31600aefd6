//! Single use within a window: the `jti`s of signed requests and client assertions,
//! each remembered until its window ends and refused if seen again before then.
//! Bounded, in all and per group (the client or key it came from), so that one
//! client cannot crowd out the others: past a bound, a new one is refused rather than
//! a replay let through. Only a 16-byte hash of each is kept. Per node: a replay sent
//! to another node within the window is not caught here.

use std::collections::{BTreeSet, HashMap, HashSet};

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Seen before, within its window.
    Seen,
    /// Too many windows open, in all or for this group: retry later.
    Full,
}

pub struct Seen {
    max: usize,
    max_per_group: usize,
    inner: Mutex<Inner>,
}

type Id = [u8; 16];
type Group = [u8; 8];

#[derive(Default)]
struct Inner {
    ids: HashSet<Id>,
    /// (until, id, group), earliest end first, so that every expired one is forgotten
    /// whatever order they came in.
    by_end: BTreeSet<(u64, Id, Group)>,
    per_group: HashMap<Group, usize>,
}

fn hash(group: &str, key: &str) -> (Id, Group) {
    let g = ring::digest::digest(&ring::digest::SHA256, group.as_bytes());
    let mut input = Vec::with_capacity(group.len() + key.len() + 1);
    input.extend_from_slice(group.as_bytes());
    input.push(0);
    input.extend_from_slice(key.as_bytes());
    let k = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut id = [0u8; 16];
    id.copy_from_slice(&k.as_ref()[..16]);
    let mut gid = [0u8; 8];
    gid.copy_from_slice(&g.as_ref()[..8]);
    (id, gid)
}

impl Seen {
    pub fn new(max: usize, max_per_group: usize) -> Seen {
        Seen {
            max,
            max_per_group,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// How many are remembered now.
    pub fn len(&self) -> usize {
        self.inner.lock().ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes `key` of `group` once: remembered until `until` (seconds), refused if
    /// seen before then. `now` forgets every window that ended before it.
    pub fn first_use(&self, group: &str, key: &str, until: u64, now: u64) -> Result<(), Replay> {
        let (id, gid) = hash(group, key);
        let mut guard = self.inner.lock();
        let Inner {
            ids,
            by_end,
            per_group,
        } = &mut *guard;
        while by_end.first().is_some_and(|(end, _, _)| *end < now) {
            if let Some((_, old, g)) = by_end.pop_first() {
                ids.remove(&old);
                if let Some(n) = per_group.get_mut(&g) {
                    *n -= 1;
                    if *n == 0 {
                        per_group.remove(&g);
                    }
                }
            }
        }
        if ids.contains(&id) {
            return Err(Replay::Seen);
        }
        let in_group = per_group.entry(gid).or_default();
        if ids.len() >= self.max || *in_group >= self.max_per_group {
            if *in_group == 0 {
                per_group.remove(&gid);
            }
            return Err(Replay::Full);
        }
        *in_group += 1;
        ids.insert(id);
        by_end.insert((until, id, gid));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_taken_once_until_its_window_ends_and_the_bound_holds() {
        let seen = Seen::new(2, 2);
        assert_eq!(seen.first_use("g", "a", 100, 10), Ok(()));
        assert_eq!(seen.first_use("g", "a", 100, 50), Err(Replay::Seen));
        assert_eq!(seen.first_use("g", "b", 20, 10), Ok(()));
        assert_eq!(seen.first_use("g", "c", 20, 10), Err(Replay::Full));
        // b's window over: forgotten, room for c; a is still within its own.
        assert_eq!(seen.first_use("g", "c", 200, 21), Ok(()));
        assert_eq!(seen.first_use("g", "a", 100, 99), Err(Replay::Seen));
        assert_eq!(seen.first_use("g", "a", 300, 101), Ok(()));
        // The same key of another group is another one.
        let other = Seen::new(10, 10);
        assert_eq!(other.first_use("g", "a", 100, 10), Ok(()));
        assert_eq!(other.first_use("h", "a", 100, 10), Ok(()));
    }

    /// The attack: one client fills the window with assertions of its own, so that
    /// every other client's are refused until they expire.
    #[test]
    fn one_group_cannot_crowd_out_the_others() {
        let seen = Seen::new(100, 10);
        for i in 0..10 {
            assert_eq!(seen.first_use("greedy", &format!("j{i}"), 1000, 0), Ok(()));
        }
        assert_eq!(seen.first_use("greedy", "j10", 1000, 0), Err(Replay::Full));
        assert_eq!(seen.first_use("other", "j0", 1000, 0), Ok(()));
        assert_eq!(seen.len(), 11);
        // Its windows over, the group has its share again.
        assert_eq!(seen.first_use("greedy", "j11", 2000, 1001), Ok(()));
        assert_eq!(seen.len(), 1);
    }
}
