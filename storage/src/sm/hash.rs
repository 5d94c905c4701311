//! A keyed fast hash for the state machine's in-memory maps (dedup index, ad intern
//! table, counters, pending deltas), which apply hits several times per click.
//!
//! std's default hasher (SipHash-1-3) was ~6% of apply. Its replacement still has to be
//! *keyed*: event ids and ad ids are chosen by whoever sends clicks, and with an unkeyed
//! hash (FxHash, plain xxh3) a sender who knows the function could craft ids that collide
//! and turn the dedup index's lookups linear, slowing every click of the group. Here each
//! map gets a key drawn from the OS's randomness (through std's `RandomState`); byte
//! strings are hashed by xxh3 seeded with it and integers by a folded multiply with it.
//! This is not a cryptographic PRF like SipHash. Seeded xxh3 has known seed-independent
//! collision pairs (xxHash issue #1127: chosen 17–240-byte message pairs that collide with
//! probability about 2^-27 whatever the seed), so a determined sender can make some ids
//! collide more often than chance; what it cannot do cheaply is build the long collision
//! chains a flood needs without seeing the key or any hash value (nothing we return
//! depends on these maps' iteration order). That is the bar we accept for a ~4x cheaper
//! hash; a deployment facing hostile producers should put SipHash back on the maps keyed
//! by sender-chosen bytes (dedup index, ad table, pending per-ad deltas).
//!
//! Determinism is unaffected: hash maps only find things, they never decide an outcome
//! or order a stored byte (see the invariants in [`crate::sm`]), so a per-process key is
//! fine.

use std::collections::hash_map::RandomState;

/// Implements `Borrow<[u8]>`, `Hash`, `PartialEq` and `Eq` for a key type that stands for
/// a byte string (`$bytes` returns it), so a map keyed by it can be searched with a
/// `&[u8]`: the type hashes and compares exactly as its bytes (the `Borrow` contract).
macro_rules! bytes_key {
    ($ty:ty, $bytes:ident) => {
        impl std::borrow::Borrow<[u8]> for $ty {
            fn borrow(&self) -> &[u8] {
                self.$bytes()
            }
        }

        impl std::hash::Hash for $ty {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.$bytes().hash(state);
            }
        }

        impl PartialEq for $ty {
            fn eq(&self, other: &Self) -> bool {
                self.$bytes() == other.$bytes()
            }
        }

        impl Eq for $ty {}
    };
}
pub(crate) use bytes_key;
use std::hash::{BuildHasher, Hasher};

/// An odd constant with well-mixed bits (the golden ratio's), so that keys derived from
/// it never make the multiply degenerate.
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// 64x64 -> 128-bit multiply, high and low halves xored: every input bit reaches many
/// output bits, high and low (hashbrown uses both).
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Builds [`KeyedHasher`]s with a random key per instance.
#[derive(Debug, Clone, Copy)]
pub struct KeyedState {
    seed: u64,
    mul: u64,
}

impl Default for KeyedState {
    fn default() -> Self {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(MIX);
        let seed = h.finish();
        h.write_u64(seed);
        // Odd, so the multiply by it is a bijection before the fold.
        let mul = h.finish() | 1;
        KeyedState { seed, mul }
    }
}

impl BuildHasher for KeyedState {
    type Hasher = KeyedHasher;

    #[inline]
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher {
            seed: self.seed,
            mul: self.mul,
            acc: self.seed ^ MIX,
        }
    }
}

/// See the module doc.
#[derive(Debug, Clone)]
pub struct KeyedHasher {
    seed: u64,
    mul: u64,
    acc: u64,
}

impl Hasher for KeyedHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.seed);
        self.acc = fold_mul(self.acc ^ h, self.mul);
    }

    #[inline]
    fn write_u8(&mut self, x: u8) {
        self.write_u64(u64::from(x));
    }

    #[inline]
    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.acc = fold_mul(self.acc ^ x, self.mul);
    }

    #[inline]
    fn write_i64(&mut self, x: i64) {
        self.write_u64(x as u64);
    }

    #[inline]
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // One more round so that the last word written is mixed into the high bits too.
        fold_mul(self.acc, MIX)
    }
}

/// A `HashMap` with the keyed fast hash.
pub type FastMap<K, V> = std::collections::HashMap<K, V, KeyedState>;

/// A `HashSet` with the keyed fast hash.
pub type FastSet<K> = std::collections::HashSet<K, KeyedState>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hash;

    fn hash<T: Hash + ?Sized>(s: &KeyedState, v: &T) -> u64 {
        s.hash_one(v)
    }

    #[test]
    fn equal_values_hash_alike_and_keys_differ_per_state() {
        let (a, b) = (KeyedState::default(), KeyedState::default());
        assert_eq!(hash(&a, b"ad-1".as_slice()), hash(&a, b"ad-1".as_slice()));
        assert_ne!(hash(&a, b"ad-1".as_slice()), hash(&a, b"ad-2".as_slice()));
        assert_ne!(hash(&a, &7u32), hash(&a, &8u32));
        assert_ne!(
            hash(&a, b"ad-1".as_slice()),
            hash(&b, b"ad-1".as_slice()),
            "two states must not share a key"
        );
    }

    #[test]
    fn sequential_integers_spread_over_buckets() {
        // hashbrown takes the bucket from the low bits and a tag from the top 7 bits.
        let s = KeyedState::default();
        let mut low = FastSet::default();
        let mut top = FastSet::default();
        for i in 0u32..4096 {
            let h = hash(&s, &i);
            low.insert(h & 1023);
            top.insert(h >> 57);
        }
        assert!(low.len() > 900, "only {} of 1024 low patterns", low.len());
        assert_eq!(top.len(), 128, "top 7 bits do not vary");
    }
}
