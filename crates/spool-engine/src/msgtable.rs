//! The messages of one queue, by id. Ids of a queue only grow (they come from one store-wide
//! counter in log order), so messages are kept in a deque sorted by id: a push is a
//! `push_back`, a lookup is a binary search, and a removal leaves a tombstone that is dropped
//! once it reaches the front (or by a compaction when tombstones pile up behind a straggler).
//! Leases walk the front and acks mostly land near it, so the memory touched stays small and
//! warm, unlike a hash map whose every access is a cache miss once it holds millions.

use std::collections::VecDeque;

use crate::state::Msg;

#[derive(Debug, Default)]
pub(crate) struct MsgTable {
    slots: VecDeque<(u64, Option<Msg>)>,
    live: usize,
}

impl MsgTable {
    fn find(&self, id: u64) -> Result<usize, usize> {
        let (Some(&(front, _)), Some(&(back, _))) = (self.slots.front(), self.slots.back()) else {
            return Err(0);
        };
        if id < front {
            return Err(0);
        }
        if id > back {
            return Err(self.slots.len());
        }
        // Ids grow by at least one per slot, so `id - front` bounds the index from above, and
        // is the index itself when the queue's ids are contiguous (one producer queue: the
        // common case). Check there first, then search below it.
        let guess = usize::try_from(id - front)
            .map_or(self.slots.len() - 1, |g| g.min(self.slots.len() - 1));
        match self.slots[guess].0.cmp(&id) {
            std::cmp::Ordering::Equal => Ok(guess),
            std::cmp::Ordering::Greater => self.search_below(id, guess),
            // Unreachable by the bound above; searched in full to stay correct regardless.
            std::cmp::Ordering::Less => self.search_below(id, self.slots.len()),
        }
    }

    fn search_below(&self, id: u64, end: usize) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.slots[mid].0.cmp(&id) {
                std::cmp::Ordering::Equal => return Ok(mid),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Err(lo)
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn contains_key(&self, id: u64) -> bool {
        self.get(id).is_some()
    }

    pub fn get(&self, id: u64) -> Option<&Msg> {
        let i = self.find(id).ok()?;
        self.slots[i].1.as_ref()
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Msg> {
        let i = self.find(id).ok()?;
        self.slots[i].1.as_mut()
    }

    /// Inserts a message (ids normally arrive in increasing order; an older id, possible only
    /// after damaged frames were skipped, is inserted in place).
    pub fn insert(&mut self, id: u64, m: Msg) {
        match self.find(id) {
            Ok(i) => {
                if self.slots[i].1.is_none() {
                    self.live += 1;
                }
                self.slots[i].1 = Some(m);
            }
            Err(i) => {
                if i == self.slots.len() {
                    self.slots.push_back((id, Some(m)));
                } else {
                    self.slots.insert(i, (id, Some(m)));
                }
                self.live += 1;
            }
        }
    }

    pub fn remove(&mut self, id: u64) -> Option<Msg> {
        let i = self.find(id).ok()?;
        let m = self.slots[i].1.take()?;
        self.live -= 1;
        while self.slots.front().is_some_and(|(_, m)| m.is_none()) {
            self.slots.pop_front();
        }
        while self.slots.back().is_some_and(|(_, m)| m.is_none()) {
            self.slots.pop_back();
        }
        // A straggler at the front can keep many tombstones alive: compact when they
        // outnumber the live messages (amortized O(1) per removal).
        let dead = self.slots.len() - self.live;
        if dead > 1024 && dead > 2 * self.live {
            self.slots.retain(|(_, m)| m.is_some());
        }
        Some(m)
    }

    /// Live messages in id order.
    pub fn values(&self) -> impl Iterator<Item = &Msg> + '_ {
        self.slots.iter().filter_map(|(_, m)| m.as_ref())
    }

    /// Ids of live messages in id order.
    pub fn keys(&self) -> impl Iterator<Item = &u64> + '_ {
        self.slots
            .iter()
            .filter_map(|(id, m)| m.as_ref().map(|_| id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{MessageState, Msg};

    fn msg(id: u64) -> Msg {
        Msg {
            id,
            priority: 0,
            enqueued_ms: 0,
            expires_ms: 0,
            payload: bytes::Bytes::new(),
            receive_count: 0,
            lease_gen: 0,
            first_received_ms: 0,
            state: MessageState::Ready,
            ticket: 0,
            delivered: false,
            extra: None,
        }
    }

    #[test]
    fn behaves_like_a_map_in_any_order_of_operations() {
        let mut t = MsgTable::default();
        let mut model = std::collections::BTreeSet::new();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = 1u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 4 {
                0 | 1 => {
                    t.insert(next, msg(next));
                    model.insert(next);
                    next += 1 + x % 3;
                }
                2 => {
                    let id = if next > 1 { 1 + (x >> 8) % next } else { 1 };
                    assert_eq!(t.remove(id).is_some(), model.remove(&id));
                }
                _ => {
                    let id = 1 + (x >> 8) % (next + 2);
                    assert_eq!(t.get(id).map(|m| m.id), model.get(&id).copied());
                }
            }
            assert_eq!(t.len(), model.len());
        }
        let keys: Vec<u64> = t.keys().copied().collect();
        assert_eq!(keys, model.iter().copied().collect::<Vec<_>>());
        // An old id (after skipped damage) is inserted in place.
        t.insert(0, msg(0));
        assert_eq!(t.keys().next(), Some(&0));
    }
}
