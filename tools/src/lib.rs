//! Shared pieces of lode's command-line tools: the deterministic corpus
//! generator that tests, benchmarks and the demo use, and JSON lines output.

mod corpus;
pub mod export;
pub mod import;
mod rng;

pub use corpus::Corpus;
pub use lode_engine::format_rfc3339;
pub use lode_protocol::json::{JsonRecord, to_json_line};
pub use rng::SplitMix64;

/// Median of `values` (the mean of the middle two for an even count; NaN
/// for none). Benchmarks quote medians: these machines are noisy.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match (
        values.get(n / 2),
        n.checked_sub(1)
            .and_then(|_| values.get(n.saturating_sub(1) / 2)),
    ) {
        (Some(high), Some(low)) if n.is_multiple_of(2) => (low + high) / 2.0,
        (Some(mid), _) => *mid,
        _ => f64::NAN,
    }
}

/// Bytes of the files under `path` (recursively), or of `path` itself when
/// it is a file; 0 for what cannot be read.
pub fn disk_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return std::fs::metadata(path).map_or(0, |m| m.len());
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Bytes of zstd -3 of the file at `path`, as one stream: the reference
/// the benchmarks set lode's bytes on disk beside.
pub fn zstd3_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let mut encoder = zstd::Encoder::new(CountingSink(0), 3)?;
    std::io::copy(&mut std::fs::File::open(path)?, &mut encoder)?;
    Ok(encoder.finish()?.0)
}

/// A writer that only counts.
struct CountingSink(u64);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `text` percent-encoded for a URL's query string (everything but
/// RFC 3986's unreserved characters).
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
