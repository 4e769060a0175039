//! Times given beside a query: RFC 3339 or relative to a `now` passed in.

/// Parses `text` as a time in ns since the epoch: RFC 3339
/// (`2026-01-01T10:00:00Z`, `2026-01-01T10:00:00.5+02:00`) or relative
/// to `now` (`15m`, `2h`, `7d`, `30s`, `1w`: that long before `now`).
pub fn parse_time(text: &str, now: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Some(ago) = parse_relative(text) {
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

/// Days from 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(text: &str, range: std::ops::Range<usize>) -> Option<i64> {
    let part = text.get(range)?;
    part.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| part.parse().ok())?
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20
        || b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || b.get(13) != Some(&b':')
    {
        return None;
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) || b.get(16) != Some(&b':') {
        return None;
    }
    let (year, month, day) = (
        digits(text, 0..4)?,
        digits(text, 5..7)?,
        digits(text, 8..10)?,
    );
    let (hour, minute, second) = (
        digits(text, 11..13)?,
        digits(text, 14..16)?,
        digits(text, 17..19)?,
    );
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = text.get(19..)?;
    let mut nanos = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let len = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if len == 0 || len > 9 {
            return None;
        }
        nanos = digits(fraction, 0..len)? * 10i64.pow(9 - len as u32);
        rest = fraction.get(len..)?;
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes().get(3) != Some(&b':') {
                return None;
            }
            sign * (digits(rest, 1..3)? * 3600 + digits(rest, 4..6)? * 60)
        }
    };
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    seconds.checked_mul(1_000_000_000)?.checked_add(nanos)
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
        assert!(parse_time("yesterday", 0).unwrap_err().contains("RFC 3339"));
        assert!(parse_time("2026-13-01T00:00:00Z", 0).is_err());
        assert!(parse_time("99999999999999999999d", 0).is_err());
    }
}
