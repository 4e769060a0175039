//! The fields Grafana's Logs Drilldown calls detected: those a line holds
//! (a JSON object's, else its logfmt pairs) with the parser that found
//! them, and the type a value looks like, guessed as Loki guesses it.

use serde_json::Value;

/// The parser that found a line's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Parser {
    Json,
    Logfmt,
}

impl Parser {
    /// The name Loki reports in a field's `parsers`.
    pub fn name(self) -> &'static str {
        match self {
            Parser::Json => "json",
            Parser::Logfmt => "logfmt",
        }
    }
}

/// One field of a line: its name as LogQL's parsers name it, its value,
/// and for JSON the path of keys it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineField {
    pub name: String,
    pub value: String,
    pub json_path: Option<Vec<String>>,
}

/// The fields of `line`, in its order: a JSON object's leaves (nested
/// keys joined with `_`; arrays and nulls skipped, as Loki's parser
/// does), else its logfmt pairs with a value; `None` when it has neither.
pub fn line_fields(line: &str) -> Option<(Parser, Vec<LineField>)> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('{')
        && let Ok(value @ Value::Object(_)) = serde_json::from_str::<Value>(trimmed)
    {
        let mut fields = Vec::new();
        json_leaves(&mut Vec::new(), &value, &mut fields);
        return Some((Parser::Json, fields));
    }
    let fields: Vec<LineField> = lode_protocol::lines::logfmt_pairs(line)
        .into_iter()
        .filter(|(key, value)| !key.is_empty() && !value.is_empty())
        .map(|(key, value)| LineField {
            name: super::eval::sanitize(&key),
            value,
            json_path: None,
        })
        .collect();
    (!fields.is_empty()).then_some((Parser::Logfmt, fields))
}

fn json_leaves(path: &mut Vec<String>, value: &Value, out: &mut Vec<LineField>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                path.push(key.clone());
                json_leaves(path, inner, out);
                path.pop();
            }
        }
        Value::Array(_) | Value::Null => {}
        leaf => out.push(LineField {
            name: path
                .iter()
                .map(|key| super::eval::sanitize(key))
                .collect::<Vec<_>>()
                .join("_"),
            value: match leaf {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            },
            json_path: Some(path.clone()),
        }),
    }
}

/// The type a value looks like, in Loki's order: `int`, `float`,
/// `boolean`, `duration` (Go's `300ms`, `1h30m`), `bytes` (`10KB`,
/// `5 MiB`), else `string`.
pub fn value_type(value: &str) -> &'static str {
    if value.parse::<i64>().is_ok() {
        "int"
    } else if is_float(value) {
        "float"
    } else if matches!(
        value,
        "1" | "t" | "T" | "TRUE" | "true" | "True" | "0" | "f" | "F" | "FALSE" | "false" | "False"
    ) {
        "boolean"
    } else if is_duration(value) {
        "duration"
    } else if is_bytes(value) {
        "bytes"
    } else {
        "string"
    }
}

/// A decimal number with an optional fraction and exponent, or Go's
/// `Inf`/`NaN` spellings.
fn is_float(value: &str) -> bool {
    let unsigned = value.strip_prefix(['+', '-']).unwrap_or(value);
    let word = unsigned.to_ascii_lowercase();
    if matches!(word.as_str(), "inf" | "infinity" | "nan") {
        return true;
    }
    unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.') && value.parse::<f64>().is_ok()
}

/// Leading decimal digits with an optional fraction: the number's length
/// in bytes, or 0 when `text` does not start with one.
fn number_len(text: &str) -> usize {
    let int = text.bytes().take_while(u8::is_ascii_digit).count();
    let rest = &text[int..];
    let frac = match rest.strip_prefix('.') {
        Some(after) => 1 + after.bytes().take_while(u8::is_ascii_digit).count(),
        None => 0,
    };
    if int == 0 && frac <= 1 { 0 } else { int + frac }
}

fn is_duration(value: &str) -> bool {
    duration_seconds(value).is_some()
}

/// Go's `time.ParseDuration` in seconds: an optional sign, then one or
/// more numbers each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`,
/// `h`); `0` alone.
pub fn duration_seconds(value: &str) -> Option<f64> {
    let (sign, mut rest) = match value.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, value.strip_prefix('+').unwrap_or(value)),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let n = number_len(rest);
        if n == 0 {
            return None;
        }
        let number: f64 = rest.get(..n)?.parse().ok()?;
        rest = rest.get(n..)?;
        let (unit, scale) = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("µs", 1e-6),
            ("μs", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
            ("h", 3600.0),
        ]
        .into_iter()
        .filter(|(u, _)| rest.starts_with(u))
        .max_by_key(|(u, _)| u.len())?;
        rest = rest.get(unit.len()..)?;
        total += number * scale;
    }
    Some(sign * total)
}

fn is_bytes(value: &str) -> bool {
    bytes(value).is_some()
}

/// A size as humanize's `ParseBytes` reads one, in bytes: a number,
/// optional spaces, and a unit (`B`, `kB` = 1000, `KiB` = 1024, `M`, ...
/// any case).
pub fn bytes(value: &str) -> Option<f64> {
    let n = number_len(value);
    if n == 0 {
        return None;
    }
    let number: f64 = value.get(..n)?.parse().ok()?;
    let unit = value.get(n..)?.trim_start().to_ascii_lowercase();
    if unit.is_empty() || unit == "b" || unit == "byte" || unit == "bytes" {
        return Some(number);
    }
    let (power, rest) = ["k", "m", "g", "t", "p", "e"]
        .iter()
        .zip(1..)
        .find_map(|(p, power)| Some((power, unit.strip_prefix(p)?)))?;
    let base: f64 = match rest {
        "" | "b" => 1000.0,
        "i" | "ib" => 1024.0,
        _ => return None,
    };
    Some(number * base.powi(power))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_gives_its_leaves_with_their_paths() {
        let (parser, fields) =
            line_fields(r#"{"status":200,"user":{"id":"u-1","tags":["a"]},"gone":null,"ok":true}"#)
                .unwrap();
        assert_eq!(parser, Parser::Json);
        let got: Vec<(&str, &str, Vec<&str>)> = fields
            .iter()
            .map(|f| {
                let path = f.json_path.as_ref().unwrap();
                (
                    f.name.as_str(),
                    f.value.as_str(),
                    path.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("status", "200", vec!["status"]),
                ("user_id", "u-1", vec!["user", "id"]),
                ("ok", "true", vec!["ok"]),
            ]
        );
    }

    #[test]
    fn a_logfmt_line_gives_its_pairs_and_plain_text_gives_none() {
        let (parser, fields) = line_fields("level=info msg=\"done\" took=15ms empty=").unwrap();
        assert_eq!(parser, Parser::Logfmt);
        let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, vec!["level", "msg", "took"]);
        assert_eq!(line_fields("GET /index.html 200"), None);
        assert_eq!(line_fields(""), None);
    }

    #[test]
    fn values_are_typed_in_lokis_order() {
        for (value, kind) in [
            ("200", "int"),
            ("-3", "int"),
            ("1", "int"),
            ("2.5", "float"),
            ("1e3", "float"),
            ("true", "boolean"),
            ("F", "boolean"),
            ("150ms", "duration"),
            ("1h30m", "duration"),
            ("1.5s", "duration"),
            ("10KB", "bytes"),
            ("5 MiB", "bytes"),
            ("3b", "bytes"),
            ("abc", "string"),
            ("ms", "string"),
            ("1h30", "string"),
            ("", "string"),
            ("10 apples", "string"),
        ] {
            assert_eq!(value_type(value), kind, "{value}");
        }
    }
}
