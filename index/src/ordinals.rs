//! Each doc's value of level, service, host or tenant as a small number,
//! built from a segment's value bitmaps ([`crate::bitmaps`]) when top
//! values of that field are first asked of the segment, and kept with
//! them. Top values of a query the bitmaps do not answer alone (a word, a
//! time range) count each match by it: one lookup a match, where gathering
//! the matches into a bitmap and intersecting it with each value's took
//! half again as long as tantivy's column did (`index-pages --kind
//! top-services`). One byte a doc for a field of fewer than 255 values in
//! the segment, two for fewer than 65,535; a field of more is tallied
//! against its bitmaps instead.

use std::collections::HashMap;

use roaring::RoaringBitmap;

use crate::bitmaps::ValueBitmaps;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Ordinals {
    /// The values, by ordinal.
    values: Vec<String>,
    of_doc: OfDoc,
}

/// Each doc's ordinal; the largest number of the width stands for no value
/// (a value too long for tantivy to index, say). Deleted docs keep theirs
/// until a merge drops them: tantivy leaves them out of the matches.
#[derive(Debug)]
enum OfDoc {
    Narrow(Vec<u8>),
    Wide(Vec<u16>),
}

impl Ordinals {
    /// The ordinals of `values` over docs `0..max_doc`; `None` for more
    /// values than two bytes tell apart.
    pub(crate) fn build(values: &ValueBitmaps, max_doc: u32) -> Option<Ordinals> {
        let (names, bitmaps): (Vec<String>, Vec<&RoaringBitmap>) =
            values.iter().map(|(name, b)| (name.clone(), b)).unzip();
        let docs = usize::try_from(max_doc).ok()?;
        let of_doc = if let Ok(below) = u8::try_from(names.len())
            && below < u8::MAX
        {
            OfDoc::Narrow(assign(&bitmaps, docs, u8::MAX))
        } else if let Ok(below) = u16::try_from(names.len())
            && below < u16::MAX
        {
            OfDoc::Wide(assign(&bitmaps, docs, u16::MAX))
        } else {
            return None;
        };
        Some(Ordinals {
            values: names,
            of_doc,
        })
    }

    /// How many values there are (and counts to keep).
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    /// Adds each of `docs` to the count of its value.
    pub(crate) fn count(&self, docs: &[u32], counts: &mut [u64]) {
        match &self.of_doc {
            OfDoc::Narrow(of) => count_by(of, docs, counts),
            OfDoc::Wide(of) => count_by(of, docs, counts),
        }
    }

    /// The values counted at least once, with their counts.
    pub(crate) fn tally(&self, counts: &[u64]) -> HashMap<String, u64> {
        let counted = self.values.iter().zip(counts).filter(|(_, n)| **n > 0);
        counted.map(|(value, n)| (value.clone(), *n)).collect()
    }

    /// Bytes held in memory.
    pub(crate) fn bytes(&self) -> u64 {
        let of_doc = match &self.of_doc {
            OfDoc::Narrow(of) => of.len(),
            OfDoc::Wide(of) => of.len() * 2,
        };
        let values: usize = self.values.iter().map(String::len).sum();
        (of_doc + values) as u64
    }
}

/// Each doc's ordinal: the index of the bitmap that holds it, `none` where
/// none does.
fn assign<T: Copy + TryFrom<usize>>(bitmaps: &[&RoaringBitmap], docs: usize, none: T) -> Vec<T> {
    let mut of = vec![none; docs];
    for (ordinal, bitmap) in bitmaps.iter().enumerate() {
        let Ok(ordinal) = T::try_from(ordinal) else {
            continue;
        };
        for doc in bitmap.iter() {
            if let Some(slot) = usize::try_from(doc).ok().and_then(|d| of.get_mut(d)) {
                *slot = ordinal;
            }
        }
    }
    of
}

fn count_by<T: Copy + Into<usize>>(of: &[T], docs: &[u32], counts: &mut [u64]) {
    for &doc in docs {
        let ordinal = usize::try_from(doc).ok().and_then(|d| of.get(d));
        // The no-value ordinal is past the counts: not counted.
        if let Some(count) = ordinal.and_then(|&o| counts.get_mut(o.into())) {
            *count += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &[u32])]) -> ValueBitmaps {
        pairs
            .iter()
            .map(|(name, docs)| ((*name).to_owned(), docs.iter().copied().collect()))
            .collect()
    }

    #[test]
    fn matches_are_counted_by_their_value() {
        let values = values(&[("info", &[0, 2, 3]), ("error", &[1, 5])]);
        let ordinals = Ordinals::build(&values, 7).unwrap();
        let mut counts = vec![0; ordinals.len()];
        // Doc 4 and 6 hold no value; doc 9 is past the segment.
        ordinals.count(&[0, 1, 3, 4, 5, 6, 9], &mut counts);
        let tally = ordinals.tally(&counts);
        assert_eq!(tally.len(), 2);
        assert_eq!((tally["info"], tally["error"]), (2, 2));
    }

    /// 254 values fit a byte a doc, 255 take two, and more than two bytes
    /// tell apart are left to the bitmaps.
    #[test]
    fn the_width_follows_the_values() {
        let many = |n: u32| -> ValueBitmaps {
            (0..n)
                .map(|i| (format!("h{i}"), [i].into_iter().collect()))
                .collect()
        };
        let narrow = Ordinals::build(&many(254), 70_000).unwrap();
        assert!(matches!(narrow.of_doc, OfDoc::Narrow(_)));
        let wide = Ordinals::build(&many(255), 70_000).unwrap();
        assert!(matches!(wide.of_doc, OfDoc::Wide(_)));
        let mut counts = vec![0; wide.len()];
        wide.count(&[254, 69_999], &mut counts);
        assert_eq!(wide.tally(&counts), HashMap::from([("h254".to_owned(), 1)]));
        assert!(Ordinals::build(&many(65_535), 70_000).is_none());
    }
}
