//! A deterministic corpus of realistic log records.
//!
//! Vocabulary: the event templates of the eight loghub samples, with the
//! values seen in each slot (`vocab/loghub.json`, built by
//! `vocab/build_vocab.py`). Each record picks a source, then a template by
//! its frequency in that source, then fills each slot with a seen value
//! whose digits are redrawn, so numbers, addresses and ids vary the way
//! real ones do while words keep their real frequencies.

use std::sync::OnceLock;

use lode_engine::{Level, LogRecord};
use serde::Deserialize;

use crate::rng::SplitMix64;

const VOCAB: &str = include_str!("../vocab/loghub.json");
/// 2026-01-01T00:00:00Z in ns.
const BASE_TS: i64 = 1_767_225_600_000_000_000;
/// Mean gap between consecutive records (ns).
const STEP_NS: i64 = 10_000_000;
const HOSTS_PER_SOURCE: u64 = 16;

#[derive(Debug, Deserialize)]
struct Template {
    source: String,
    component: String,
    level: String,
    template: String,
    weight: u64,
    slots: Vec<Vec<String>>,
}

#[derive(Debug)]
struct Source {
    templates: Vec<Template>,
    /// Running sums of template weights, for weighted choice.
    cumulative: Vec<u64>,
}

fn sources() -> &'static [Source] {
    static SOURCES: OnceLock<Vec<Source>> = OnceLock::new();
    SOURCES.get_or_init(|| {
        let templates: Vec<Template> = serde_json::from_str(VOCAB).unwrap_or_default();
        let mut by_source: Vec<Source> = Vec::new();
        for template in templates {
            let same = by_source.last().is_some_and(|s| {
                s.templates
                    .first()
                    .is_some_and(|t| t.source == template.source)
            });
            if !same {
                by_source.push(Source {
                    templates: Vec::new(),
                    cumulative: Vec::new(),
                });
            }
            if let Some(source) = by_source.last_mut() {
                let total = source.cumulative.last().copied().unwrap_or(0) + template.weight.max(1);
                source.cumulative.push(total);
                source.templates.push(template);
            }
        }
        by_source
    })
}

/// An endless, seeded stream of records; the same seed gives the same
/// records everywhere.
#[derive(Debug, Clone)]
pub struct Corpus {
    rng: SplitMix64,
    index: i64,
}

impl Corpus {
    pub fn new(seed: u64) -> Corpus {
        Corpus {
            rng: SplitMix64::new(seed),
            index: 0,
        }
    }

    /// The next `n` records.
    pub fn take_records(&mut self, n: usize) -> Vec<LogRecord> {
        (0..n).map(|_| self.next_record()).collect()
    }

    pub fn next_record(&mut self) -> LogRecord {
        let sources = sources();
        let ts = BASE_TS + self.index * STEP_NS + self.rng.below(STEP_NS as u64) as i64;
        self.index += 1;
        let Some(source) = sources.get(self.rng.below(sources.len() as u64) as usize) else {
            return LogRecord {
                ts,
                message: "empty vocabulary".into(),
                ..LogRecord::default()
            };
        };
        let total = source.cumulative.last().copied().unwrap_or(1);
        let pick = self.rng.below(total);
        let position = source.cumulative.partition_point(|&c| c <= pick);
        let Some(template) = source.templates.get(position) else {
            return LogRecord {
                ts,
                message: "empty source".into(),
                ..LogRecord::default()
            };
        };
        LogRecord {
            ts,
            level: self.level(&template.level),
            service: template.source.clone(),
            host: format!(
                "{}-{:02}",
                template.source,
                self.rng.below(HOSTS_PER_SOURCE) + 1
            ),
            attrs: vec![
                ("component".into(), template.component.clone()),
                ("pid".into(), (1000 + self.rng.below(60_000)).to_string()),
            ],
            message: self.fill(template),
            tenant: String::new(),
        }
    }

    /// The template's level, now and then another, so every level occurs.
    fn level(&mut self, usual: &str) -> Level {
        match self.rng.below(1000) {
            0..=4 => Level::Trace,
            5..=34 => Level::Debug,
            35..=44 => Level::Error,
            45..=46 => Level::Fatal,
            _ => Level::parse(usual),
        }
    }

    fn fill(&mut self, template: &Template) -> String {
        let mut message = String::with_capacity(template.template.len() + 32);
        let mut parts = template.template.split("<*>");
        message.push_str(parts.next().unwrap_or_default());
        for (slot, part) in template.slots.iter().zip(parts) {
            let seen = slot
                .get(self.rng.below(slot.len() as u64) as usize)
                .map_or("", String::as_str);
            self.vary(seen, &mut message);
            message.push_str(part);
        }
        message
    }

    /// Copies `value`, redrawing each digit (a leading non-zero digit stays
    /// non-zero, so numbers keep their length).
    fn vary(&mut self, value: &str, out: &mut String) {
        let mut previous_digit = false;
        for c in value.chars() {
            if c.is_ascii_digit() {
                let low: u64 = if previous_digit || c == '0' { 0 } else { 1 };
                let digit = low + self.rng.below(10 - low);
                out.push(char::from_digit(digit as u32, 10).unwrap_or('0'));
                previous_digit = true;
            } else {
                out.push(c);
                previous_digit = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_protocol::json::to_json_line;

    #[test]
    fn deterministic_and_varied() {
        let a = Corpus::new(7).take_records(2000);
        let b = Corpus::new(7).take_records(2000);
        assert_eq!(a, b);
        assert_ne!(a, Corpus::new(8).take_records(2000));
        let services: std::collections::BTreeSet<_> =
            a.iter().map(|r| r.service.as_str()).collect();
        assert_eq!(services.len(), 8, "all eight sources appear: {services:?}");
        let levels: std::collections::BTreeSet<_> = a.iter().map(|r| r.level.as_str()).collect();
        assert!(levels.len() >= 5, "levels: {levels:?}");
        assert!(a.windows(2).all(|w| w[0].ts < w[1].ts + STEP_NS));
    }

    #[test]
    fn json_lines_average_about_220_bytes() {
        let mut out = Vec::new();
        let records = Corpus::new(1).take_records(20_000);
        for r in &records {
            to_json_line(None, r, &mut out);
        }
        let mean = out.len() / records.len();
        assert!(
            (170..=270).contains(&mean),
            "mean JSON line is {mean} bytes"
        );
    }
}
