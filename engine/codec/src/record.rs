//! The log record model and its rkyv encodings.
//!
//! Owns: [`LogRecord`] (what a client sends), [`Record`] (what a reader gets
//! back, with its `seq`), [`Level`], and the rkyv encoding of one record:
//! what a batch payload holds per record and what a sealed segment stores
//! under its key. Never does I/O.

use std::fmt;
use std::ops::Deref;

use rkyv::rancor;
use rkyv::{Archive, Deserialize, Serialize};

use crate::{CodecError, Result};

/// Severity of a record. Unknown levels keep their text in `Other`.
#[derive(
    Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default,
)]
#[rkyv(derive(Debug))]
pub enum Level {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
    Fatal,
    Other(String),
}

impl Level {
    /// Parses the usual spellings (`W`, `WARNING`, `warn`, `Err`, `CRIT` ...);
    /// anything else is kept as `Other` with its text.
    pub fn parse(text: &str) -> Level {
        match text.to_ascii_lowercase().as_str() {
            "t" | "trace" | "trc" | "finest" | "finer" => Level::Trace,
            "d" | "debug" | "dbg" | "fine" | "verbose" => Level::Debug,
            "i" | "info" | "inf" | "information" | "notice" | "informational" => Level::Info,
            "w" | "warn" | "warning" | "wrn" => Level::Warn,
            "e" | "error" | "err" | "severe" => Level::Error,
            "f" | "fatal" | "crit" | "critical" | "alert" | "emerg" | "emergency" | "panic" => {
                Level::Fatal
            }
            _ => Level::Other(text.to_owned()),
        }
    }

    /// The canonical lowercase name (`Other` gives its own text).
    pub fn as_str(&self) -> &str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
            Level::Other(text) => text,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A log record as a client sends it: everything but its `seq`, which the
/// log assigns. `ts` is nanoseconds since the Unix epoch.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct LogRecord {
    pub ts: i64,
    pub level: Level,
    pub service: String,
    pub host: String,
    pub attrs: Vec<(String, String)>,
    pub message: String,
    /// The tenant the record belongs to; empty is the default tenant
    /// ([`tenant_name`]). Not part of the record's archive: a batch names
    /// its records' tenant once, in its trailer, and a sealed value before
    /// its record, so records archived before tenants existed read as
    /// they were, in the default tenant.
    #[rkyv(with = rkyv::with::Skip)]
    pub tenant: String,
}

/// The name of the default tenant, which records of no tenant belong to.
pub const DEFAULT_TENANT: &str = "default";

/// The name of a record's tenant as users see it: `default` for the
/// empty name records of the default tenant are stored with.
pub fn tenant_name(stored: &str) -> &str {
    if stored.is_empty() {
        DEFAULT_TENANT
    } else {
        stored
    }
}

/// The name a tenant is stored with: empty for the default tenant (so
/// its records are byte for byte those of the format before tenants).
pub fn stored_tenant(name: &str) -> &str {
    if name == DEFAULT_TENANT { "" } else { name }
}

/// A record read in place, with the tenant its batch or sealed value
/// names (the archive itself has none). Derefs to the archived record.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// As stored: empty for the default tenant.
    pub tenant: &'a str,
    pub record: &'a ArchivedLogRecord,
}

impl Deref for RecordRef<'_> {
    type Target = ArchivedLogRecord;
    fn deref(&self) -> &ArchivedLogRecord {
        self.record
    }
}

impl RecordRef<'_> {
    /// Copies the record out, its tenant included.
    pub fn to_owned_record(&self) -> Result<LogRecord> {
        let mut record = self.record.to_owned_record()?;
        record.tenant = self.tenant.to_owned();
        Ok(record)
    }
}

/// Longest tenant name a batch or a sealed value can carry.
pub const MAX_TENANT_BYTES: usize = 255;

/// Appends a sealed segment's value for a record of `tenant` (stored
/// form) whose archive is `record`: the tenant's length (u8) and bytes,
/// then the archive.
pub fn encode_sealed_value(tenant: &str, record: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let len = u8::try_from(tenant.len())
        .map_err(|_| CodecError::Encode(format!("tenant of {} bytes", tenant.len())))?;
    out.reserve(1 + tenant.len() + record.len());
    out.push(len);
    out.extend_from_slice(tenant.as_bytes());
    out.extend_from_slice(record);
    Ok(())
}

/// Checks and reads a sealed segment's value in place: with its tenant
/// in front ([`encode_sealed_value`]), or, for a segment sealed before
/// tenants existed, the record's archive alone (the default tenant).
pub fn access_sealed_value(bytes: &[u8], tenant_prefix: bool) -> Result<RecordRef<'_>> {
    if !tenant_prefix {
        return Ok(RecordRef {
            tenant: "",
            record: access_record(bytes)?,
        });
    }
    let (&len, rest) = bytes
        .split_first()
        .ok_or_else(|| CodecError::Invalid("an empty sealed value".into()))?;
    let (tenant, record) = rest
        .split_at_checked(usize::from(len))
        .ok_or_else(|| CodecError::Invalid(format!("a tenant of {len} bytes past the value")))?;
    let tenant = std::str::from_utf8(tenant)
        .map_err(|e| CodecError::Invalid(format!("the value's tenant: {e}")))?;
    Ok(RecordRef {
        tenant,
        record: access_record(record)?,
    })
}

impl LogRecord {
    /// Bytes of text this record carries; a cheap size estimate used for
    /// limits and statistics.
    pub fn text_len(&self) -> usize {
        let attrs: usize = self.attrs.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.level.as_str().len()
            + self.service.len()
            + self.host.len()
            + attrs
            + self.message.len()
    }
}

/// A record's fields, however it is held: owned ([`LogRecord`]) or read
/// in place ([`ArchivedLogRecord`], [`RecordRef`]), so a query can look at
/// records without copying them out.
pub trait Fields {
    fn ts(&self) -> i64;
    /// The level's canonical name ([`Level::as_str`]).
    fn level_name(&self) -> &str;
    fn service(&self) -> &str;
    fn host(&self) -> &str;
    fn message(&self) -> &str;
    /// The value of the first attribute named `name`.
    fn attr(&self, name: &str) -> Option<&str>;
}

impl Fields for LogRecord {
    fn ts(&self) -> i64 {
        self.ts
    }
    fn level_name(&self) -> &str {
        self.level.as_str()
    }
    fn service(&self) -> &str {
        &self.service
    }
    fn host(&self) -> &str {
        &self.host
    }
    fn message(&self) -> &str {
        &self.message
    }
    fn attr(&self, name: &str) -> Option<&str> {
        let (_, value) = self.attrs.iter().find(|(key, _)| key == name)?;
        Some(value)
    }
}

impl Fields for ArchivedLogRecord {
    fn ts(&self) -> i64 {
        self.ts.to_native()
    }
    fn level_name(&self) -> &str {
        self.level.as_str()
    }
    fn service(&self) -> &str {
        &self.service
    }
    fn host(&self) -> &str {
        &self.host
    }
    fn message(&self) -> &str {
        &self.message
    }
    fn attr(&self, name: &str) -> Option<&str> {
        let pair = self.attrs.iter().find(|pair| pair.0 == name)?;
        Some(&pair.1)
    }
}

/// A stored record: its position in the log and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub log: LogRecord,
}

impl Deref for Record {
    type Target = LogRecord;
    fn deref(&self) -> &LogRecord {
        &self.log
    }
}

/// Encodes one record on its own: the value stored under its key in a
/// sealed segment.
pub fn encode_record(record: &LogRecord) -> Result<Vec<u8>> {
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(record, Vec::new())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// As [`encode_record`], into `out` (cleared first): a reader that
/// archives many records one after another reuses one buffer.
pub(crate) fn encode_record_into(record: &LogRecord, mut out: Vec<u8>) -> Result<Vec<u8>> {
    out.clear();
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(record, out)
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Checks and reads a single-record value in place.
pub fn access_record(bytes: &[u8]) -> Result<&ArchivedLogRecord> {
    rkyv::access::<ArchivedLogRecord, rancor::Error>(bytes)
        .map_err(|e| CodecError::Invalid(e.to_string()))
}

impl ArchivedLevel {
    /// The canonical lowercase name, as [`Level::as_str`].
    pub fn as_str(&self) -> &str {
        match self {
            ArchivedLevel::Trace => "trace",
            ArchivedLevel::Debug => "debug",
            ArchivedLevel::Info => "info",
            ArchivedLevel::Warn => "warn",
            ArchivedLevel::Error => "error",
            ArchivedLevel::Fatal => "fatal",
            ArchivedLevel::Other(text) => text.as_str(),
        }
    }
}

impl ArchivedLogRecord {
    /// Copies the archived record out into an owned one.
    pub fn to_owned_record(&self) -> Result<LogRecord> {
        rkyv::deserialize::<LogRecord, rancor::Error>(self)
            .map_err(|e| CodecError::Invalid(e.to_string()))
    }

    /// The record's timestamp, read in place.
    pub fn timestamp(&self) -> i64 {
        self.ts.to_native()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A varied record for codec tests.
    pub(crate) fn sample(i: i64) -> LogRecord {
        LogRecord {
            ts: 1_700_000_000_000_000_000 - i * 7,
            level: if i % 2 == 0 {
                Level::Warn
            } else {
                Level::Other("NOTE".into())
            },
            service: "api".into(),
            host: format!("web-{i}"),
            attrs: vec![("user".into(), format!("u{i}"))],
            message: format!("request {i} took {} ms", i * 3),
            tenant: String::new(),
        }
    }

    #[test]
    fn single_record_round_trips_at_odd_offsets() {
        let record = sample(7);
        let bytes = encode_record(&record).unwrap();
        let mut shifted = vec![0u8; 3];
        shifted.extend_from_slice(&bytes);
        let archived = access_record(&shifted[3..]).unwrap();
        assert_eq!(archived.to_owned_record().unwrap(), record);
        assert_eq!(archived.timestamp(), record.ts);
        assert_eq!(archived.level.as_str(), record.level.as_str());
    }

    #[test]
    fn sealed_values_carry_their_tenant() {
        let record = sample(3);
        let archive = encode_record(&record).unwrap();
        let mut value = Vec::new();
        encode_sealed_value("team-a", &archive, &mut value).unwrap();
        let read = access_sealed_value(&value, true).unwrap();
        assert_eq!(read.tenant, "team-a");
        assert_eq!(
            read.to_owned_record().unwrap(),
            LogRecord {
                tenant: "team-a".into(),
                ..record.clone()
            }
        );
        // A value sealed before tenants: the archive alone, default tenant.
        let old = access_sealed_value(&archive, false).unwrap();
        assert_eq!((old.tenant, old.to_owned_record().unwrap()), ("", record));
        assert!(access_sealed_value(&[], true).is_err());
        assert!(access_sealed_value(&[200, 1, 2], true).is_err());
        assert!(encode_sealed_value(&"x".repeat(256), &archive, &mut Vec::new()).is_err());
        assert_eq!((tenant_name(""), stored_tenant("default")), ("default", ""));
    }

    /// The tenant is no part of a record's archive: a record of any
    /// tenant archives to the bytes a record had before tenants existed.
    #[test]
    fn the_archive_has_no_tenant() {
        let plain = sample(4);
        let tenanted = LogRecord {
            tenant: "team-b".into(),
            ..plain.clone()
        };
        assert_eq!(
            encode_record(&plain).unwrap(),
            encode_record(&tenanted).unwrap()
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(access_record(&[0xFF; 40]).is_err());
        assert!(access_record(&[]).is_err());
    }

    #[test]
    fn levels_normalise() {
        assert_eq!(Level::parse("WARNING"), Level::Warn);
        assert_eq!(Level::parse("W"), Level::Warn);
        assert_eq!(Level::parse("err"), Level::Error);
        assert_eq!(Level::parse("Custom"), Level::Other("Custom".into()));
        assert_eq!(Level::Fatal.to_string(), "fatal");
    }
}
