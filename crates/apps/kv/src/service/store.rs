//! The store's entries: ordered by key (for `KEYS` and the snapshot's parts) and indexed by a
//! hash of the key (for point reads and writes).
//!
//! A B-tree alone made every `SET` a search of the whole ordered map: at half a million keys,
//! six or seven nodes, each a cache miss and up to eleven key comparisons, 12.8% of a crash
//! leader's CPU under `shieldwall bench` (perf, 16 clients x 32 requests). Here values live in
//! slots; the B-tree maps each key to its slot (walked in order, never searched on the hot
//! path) and a hash table does the same for lookups. Overwriting or reading a key costs one
//! hash-table probe; only adding or removing a key touches the B-tree too. The hash table's
//! order is never observed (it is only searched), so its random seed (foldhash's, per table)
//! cannot make replicas diverge, and it keeps clients from choosing keys that collide.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use super::Key;

/// The entries: each key once in `order` and once in `index`, both naming its value's slot.
#[derive(Clone, Debug, Default)]
pub(crate) struct Store {
    order: BTreeMap<Key, usize>,
    index: HashMap<Key, usize, foldhash::fast::RandomState>,
    /// Values by slot; a slot in `free` holds an empty vector.
    values: Vec<Vec<u8>>,
    free: Vec<usize>,
}

impl PartialEq for Store {
    /// The same entries (slots and room do not matter).
    fn eq(&self, other: &Store) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Store {}

impl Store {
    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there are no keys.
    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The value of `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.index.get(key).map(|&slot| &self.values[slot])
    }

    /// The slot of `key`'s value, to read it ([`Store::value`]) and then replace it
    /// ([`Store::replace`]) with one search.
    pub(crate) fn slot(&self, key: &[u8]) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// The value in `slot` (from [`Store::slot`], with no insert or remove since).
    pub(crate) fn value(&self, slot: usize) -> &Vec<u8> {
        &self.values[slot]
    }

    /// Replaces the value in `slot` (from [`Store::slot`], with no insert or remove since).
    pub(crate) fn replace(&mut self, slot: usize, value: Vec<u8>) -> Vec<u8> {
        std::mem::replace(&mut self.values[slot], value)
    }

    /// The value of `key`, to change in place.
    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<&mut Vec<u8>> {
        self.index.get(key).map(|&slot| &mut self.values[slot])
    }

    /// Whether `key` has a value.
    pub(crate) fn contains_key(&self, key: &[u8]) -> bool {
        self.index.contains_key(key)
    }

    /// Sets `key` to `value`; returns the value it replaces.
    pub(crate) fn insert(&mut self, key: &[u8], value: Vec<u8>) -> Option<Vec<u8>> {
        if let Some(&slot) = self.index.get(key) {
            return Some(std::mem::replace(&mut self.values[slot], value));
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.values[slot] = value;
                slot
            }
            None => {
                self.values.push(value);
                self.values.len() - 1
            }
        };
        self.index.insert(Key::from(key), slot);
        self.order.insert(Key::from(key), slot);
        None
    }

    /// Removes `key`; returns its value.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let slot = self.index.remove(key)?;
        self.order.remove(key);
        self.free.push(slot);
        Some(std::mem::take(&mut self.values[slot]))
    }

    /// Removes every key and gives the room back.
    pub(crate) fn clear(&mut self) {
        *self = Store::default();
    }

    /// The entries in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Key, &Vec<u8>)> {
        self.order
            .iter()
            .map(|(key, &slot)| (key, &self.values[slot]))
    }

    /// The entries from `start` on, in key order.
    pub(crate) fn from(&self, start: Bound<&[u8]>) -> impl Iterator<Item = (&Key, &Vec<u8>)> {
        self.order
            .range::<[u8], _>((start, Bound::Unbounded))
            .map(|(key, &slot)| (key, &self.values[slot]))
    }
}

impl FromIterator<(Vec<u8>, Vec<u8>)> for Store {
    /// The store of `entries`; a later entry for a key replaces an earlier one.
    fn from_iter<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(entries: I) -> Store {
        let mut store = Store::default();
        for (key, value) in entries {
            store.insert(&key, value);
        }
        store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any sequence of inserts and removes leaves the store holding what a `BTreeMap`
        /// given the same sequence holds, in the same order, with every lookup agreeing.
        #[test]
        fn behaves_as_an_ordered_map(
            ops in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(0u8..4, 0..30), any::<u8>()),
                0..200,
            )
        ) {
            let mut store = Store::default();
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for (insert, key, v) in ops {
                if insert {
                    prop_assert_eq!(store.insert(&key, vec![v]), model.insert(key.clone(), vec![v]));
                } else {
                    prop_assert_eq!(store.remove(&key), model.remove(&key));
                }
                prop_assert_eq!(store.get(&key), model.get(&key));
                prop_assert_eq!(store.contains_key(&key), model.contains_key(&key));
            }
            prop_assert_eq!(store.len(), model.len());
            prop_assert!(store.iter().map(|(k, v)| (k.to_vec(), v.clone())).eq(model.clone()));
            let rebuilt: Store = model.clone().into_iter().collect();
            prop_assert_eq!(&rebuilt, &store);
            let mid: &[u8] = &[1, 2];
            prop_assert!(store
                .from(Bound::Excluded(mid))
                .map(|(k, v)| (k.to_vec(), v.clone()))
                .eq(model.range::<[u8], _>((Bound::Excluded(mid), Bound::Unbounded))
                    .map(|(k, v)| (k.clone(), v.clone()))));
            store.clear();
            prop_assert!(store.is_empty());
        }
    }
}
