//! Times given beside a query: RFC 3339 or relative to a `now` passed in.

use lode_codec::parse_rfc3339;

/// Parses `text` as a time in ns since the epoch: RFC 3339
/// (`2026-01-01T10:00:00Z`, `2026-01-01T10:00:00.5+02:00`) or relative
/// to `now` (`15m`, `2h`, `7d`, `30s`, `1w`: that long before `now`).
///
/// A relative time counts back from `now` read to the millisecond: the
/// index keeps times to the millisecond, and a bound inside one makes it
/// read the exact time of that millisecond's matches from the engine.
pub fn parse_time(text: &str, now: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Some(ago) = parse_relative(text) {
        let now = now.div_euclid(1_000_000).saturating_mul(1_000_000);
        return Ok(now.saturating_sub(ago));
    }
    parse_rfc3339(text).ok_or_else(|| {
        format!("'{text}' is not a time: expected RFC 3339 (2026-01-01T10:00:00Z) or a duration like 15m, 2h, 7d")
    })
}

fn parse_relative(text: &str) -> Option<i64> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(unit_at);
    let n: i64 = number.parse().ok()?;
    let scale: i64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(scale)?.checked_mul(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_and_relative() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z", 0), Ok(0));
        assert_eq!(
            parse_time("2026-01-01T00:00:00.000000001Z", 0),
            Ok(1_767_225_600_000_000_001)
        );
        assert_eq!(
            parse_time("2026-01-01T02:00:00+02:00", 0),
            Ok(1_767_225_600_000_000_000)
        );
        assert_eq!(
            parse_time("2000-02-29T00:00:00.5Z", 0),
            Ok(951_782_400_500_000_000)
        );
        assert_eq!(
            parse_time("15m", 1_000_000_000_000),
            Ok(1_000_000_000_000 - 900_000_000_000)
        );
        assert_eq!(parse_time("2h", 0), Ok(-7_200_000_000_000));
        assert_eq!(
            parse_time("1s", 5_000_999_999),
            Ok(4_000_000_000),
            "now is read to the millisecond"
        );
        assert_eq!(parse_time("0s", -1), Ok(-1_000_000));
        assert!(parse_time("yesterday", 0).unwrap_err().contains("RFC 3339"));
        assert!(parse_time("2026-13-01T00:00:00Z", 0).is_err());
        assert!(parse_time("99999999999999999999d", 0).is_err());
    }
}
