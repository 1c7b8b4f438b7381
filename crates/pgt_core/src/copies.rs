//! Numbering equal rows: counting how often each 64-bit key was seen.

use std::collections::TryReserveError;

/// Counts the copies of each key (a 64-bit hash) seen so far: what a FULL
/// refresh that swaps in a new heap needs to number equal rows as it stores
/// them (the `k`-th copy of a content gets identity `b XOR (k − 1) · stride`).
///
/// Identities are 64-bit hashes, and nearly all of them occur once: the keys
/// go into an open-addressing table of bare `u64`s (linear probing, at most
/// half full, indexed by the high bits of the key times a Fibonacci constant,
/// so that keys that are not hashes spread too), and only keys seen twice
/// get a count in a second, small map. One probe of 8 bytes per row keeps a
/// million rows' table at 16 MiB, where a general map of (key, count) pairs
/// with control bytes took twice that and two cache misses a row (200 ms of a
/// 850 ms refresh of a million rows).
pub struct CopyCounter {
    /// Keys seen, 0 for an empty slot (key 0 itself is `zero_seen`).
    slots: Vec<u64>,
    /// `slots.len()`'s base-2 logarithm.
    bits: u32,
    /// Keys stored in `slots`.
    len: usize,
    /// Whether key 0 was seen.
    zero_seen: bool,
    /// Copies seen of keys seen more than once.
    repeated: std::collections::HashMap<u64, i64>,
}

impl CopyCounter {
    /// A counter sized for about `expected` distinct keys: a table of
    /// `8 × next_power_of_two(2 × max(expected, 512))` bytes, doubled as keys
    /// come.
    ///
    /// # Errors
    /// The allocator's, when that memory is not available.
    pub fn with_capacity(expected: usize) -> Result<CopyCounter, TryReserveError> {
        let bits = (expected.max(512) * 2).next_power_of_two().trailing_zeros();
        Ok(CopyCounter { slots: zeroed(1 << bits)?, bits, len: 0, zero_seen: false, repeated: Default::default() })
    }

    /// Counts one more copy of `key`; returns how many were seen before it.
    ///
    /// # Errors
    /// The allocator's, when the table must grow and cannot.
    pub fn count(&mut self, key: u64) -> Result<i64, TryReserveError> {
        let seen_before = if key == 0 { std::mem::replace(&mut self.zero_seen, true) } else { !self.insert(key)? };
        if !seen_before {
            return Ok(0);
        }
        let copies = self.repeated.entry(key).or_insert(1);
        *copies += 1;
        Ok(*copies - 1)
    }

    /// Adds nonzero `key`; false when it was there already.
    fn insert(&mut self, key: u64) -> Result<bool, TryReserveError> {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow()?;
        }
        let mask = self.slots.len() - 1;
        let mut at = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - self.bits)) as usize;
        loop {
            match self.slots[at] {
                0 => {
                    self.slots[at] = key;
                    self.len += 1;
                    return Ok(true);
                }
                k if k == key => return Ok(false),
                _ => at = (at + 1) & mask,
            }
        }
    }

    /// Doubles the table.
    fn grow(&mut self) -> Result<(), TryReserveError> {
        let bigger = zeroed(1 << (self.bits + 1))?;
        let old = std::mem::replace(&mut self.slots, bigger);
        self.bits += 1;
        self.len = 0;
        for key in old.into_iter().filter(|k| *k != 0) {
            self.insert(key)?;
        }
        Ok(())
    }
}

/// `n` zeroes, or the allocator's error.
fn zeroed(n: usize) -> Result<Vec<u64>, TryReserveError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)?;
    v.resize(n, 0);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::CopyCounter;

    /// Against a plain map, over keys with many repeats, key 0, keys sharing
    /// their high bits (long probe runs) and growth from a small table.
    #[test]
    fn copy_counter_counts_like_a_map() {
        let mut counter = CopyCounter::with_capacity(0).expect("memory");
        let mut expected = std::collections::HashMap::<u64, i64>::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = match i % 7 {
                0 => 0,
                1 => x % 1000,
                2 => (x & 0xffff_0000_0000_0000) | (i % 50),
                _ => x,
            };
            let before = expected.entry(key).or_insert(0);
            assert_eq!(counter.count(key).expect("memory"), *before, "key {key} at {i}");
            *before += 1;
        }
    }

    /// Consecutive integers (identities that are not hashes) twice over.
    #[test]
    fn consecutive_keys_spread() {
        let mut counter = CopyCounter::with_capacity(10).expect("memory");
        for round in 0..2 {
            for key in 1..300_000u64 {
                assert_eq!(counter.count(key).expect("memory"), round);
            }
        }
    }
}
