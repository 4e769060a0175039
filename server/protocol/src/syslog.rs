//! Syslog messages: RFC 5424 and RFC 3164 (BSD), framed by octet counting
//! (RFC 6587) or by newlines.
//!
//! Priority becomes the level (severity 0–2 fatal, 3 error, 4 warn, 5–6
//! info, 7 debug), the app-name (or 3164 tag) the service, the hostname the
//! host; facility, procid, msgid and structured data become attributes.
//! A line that is not syslog at all is kept whole as an info message.

use lode_codec::{Level, LogRecord, parse_rfc3339};

/// Cuts the first message off a stream buffer: `Ok(None)` while it is
/// incomplete, else the message and the bytes used. Octet counting when the
/// buffer starts with a digit (`27 <34>1 ...`), newline framing otherwise.
/// A message longer than `max` is an error: the caller closes the stream.
pub fn split_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, String> {
    let Some(first) = buf.first() else {
        return Ok(None);
    };
    if first.is_ascii_digit() {
        let Some(space) = buf.iter().take(12).position(|b| *b == b' ') else {
            return if buf.len() >= 12 {
                Err("octet-counted frame without a length".into())
            } else {
                Ok(None)
            };
        };
        let len: usize = std::str::from_utf8(buf.get(..space).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("octet count is not a number")?;
        if len > max {
            return Err(format!(
                "syslog message of {len} bytes exceeds max_syslog_bytes = {max}"
            ));
        }
        let end = space + 1 + len;
        return Ok(buf.get(space + 1..end).map(|msg| (msg, end)));
    }
    match buf.iter().position(|b| *b == b'\n') {
        Some(nl) => {
            let line = buf.get(..nl).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Ok(Some((line, nl + 1)))
        }
        None if buf.len() > max => Err(format!("syslog line longer than max_syslog_bytes = {max}")),
        None => Ok(None),
    }
}

/// Parses one syslog message; `now` (ns) gives the year of an RFC 3164
/// timestamp and stands in for a missing one.
pub fn parse(message: &[u8], now: i64) -> LogRecord {
    parse_with_ts(message, now).0
}

/// As [`parse`], and whether the message had a timestamp of its own.
pub fn parse_with_ts(message: &[u8], now: i64) -> (LogRecord, bool) {
    let text = String::from_utf8_lossy(message);
    let text = text.trim_end_matches(['\n', '\r', '\0']);
    let Some((pri, rest)) = priority(text) else {
        let record = LogRecord {
            ts: now,
            message: text.to_owned(),
            ..LogRecord::default()
        };
        return (record, false);
    };
    let (mut record, has_ts) = match rest.strip_prefix("1 ") {
        Some(rest5424) => parse_5424(rest5424, now),
        None => parse_3164(rest, now),
    };
    record.level = severity_level(pri % 8);
    record
        .attrs
        .insert(0, ("facility".into(), (pri / 8).to_string()));
    (record, has_ts)
}

fn priority(text: &str) -> Option<(u8, &str)> {
    let rest = text.strip_prefix('<')?;
    let close = rest.find('>').filter(|&i| (1..=3).contains(&i))?;
    let pri: u8 = rest.get(..close)?.parse().ok().filter(|p| *p <= 191)?;
    Some((pri, rest.get(close + 1..)?))
}

fn severity_level(severity: u8) -> Level {
    match severity {
        0..=2 => Level::Fatal,
        3 => Level::Error,
        4 => Level::Warn,
        5 | 6 => Level::Info,
        _ => Level::Debug,
    }
}

fn nil(field: &str) -> String {
    if field == "-" {
        String::new()
    } else {
        field.to_owned()
    }
}

fn parse_5424(rest: &str, now: i64) -> (LogRecord, bool) {
    let mut fields = rest.splitn(6, ' ');
    let ts = fields.next().unwrap_or("-");
    let host = fields.next().unwrap_or("-");
    let app = fields.next().unwrap_or("-");
    let procid = fields.next().unwrap_or("-");
    let msgid = fields.next().unwrap_or("-");
    let tail = fields.next().unwrap_or("");
    let mut attrs = Vec::new();
    for (key, value) in [("procid", procid), ("msgid", msgid)] {
        if value != "-" {
            attrs.push((key.to_owned(), value.to_owned()));
        }
    }
    let message = structured_data(tail, &mut attrs);
    let message = message.strip_prefix('\u{feff}').unwrap_or(message);
    let ts = parse_rfc3339(ts);
    let record = LogRecord {
        ts: ts.unwrap_or(now),
        level: Level::Info,
        service: nil(app),
        host: nil(host),
        attrs,
        message: message.to_owned(),
        tenant: String::new(),
    };
    (record, ts.is_some())
}

/// Reads `[id key="value" ...]...` into attributes `id.key`; returns the
/// message after it.
fn structured_data<'a>(text: &'a str, attrs: &mut Vec<(String, String)>) -> &'a str {
    if let Some(rest) = text.strip_prefix('-') {
        return rest.strip_prefix(' ').unwrap_or(rest);
    }
    let mut rest = text;
    while let Some(element) = rest.strip_prefix('[') {
        let Some(id_len) = element.find([' ', ']']) else {
            return text;
        };
        let (id, mut params) = element.split_at(id_len);
        loop {
            params = params.trim_start_matches(' ');
            if let Some(after) = params.strip_prefix(']') {
                rest = after;
                break;
            }
            let Some((name, value_and_more)) = params.split_once("=\"") else {
                return text;
            };
            let Some((value, consumed)) = quoted(value_and_more) else {
                return text;
            };
            attrs.push((format!("{id}.{name}"), value));
            params = value_and_more.get(consumed..).unwrap_or_default();
        }
    }
    rest.strip_prefix(' ').unwrap_or(rest)
}

/// The value of a quoted SD parameter (after its opening quote) with
/// `\"`, `\\` and `\]` unescaped, and the bytes used including the closing
/// quote.
fn quoted(text: &str) -> Option<(String, usize)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, i + 1)),
            '\\' => match chars.next() {
                Some((_, e @ ('"' | '\\' | ']'))) => value.push(e),
                Some((_, other)) => {
                    value.push('\\');
                    value.push(other);
                }
                None => return None,
            },
            c => value.push(c),
        }
    }
    None
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Mmm dd hh:mm:ss` at the start of `text` in the year of `now` (the year
/// before when that would be more than a day ahead of `now`), UTC.
pub fn bsd_timestamp(text: &str, now: i64) -> Option<i64> {
    let month = MONTHS.iter().position(|m| text.get(..3) == Some(*m))? + 1;
    let day: u32 = text.get(4..6)?.trim_start().parse().ok()?;
    let clock = text.get(7..15)?;
    if text.as_bytes().get(3) != Some(&b' ') || text.as_bytes().get(6) != Some(&b' ') {
        return None;
    }
    let this_year = lode_codec::format_rfc3339(now);
    let year: i64 = this_year.get(..4)?.parse().ok()?;
    let at = |year: i64| parse_rfc3339(&format!("{year:04}-{month:02}-{day:02}T{clock}Z"));
    let ts = at(year)?;
    if ts > now.saturating_add(86_400_000_000_000) {
        return at(year - 1);
    }
    Some(ts)
}

fn parse_3164(rest: &str, now: i64) -> (LogRecord, bool) {
    let (ts, rest) = match bsd_timestamp(rest, now) {
        Some(ts) => (Some(ts), rest.get(16..).unwrap_or_default()),
        None => (None, rest),
    };
    // HOSTNAME is optional in practice: a first word that ends in ':' or
    // holds '[' is the tag.
    let (first, after_first) = rest.split_once(' ').unwrap_or((rest, ""));
    let (host, rest) = if first.ends_with(':') || first.contains('[') || after_first.is_empty() {
        ("", rest)
    } else {
        (first, after_first)
    };
    let mut attrs = Vec::new();
    let (service, message) = match rest.split_once(": ") {
        Some((tag, message)) if !tag.contains(' ') && !tag.is_empty() => {
            let service = match tag.split_once('[') {
                Some((name, pid)) => {
                    attrs.push(("procid".into(), pid.trim_end_matches(']').to_owned()));
                    name
                }
                None => tag,
            };
            (service, message)
        }
        _ => ("", rest),
    };
    let record = LogRecord {
        ts: ts.unwrap_or(now),
        level: Level::Info,
        service: service.to_owned(),
        host: host.to_owned(),
        attrs,
        message: message.to_owned(),
        tenant: String::new(),
    };
    (record, ts.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z

    #[test]
    fn rfc5424_with_structured_data() {
        let r = parse(
            br#"<165>1 2025-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Appl\"ication"] An application event"#,
            NOW,
        );
        assert_eq!(r.level, Level::Info); // 165 % 8 = 5, notice
        assert_eq!(r.host, "mymachine.example.com");
        assert_eq!(r.service, "evntslog");
        assert_eq!(r.message, "An application event");
        assert_eq!(r.ts, parse_rfc3339("2025-10-11T22:14:15.003Z").unwrap());
        assert!(r.attrs.contains(&("facility".into(), "20".into())));
        assert!(r.attrs.contains(&("msgid".into(), "ID47".into())));
        assert!(r.attrs.contains(&(
            "exampleSDID@32473.eventSource".into(),
            "Appl\"ication".into()
        )));
        let bare = parse(b"<11>1 - - - - - -", NOW);
        assert_eq!(
            (bare.level, bare.ts, bare.message.as_str()),
            (Level::Error, NOW, "")
        );
    }

    #[test]
    fn rfc3164_with_and_without_host() {
        let r = parse(
            b"<34>Oct 11 22:14:15 mymachine su[230]: 'su root' failed",
            NOW,
        );
        assert_eq!(r.level, Level::Fatal);
        assert_eq!((r.host.as_str(), r.service.as_str()), ("mymachine", "su"));
        assert_eq!(r.message, "'su root' failed");
        // October is ahead of January 1st: it was last year.
        assert_eq!(r.ts, parse_rfc3339("2025-10-11T22:14:15Z").unwrap());
        assert!(r.attrs.contains(&("procid".into(), "230".into())));
        let r = parse(b"<12>Jan  1 00:00:01 cron: job done", NOW);
        assert_eq!((r.host.as_str(), r.service.as_str()), ("", "cron"));
        assert_eq!(r.level, Level::Warn);
        let r = parse(b"no priority at all", NOW);
        assert_eq!((r.message.as_str(), r.ts), ("no priority at all", NOW));
    }

    #[test]
    fn framing() {
        let stream = b"11 <13>1 - - -<14>plain line\r\nrest";
        let (msg, used) = split_frame(stream, 1024).unwrap().unwrap();
        assert_eq!(msg, b"<13>1 - - -");
        let (msg, used2) = split_frame(&stream[used..], 1024).unwrap().unwrap();
        assert_eq!(msg, b"<14>plain line");
        assert_eq!(split_frame(&stream[used + used2..], 1024), Ok(None));
        assert!(split_frame(b"999999 x", 1024).is_err());
        assert!(split_frame(&[b'a'; 2000], 1024).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_wait(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes, NOW);
            if let Ok(Some((msg, used))) = split_frame(&bytes, 100) {
                prop_assert!(used <= bytes.len() && msg.len() <= used);
            }
        }

        #[test]
        fn any_text_parses(text in "<[0-9]{1,3}>(1 )?.{0,80}") {
            let _ = parse(text.as_bytes(), NOW);
        }
    }
}
