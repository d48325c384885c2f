//! Sets of disjoint `u64` ranges, kept merged: the reliability layer's
//! received packet numbers, and its acknowledged and lost stream bytes.

use std::collections::BTreeMap;

/// A set of disjoint ranges `start..end`, kept merged.
#[derive(Clone, Debug, Default)]
pub struct Ranges(pub BTreeMap<u64, u64>);

impl Ranges {
    pub fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        let touching: Vec<(u64, u64)> =
            self.0.range(..=end).rev().take_while(|(_, &e)| e >= start).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in touching {
            self.0.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.0.insert(start, end);
    }

    pub fn remove_below(&mut self, floor: u64) {
        let below: Vec<(u64, u64)> = self.0.range(..floor).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in below {
            self.0.remove(&s);
            if e > floor {
                self.0.insert(floor, e);
            }
        }
    }

    pub fn contains(&self, x: u64) -> bool {
        self.0.range(..=x).next_back().is_some_and(|(_, &e)| x < e)
    }

    /// The part of `start..end` not in the set, first piece only.
    pub fn first_gap(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        let mut at = start;
        if let Some((_, &e)) = self.0.range(..=at).next_back() {
            at = at.max(e);
        }
        if at >= end {
            return None;
        }
        let stop = self.0.range(at..end).next().map_or(end, |(&s, _)| s);
        Some((at, stop))
    }

    pub fn first(&self) -> Option<(u64, u64)> {
        self.0.iter().next().map(|(&s, &e)| (s, e))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn pop_first(&mut self) {
        if let Some((&s, _)) = self.0.iter().next() {
            self.0.remove(&s);
        }
    }

    /// The set without `start..end`.
    pub fn without(&self, start: u64, end: u64) -> Ranges {
        let mut out = Ranges::default();
        for (&s, &e) in &self.0 {
            if e <= start || s >= end {
                out.0.insert(s, e);
                continue;
            }
            if s < start {
                out.0.insert(s, start);
            }
            if e > end {
                out.0.insert(end, e);
            }
        }
        out
    }
}
