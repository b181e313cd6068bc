//! A map keyed by `out_trade_no` that holds our own ids compactly. Ours are
//! the order id's 32 lowercase hex digits (`OrderId::out_trade_no`): as two
//! `u64`s a key takes 16 bytes inline instead of a 24-byte `String` and its
//! 32-byte allocation, which for a day of a million orders is the
//! difference between a flat and a growing reconciliation. Anything else a
//! bill may carry (another shop's number, upper-case hex) stays text, so
//! that two keys are equal exactly when their strings are.

use std::collections::HashMap;

type Id = (u64, u64);

#[derive(Debug)]
pub(super) struct KeyMap<V> {
    ids: HashMap<Id, V>,
    other: HashMap<Box<str>, V>,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
            ids: HashMap::new(),
            other: HashMap::new(),
        }
    }
}

/// The compact form of `otn` when it is 32 lowercase hex digits.
fn id_of(otn: &str) -> Option<Id> {
    let b = otn.as_bytes();
    if b.len() != 32 || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let hi = u64::from_str_radix(&otn[..16], 16).ok()?;
    let lo = u64::from_str_radix(&otn[16..], 16).ok()?;
    Some((hi, lo))
}

fn text_of(id: &Id) -> String {
    format!("{:016x}{:016x}", id.0, id.1)
}

impl<V> KeyMap<V> {
    pub(super) fn with_capacity(n: usize) -> Self {
        KeyMap {
            ids: HashMap::with_capacity(n),
            other: HashMap::new(),
        }
    }

    pub(super) fn get(&self, otn: &str) -> Option<&V> {
        match id_of(otn) {
            Some(id) => self.ids.get(&id),
            None => self.other.get(otn),
        }
    }

    pub(super) fn get_or_insert_with(&mut self, otn: &str, make: impl FnOnce() -> V) -> &mut V {
        match id_of(otn) {
            Some(id) => self.ids.entry(id).or_insert_with(make),
            None => self.other.entry(otn.into()).or_insert_with(make),
        }
    }

    /// Every entry with its key as text (allocated here: for the findings
    /// at the end of a run, not for the rows).
    pub(super) fn iter_text(&self) -> impl Iterator<Item = (String, &V)> {
        let ids = self.ids.iter().map(|(id, v)| (text_of(id), v));
        let other = self.other.iter().map(|(k, v)| (k.to_string(), v));
        ids.chain(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_ids_are_compact_and_round_trip() {
        let ours = "0193a5c27d4e7b219c1f5e8a0b6d2f10";
        assert_eq!(id_of(ours).map(|id| text_of(&id)).as_deref(), Some(ours));
        // Not ours: kept as text, so that equality stays the strings'.
        assert_eq!(id_of("0193A5C27D4E7B219C1F5E8A0B6D2F10"), None);
        assert_eq!(id_of("0193a5c2"), None);
        assert_eq!(id_of("+193a5c27d4e7b219c1f5e8a0b6d2f10"), None);
        let mut m = KeyMap::default();
        *m.get_or_insert_with(ours, || 0) += 1;
        *m.get_or_insert_with("x-1", || 0) += 2;
        *m.get_or_insert_with(ours, || 0) += 1;
        assert_eq!(m.get(ours), Some(&2));
        assert_eq!(m.get("x-1"), Some(&2));
        assert_eq!(m.get("0193A5C27D4E7B219C1F5E8A0B6D2F10"), None);
        let mut all: Vec<(String, i32)> = m.iter_text().map(|(k, v)| (k, *v)).collect();
        all.sort();
        assert_eq!(all, vec![(ours.to_string(), 2), ("x-1".to_string(), 2)]);
    }
}
