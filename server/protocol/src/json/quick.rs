//! A scanner of the common line: one flat object whose values are strings
//! without escapes, integers, booleans and nulls, with an `attrs` object
//! of the same. It reads such a line into the same [`Draft`] serde_json's
//! path does, with a few comparisons a byte and no visitor calls; any
//! other line (an escape, a float, a nested value or an array, malformed
//! JSON) it leaves to serde_json, which also words the error. A property
//! test compares the two on generated and damaged lines.

use std::borrow::Cow;

use super::{Draft, Scalar, Shape, add_attr};

/// The draft of `line`, if it is a line of the common kind.
pub(super) fn draft<'de>(line: &'de str, shape: &Shape) -> Option<Draft<'de>> {
    let mut scan = Scanner { text: line, at: 0 };
    let mut draft = Draft::default();
    scan.expect(b'{')?;
    if !scan.eat(b'}') {
        loop {
            let key = scan.string()?;
            scan.expect(b':')?;
            if key == "seq" {
                scan.scalar()?;
            } else if key == "attrs" {
                scan.attrs(&mut draft.attrs)?;
            } else if let Some((slot, rank)) = shape.slot(key) {
                let value = scan.scalar()?;
                draft.offer(slot, rank, Cow::Borrowed(key), value);
            } else {
                let value = scan.scalar()?;
                add_attr(&mut draft.others, key.to_owned(), value);
            }
            if !scan.eat(b',') {
                scan.expect(b'}')?;
                break;
            }
        }
    }
    scan.end().then_some(draft)
}

struct Scanner<'de> {
    text: &'de str,
    at: usize,
}

impl<'de> Scanner<'de> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// Past JSON's whitespace.
    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Past whitespace, then past `byte` if it comes next.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip_space();
        let found = self.peek() == Some(byte);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// Whether only whitespace is left.
    fn end(&mut self) -> bool {
        self.skip_space();
        self.at == self.text.len()
    }

    /// A string without escapes (which JSON needs for control characters
    /// too), borrowed from the line.
    fn string(&mut self) -> Option<&'de str> {
        self.expect(b'"')?;
        let start = self.at;
        self.at = special(self.text.as_bytes(), start)?;
        if self.peek()? != b'"' {
            return None;
        }
        let text = self.text.get(start..self.at)?;
        self.at += 1;
        Some(text)
    }

    /// A value other than an object or an array.
    fn scalar(&mut self) -> Option<Scalar<'de>> {
        self.skip_space();
        match self.peek()? {
            b'"' => self.string().map(|text| Scalar::Text(Cow::Borrowed(text))),
            b't' => self
                .word("true")
                .map(|()| Scalar::Text(Cow::Borrowed("true"))),
            b'f' => self
                .word("false")
                .map(|()| Scalar::Text(Cow::Borrowed("false"))),
            b'n' => self.word("null").map(|()| Scalar::Null),
            _ => self.integer().map(Scalar::Int),
        }
    }

    fn word(&mut self, word: &str) -> Option<()> {
        let end = self.at + word.len();
        (self.text.as_bytes().get(self.at..end)? == word.as_bytes()).then(|| self.at = end)
    }

    /// An integer as serde_json reads one into an `i64`: no fraction or
    /// exponent, no leading zero, not `-0` (which it reads as a float),
    /// and at most 18 digits, which always fit.
    fn integer(&mut self) -> Option<i64> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        let digits = self.text.as_bytes().get(start..self.at)?;
        let leading_zero = digits.len() > 1 && digits.first() == Some(&b'0');
        let fraction = matches!(self.peek(), Some(b'.' | b'e' | b'E'));
        if digits.is_empty() || digits.len() > 18 || leading_zero || fraction {
            return None;
        }
        let value = digits
            .iter()
            .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
        match (negative, value) {
            (true, 0) => None,
            (true, _) => Some(-value),
            (false, _) => Some(value),
        }
    }

    /// The `attrs` object, its values added to `out` as attributes.
    fn attrs(&mut self, out: &mut Vec<(String, String)>) -> Option<()> {
        self.expect(b'{')?;
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            let value = self.scalar()?;
            add_attr(out, key.to_owned(), value);
            if !self.eat(b',') {
                return self.expect(b'}');
            }
        }
    }
}

/// Where the first quote, backslash or control character at or after `at`
/// is, looked for eight bytes at a time (as serde_json does): a message is
/// most of a line.
fn special(bytes: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    // A byte's high bit is set where it is `b`: exact at the lowest such
    // byte (a borrow only carries past a byte that is a match).
    let equal = |word: u64, b: u8| {
        let x = word ^ (ONES * u64::from(b));
        x.wrapping_sub(ONES) & !x & HIGH
    };
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
        let found = equal(word, b'"') | equal(word, b'\\') | control;
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let rest = bytes.get(at..)?;
    let offset = rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(at + offset)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::special;

    proptest! {
        /// Eight bytes at a time finds what a byte at a time does.
        #[test]
        fn special_bytes_are_found_as_one_by_one(
            bytes in proptest::collection::vec(prop_oneof![
                8 => 0x20u8..=0x7f,
                1 => Just(b'"'),
                1 => Just(b'\\'),
                1 => 0u8..0x20,
                2 => 0x80u8..=0xff,
            ], 0..40),
            from in 0usize..40,
        ) {
            let naive = bytes
                .iter()
                .enumerate()
                .skip(from)
                .find(|&(_, &b)| b == b'"' || b == b'\\' || b < 0x20)
                .map(|(i, _)| i);
            prop_assert_eq!(special(&bytes, from), naive);
        }
    }
}
