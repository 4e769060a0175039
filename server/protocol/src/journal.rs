//! The journal export format (`systemd-journal-upload` posts it to
//! `/upload`): entries of fields, each `NAME=value\n`, or, for a value
//! that is binary or holds a newline, `NAME\n`, its length (u64 LE),
//! the bytes and `\n`; an empty line ends an entry.
//!
//! `MESSAGE` is the message, `PRIORITY` (0-7) the level,
//! `SYSLOG_IDENTIFIER` (else `_SYSTEMD_UNIT`) the service, `_HOSTNAME`
//! the host, `__REALTIME_TIMESTAMP` (µs) the time; the other fields
//! become attributes, but the export's own (`__CURSOR`,
//! `__MONOTONIC_TIMESTAMP`, `__SEQNUM`...). A binary value is kept as
//! text where it is UTF-8, else with its bytes replaced.
//!
//! Pure: bytes in, records or an error naming the entry and offset out.

use lode_codec::{Level, LogRecord};

/// Why an export is refused: the byte offset and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("journal export, byte {offset}: {reason}")]
pub struct JournalError {
    pub offset: usize,
    pub reason: String,
}

fn refuse(offset: usize, reason: impl Into<String>) -> JournalError {
    JournalError {
        offset,
        reason: reason.into(),
    }
}

/// The level of a syslog priority (0 emerg ... 7 debug).
fn level_of_priority(priority: &str) -> Level {
    match priority.trim() {
        "0" | "1" | "2" => Level::Fatal,
        "3" => Level::Error,
        "4" => Level::Warn,
        "7" => Level::Debug,
        _ => Level::Info,
    }
}

/// The records of a whole export, in order; `now` (ns) times an entry
/// without `__REALTIME_TIMESTAMP`.
pub fn parse_export(bytes: &[u8], now: i64) -> Result<Vec<LogRecord>, JournalError> {
    let mut records = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = bytes.get(at..).unwrap_or_default();
        let line_end = rest.iter().position(|&b| b == b'\n');
        let Some(line_end) = line_end else {
            return Err(refuse(at, "a field does not end with a newline"));
        };
        let line = rest.get(..line_end).unwrap_or_default();
        if line.is_empty() {
            if !fields.is_empty() {
                records.push(record(std::mem::take(&mut fields), now));
            }
            at += 1;
            continue;
        }
        match line.iter().position(|&b| b == b'=') {
            Some(eq) => {
                let name = field_name(line.get(..eq).unwrap_or_default(), at)?;
                let value = String::from_utf8_lossy(line.get(eq + 1..).unwrap_or_default());
                fields.push((name, value.into_owned()));
                at += line_end + 1;
            }
            None => {
                // A binary field: NAME\n, length u64 LE, bytes, \n.
                let name = field_name(line, at)?;
                let len_at = at + line_end + 1;
                let len = bytes
                    .get(len_at..len_at + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
                    .ok_or_else(|| {
                        refuse(len_at, format!("field {name}: its length is cut off"))
                    })?;
                let start = len_at + 8;
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|l| start.checked_add(l))
                    .filter(|&e| e < bytes.len())
                    .ok_or_else(|| {
                        refuse(
                            start,
                            format!("field {name}: {len} bytes announced, fewer given"),
                        )
                    })?;
                if bytes.get(end) != Some(&b'\n') {
                    return Err(refuse(
                        end,
                        format!("field {name}: no newline after its {len} bytes"),
                    ));
                }
                let value = String::from_utf8_lossy(bytes.get(start..end).unwrap_or_default());
                fields.push((name, value.into_owned()));
                at = end + 1;
            }
        }
    }
    if !fields.is_empty() {
        records.push(record(fields, now));
    }
    Ok(records)
}

fn field_name(name: &[u8], at: usize) -> Result<String, JournalError> {
    let valid = !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_');
    if !valid {
        return Err(refuse(
            at,
            format!(
                "'{}' is not a field name (A-Z, 0-9, _)",
                String::from_utf8_lossy(name)
            ),
        ));
    }
    Ok(String::from_utf8_lossy(name).into_owned())
}

fn record(fields: Vec<(String, String)>, now: i64) -> LogRecord {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let ts = get("__REALTIME_TIMESTAMP")
        .and_then(|us| us.parse::<i64>().ok())
        .and_then(|us| us.checked_mul(1000))
        .unwrap_or(now);
    let service = get("SYSLOG_IDENTIFIER")
        .or_else(|| get("_SYSTEMD_UNIT"))
        .unwrap_or_default();
    let level = get("PRIORITY").map_or(Level::Info, |p| level_of_priority(&p));
    let taken = ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "_HOSTNAME"];
    let host = get("_HOSTNAME").unwrap_or_default();
    let message = get("MESSAGE").unwrap_or_default();
    let attrs = fields
        .into_iter()
        .filter(|(k, _)| !k.starts_with("__") && !taken.contains(&k.as_str()))
        .filter(|(k, v)| !(k == "_SYSTEMD_UNIT" && *v == service))
        .collect();
    LogRecord {
        ts,
        level,
        service,
        host,
        attrs,
        message,
        tenant: String::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn export() -> Vec<u8> {
        let mut e = b"__CURSOR=s=1;i=1\n__REALTIME_TIMESTAMP=1798761600000000\nPRIORITY=3\nSYSLOG_IDENTIFIER=payments\n_HOSTNAME=jhost\n_SYSTEMD_UNIT=pay.service\nMESSAGE=payment failed\nORDER=9\n\n".to_vec();
        // A binary field: a message with a newline.
        e.extend_from_slice(b"__REALTIME_TIMESTAMP=1798761600000001\n_SYSTEMD_UNIT=ledger.service\nPRIORITY=6\nMESSAGE\n");
        e.extend_from_slice(&(9u64).to_le_bytes());
        e.extend_from_slice(b"two\nlines\n\n");
        e
    }

    #[test]
    fn fields_map_to_the_record() {
        let records = parse_export(&export(), 5).unwrap();
        assert_eq!(records.len(), 2);
        let r = &records[0];
        assert_eq!(
            (
                r.ts,
                &r.level,
                r.service.as_str(),
                r.host.as_str(),
                r.message.as_str()
            ),
            (
                1_798_761_600_000_000_000,
                &Level::Error,
                "payments",
                "jhost",
                "payment failed"
            )
        );
        assert_eq!(
            r.attrs,
            vec![
                ("_SYSTEMD_UNIT".to_owned(), "pay.service".to_owned()),
                ("ORDER".to_owned(), "9".to_owned())
            ]
        );
        let b = &records[1];
        assert_eq!(
            (b.service.as_str(), &b.level, b.message.as_str()),
            ("ledger.service", &Level::Info, "two\nlines")
        );
        assert!(b.attrs.is_empty(), "{:?}", b.attrs);
        // No trailing empty line, no time.
        let records = parse_export(b"MESSAGE=x", 5);
        assert!(records.is_err());
        let records = parse_export(b"MESSAGE=x\n", 5).unwrap();
        assert_eq!((records[0].ts, records[0].message.as_str()), (5, "x"));
    }

    #[test]
    fn a_damaged_export_is_refused_naming_the_offset() {
        let full = export();
        let cut = full.iter().position(|&b| b == 9).unwrap();
        for (bytes, want) in [
            (&b"lower=case\n"[..], "not a field name"),
            (&full[..cut + 4], "length is cut off"),
            (&full[..cut + 10], "fewer given"),
        ] {
            let err = parse_export(bytes, 0).unwrap_err().to_string();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
        let mut wrong = full.clone();
        let len_at = full
            .windows(8)
            .position(|w| w == 9u64.to_le_bytes())
            .unwrap();
        // 4 bytes ("two\n") leave "lines" where the newline should be.
        wrong[len_at] = 4;
        assert!(
            parse_export(&wrong, 0)
                .unwrap_err()
                .to_string()
                .contains("no newline")
        );
    }

    proptest::proptest! {
        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
                           at in 0usize..400, to in proptest::num::u8::ANY) {
            let _ = parse_export(&bytes, 0);
            let mut body = export();
            let i = at % body.len();
            body[i] = to;
            let _ = parse_export(&body, 0);
        }
    }
}
