//! Go's `text/template`, the part Loki's `| line_format` and
//! `| label_format` take: text and `{{ }}` actions (`{{-` and `-}}` trim
//! the spaces beside them), a pipeline of commands joined by `|` (each
//! command's value becomes the last argument of the next), `.label`,
//! `__line__`, `__timestamp__`, strings, numbers, `( )`, and `if` /
//! `else if` / `else` / `end`. Functions: those Loki documents most (see
//! `FUNCTIONS`); any other name is refused when the query is parsed.

use std::fmt::Write as _;

use regex::Regex;

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Pipeline),
    If {
        branches: Vec<(Pipeline, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
}

/// Commands joined by `|`.
#[derive(Debug, Clone)]
struct Pipeline(Vec<Command>);

/// A function and its arguments, or one operand alone.
#[derive(Debug, Clone)]
struct Command {
    func: Option<&'static FuncDef>,
    args: Vec<Arg>,
}

#[derive(Debug, Clone)]
enum Arg {
    Label(String),
    Line,
    Timestamp,
    Text(String),
    Num(f64),
    Bool(bool),
    Nested(Pipeline),
}

/// What a template sees of a line.
pub struct Data<'a> {
    /// A label's value (`""` when the line has none).
    pub label: &'a dyn Fn(&str) -> String,
    pub line: &'a str,
    pub ts: i64,
}

impl std::fmt::Debug for Data<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Data")
            .field("line", &self.line)
            .field("ts", &self.ts)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(String),
    Num(f64),
    Bool(bool),
    /// `__timestamp__`, ns since the epoch.
    Time(i64),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Text(t) => t.clone(),
            Value::Num(n) => number_text(*n),
            Value::Bool(b) => b.to_string(),
            Value::Time(ns) => go_time(*ns),
        }
    }

    fn num(&self) -> f64 {
        match self {
            Value::Text(t) => t.trim().parse().unwrap_or(0.0),
            Value::Num(n) => *n,
            Value::Bool(b) => f64::from(u8::from(*b)),
            Value::Time(ns) => *ns as f64,
        }
    }

    fn truthy(&self) -> bool {
        match self {
            Value::Text(t) => !t.is_empty(),
            Value::Num(n) => *n != 0.0,
            Value::Bool(b) => *b,
            Value::Time(_) => true,
        }
    }
}

/// A number as Go prints an integer or a float.
fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{n:.0}")
    } else {
        n.to_string()
    }
}

/// Go's default rendering of a time: `2026-01-02 15:04:05.5 +0000 UTC`.
fn go_time(ns: i64) -> String {
    let mut out = layout_time("2006-01-02 15:04:05", ns);
    let nanos = ns.rem_euclid(1_000_000_000);
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        let _ = write!(out, ".{}", frac.trim_end_matches('0'));
    }
    out + " +0000 UTC"
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `text` read in a Go layout (`2006-01-02`, `2006-01-02T15:04:05Z07:00`,
/// `02/01/2006 15:04`), as UTC; `None` when it does not fit.
fn parse_time(layout: &str, text: &str) -> Option<i64> {
    let fields = [
        ("2006", 4usize),
        ("01", 2),
        ("02", 2),
        ("15", 2),
        ("04", 2),
        ("05", 2),
    ];
    let mut got = [1970i64, 1, 1, 0, 0, 0];
    let mut nanos = 0i64;
    let (mut rest, mut input) = (layout, text);
    'outer: while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("Z07:00") {
            input = input.strip_prefix('Z').unwrap_or(input);
            rest = after;
            continue;
        }
        if let Some(after) = rest.strip_prefix(".000") {
            let digits = input.strip_prefix('.')?;
            let len = digits.bytes().take_while(u8::is_ascii_digit).count();
            let frac = digits.get(..len.min(9))?;
            nanos = format!("{frac:0<9}").parse().ok()?;
            input = digits.get(len..)?;
            rest = after.trim_start_matches('0');
            continue;
        }
        for (i, (token, width)) in fields.iter().enumerate() {
            if let Some(after) = rest.strip_prefix(token) {
                let value = input.get(..*width)?;
                *got.get_mut(i)? = value.parse().ok()?;
                input = input.get(*width..)?;
                rest = after;
                continue 'outer;
            }
        }
        let mut chars = rest.chars();
        let c = chars.next()?;
        input = input.strip_prefix(c)?;
        rest = chars.as_str();
    }
    if !input.is_empty() {
        return None;
    }
    let [year, month, day, hour, minute, second] = got;
    let days = lode_codec::days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    seconds.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// A time in a Go layout (`2006-01-02T15:04:05Z07:00`), in UTC.
fn layout_time(layout: &str, ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let (year, month, day) = lode_codec::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let (hour, minute, second) = (rem / 3600, rem / 60 % 60, rem % 60);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let month_name = MONTHS.get(month as usize - 1).copied().unwrap_or("");
    let day_name = DAYS
        .get(secs.div_euclid(86_400).rem_euclid(7) as usize)
        .copied()
        .unwrap_or("");
    // Longest tokens first, so `2006` is not `2` then `006`.
    let tokens: [(&str, String); 17] = [
        ("2006", format!("{year:04}")),
        ("Z07:00", "Z".to_owned()),
        ("-07:00", "+00:00".to_owned()),
        ("-0700", "+0000".to_owned()),
        (".000000000", format!(".{nanos:09}")),
        (".000000", format!(".{:06}", nanos / 1_000)),
        (".000", format!(".{:03}", nanos / 1_000_000)),
        ("January", month_name.to_owned()),
        ("Jan", month_name.to_owned()),
        ("Mon", day_name.to_owned()),
        ("MST", "UTC".to_owned()),
        ("01", format!("{month:02}")),
        ("02", format!("{day:02}")),
        ("15", format!("{hour:02}")),
        ("04", format!("{minute:02}")),
        ("05", format!("{second:02}")),
        ("06", format!("{:02}", year.rem_euclid(100))),
    ];
    let mut out = String::new();
    let mut rest = layout;
    'outer: while !rest.is_empty() {
        for (token, value) in &tokens {
            if let Some(after) = rest.strip_prefix(token) {
                out.push_str(value);
                rest = after;
                continue 'outer;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

type Func = fn(&[Value]) -> Result<Value, String>;

/// A function's name, its fewest and most arguments, and its body.
type FuncDef = (&'static str, usize, usize, Func);

/// The functions taken.
const FUNCTIONS: &[FuncDef] = &[
    ("ToUpper", 1, 1, |a| Ok(text(a, 0).to_uppercase().into())),
    ("upper", 1, 1, |a| Ok(text(a, 0).to_uppercase().into())),
    ("ToLower", 1, 1, |a| Ok(text(a, 0).to_lowercase().into())),
    ("lower", 1, 1, |a| Ok(text(a, 0).to_lowercase().into())),
    ("title", 1, 1, |a| Ok(title(&text(a, 0)).into())),
    ("TrimSpace", 1, 1, |a| Ok(text(a, 0).trim().into())),
    ("trim", 1, 1, |a| Ok(text(a, 0).trim().into())),
    ("Trim", 2, 2, |a| {
        Ok(trim_set(&text(a, 0), &text(a, 1), true, true).into())
    }),
    ("TrimLeft", 2, 2, |a| {
        Ok(trim_set(&text(a, 0), &text(a, 1), true, false).into())
    }),
    ("TrimRight", 2, 2, |a| {
        Ok(trim_set(&text(a, 0), &text(a, 1), false, true).into())
    }),
    ("trimAll", 2, 2, |a| {
        Ok(trim_set(&text(a, 1), &text(a, 0), true, true).into())
    }),
    ("TrimPrefix", 2, 2, |a| {
        let (s, p) = (text(a, 0), text(a, 1));
        Ok(s.strip_prefix(p.as_str()).unwrap_or(&s).into())
    }),
    ("trimPrefix", 2, 2, |a| {
        let (p, s) = (text(a, 0), text(a, 1));
        Ok(s.strip_prefix(p.as_str()).unwrap_or(&s).into())
    }),
    ("TrimSuffix", 2, 2, |a| {
        let (s, p) = (text(a, 0), text(a, 1));
        Ok(s.strip_suffix(p.as_str()).unwrap_or(&s).into())
    }),
    ("trimSuffix", 2, 2, |a| {
        let (p, s) = (text(a, 0), text(a, 1));
        Ok(s.strip_suffix(p.as_str()).unwrap_or(&s).into())
    }),
    ("Replace", 4, 4, |a| {
        let (s, old, new) = (text(a, 0), text(a, 1), text(a, 2));
        let n = num(a, 3);
        let most = if n < 0.0 { usize::MAX } else { n as usize };
        Ok(bounded_replace(&s, &old, &new, most).into())
    }),
    ("replace", 3, 3, |a| {
        Ok(bounded_replace(&text(a, 2), &text(a, 0), &text(a, 1), usize::MAX).into())
    }),
    ("regexReplaceAll", 3, 3, |a| {
        regex_replace(&text(a, 0), &text(a, 1), &text(a, 2), true).map(Value::Text)
    }),
    ("regexReplaceAllLiteral", 3, 3, |a| {
        regex_replace(&text(a, 0), &text(a, 1), &text(a, 2), false).map(Value::Text)
    }),
    ("default", 2, 2, |a| {
        let given = a.get(1).cloned().unwrap_or(Value::Text(String::new()));
        Ok(if given.truthy() { given } else { arg(a, 0) })
    }),
    ("contains", 2, 2, |a| {
        Ok(Value::Bool(text(a, 1).contains(&text(a, 0))))
    }),
    ("hasPrefix", 2, 2, |a| {
        Ok(Value::Bool(text(a, 1).starts_with(&text(a, 0))))
    }),
    ("hasSuffix", 2, 2, |a| {
        Ok(Value::Bool(text(a, 1).ends_with(&text(a, 0))))
    }),
    ("trunc", 2, 2, |a| {
        let (n, s) = (num(a, 0) as i64, text(a, 1));
        let len = s.chars().count() as i64;
        let keep = if n >= 0 { n.min(len) } else { len };
        Ok(s.chars().take(keep as usize).collect::<String>().into())
    }),
    ("substr", 3, 3, |a| {
        let (from, to, s) = (num(a, 0).max(0.0) as usize, num(a, 1), text(a, 2));
        let to = if to < 0.0 { usize::MAX } else { to as usize };
        Ok(s.chars()
            .skip(from)
            .take(to.saturating_sub(from))
            .collect::<String>()
            .into())
    }),
    ("repeat", 2, 2, |a| {
        let t = text(a, 1);
        let most = MAX_OUTPUT / t.len().max(1);
        Ok(t.repeat((num(a, 0).max(0.0) as usize).min(most)).into())
    }),
    ("len", 1, 1, |a| Ok(Value::Num(text(a, 0).len() as f64))),
    ("printf", 1, 16, |a| {
        Ok(printf(&text(a, 0), a.get(1..).unwrap_or_default()).into())
    }),
    ("add", 1, 16, |a| Ok(ints(a, |x, y| x.wrapping_add(y)))),
    ("sub", 2, 2, |a| Ok(ints(a, |x, y| x.wrapping_sub(y)))),
    ("mul", 1, 16, |a| Ok(ints(a, |x, y| x.wrapping_mul(y)))),
    ("div", 2, 2, |a| {
        Ok(ints(a, |x, y| x.checked_div(y).unwrap_or(0)))
    }),
    ("mod", 2, 2, |a| {
        Ok(ints(a, |x, y| x.checked_rem(y).unwrap_or(0)))
    }),
    ("max", 1, 16, |a| Ok(ints(a, i64::max))),
    ("min", 1, 16, |a| Ok(ints(a, i64::min))),
    ("addf", 1, 16, |a| Ok(floats(a, |x, y| x + y))),
    ("subf", 2, 16, |a| Ok(floats(a, |x, y| x - y))),
    ("mulf", 1, 16, |a| Ok(floats(a, |x, y| x * y))),
    ("divf", 2, 16, |a| Ok(floats(a, |x, y| x / y))),
    ("maxf", 1, 16, |a| Ok(floats(a, f64::max))),
    ("minf", 1, 16, |a| Ok(floats(a, f64::min))),
    ("ceil", 1, 1, |a| Ok(Value::Num(num(a, 0).ceil()))),
    ("floor", 1, 1, |a| Ok(Value::Num(num(a, 0).floor()))),
    ("round", 1, 2, |a| {
        let scale = 10f64.powi(num(a, 1) as i32);
        Ok(Value::Num((num(a, 0) * scale).round() / scale))
    }),
    ("eq", 2, 16, |a| {
        let first = arg(a, 0);
        Ok(Value::Bool(a.iter().skip(1).any(|v| same(&first, v))))
    }),
    ("ne", 2, 2, |a| {
        Ok(Value::Bool(!same(&arg(a, 0), &arg(a, 1))))
    }),
    ("lt", 2, 2, |a| Ok(Value::Bool(order(a).is_lt()))),
    ("le", 2, 2, |a| Ok(Value::Bool(order(a).is_le()))),
    ("gt", 2, 2, |a| Ok(Value::Bool(order(a).is_gt()))),
    ("ge", 2, 2, |a| Ok(Value::Bool(order(a).is_ge()))),
    ("and", 1, 16, |a| {
        Ok(a.iter()
            .find(|v| !v.truthy())
            .or(a.last())
            .cloned()
            .unwrap_or(Value::Bool(true)))
    }),
    ("or", 1, 16, |a| {
        Ok(a.iter()
            .find(|v| v.truthy())
            .or(a.last())
            .cloned()
            .unwrap_or(Value::Bool(false)))
    }),
    ("not", 1, 1, |a| Ok(Value::Bool(!arg(a, 0).truthy()))),
    ("date", 2, 2, |a| {
        Ok(layout_time(&text(a, 0), time_ns(&arg(a, 1))).into())
    }),
    ("unixEpoch", 1, 1, |a| {
        Ok(Value::Num(
            time_ns(&arg(a, 0)).div_euclid(1_000_000_000) as f64
        ))
    }),
    ("unixEpochMillis", 1, 1, |a| {
        Ok(Value::Num(time_ns(&arg(a, 0)).div_euclid(1_000_000) as f64))
    }),
    ("unixEpochNanos", 1, 1, |a| {
        Ok(Value::Num(time_ns(&arg(a, 0)) as f64))
    }),
    ("unixToTime", 1, 1, |a| {
        Ok(Value::Time((num(a, 0) * 1e9) as i64))
    }),
    ("now", 0, 0, |_| Ok(Value::Time(now_ns()))),
    ("toDate", 2, 2, |a| {
        let (layout, given) = (text(a, 0), text(a, 1));
        parse_time(&layout, &given)
            .map(Value::Time)
            .ok_or_else(|| format!("toDate: \"{given}\" is not in the layout \"{layout}\""))
    }),
    ("count", 2, 2, |a| {
        let n = with_regex(&text(a, 0), |re| re.find_iter(&text(a, 1)).count())?;
        Ok(Value::Num(n as f64))
    }),
    ("bytes", 1, 1, |a| {
        Ok(Value::Num(super::fields::bytes(&text(a, 0)).unwrap_or(0.0)))
    }),
    ("duration", 1, 1, |a| {
        Ok(Value::Num(
            super::fields::duration_seconds(&text(a, 0)).unwrap_or(0.0),
        ))
    }),
];

impl From<String> for Value {
    fn from(text: String) -> Value {
        Value::Text(text)
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Value {
        Value::Text(text.to_owned())
    }
}

fn arg(args: &[Value], i: usize) -> Value {
    args.get(i).cloned().unwrap_or(Value::Text(String::new()))
}

fn text(args: &[Value], i: usize) -> String {
    args.get(i).map(Value::text).unwrap_or_default()
}

fn num(args: &[Value], i: usize) -> f64 {
    args.get(i).map_or(0.0, Value::num)
}

fn time_ns(value: &Value) -> i64 {
    match value {
        Value::Time(ns) => *ns,
        other => (other.num() * 1e9) as i64,
    }
}

fn ints(args: &[Value], f: fn(i64, i64) -> i64) -> Value {
    let mut values = args.iter().map(|v| v.num() as i64);
    let first = values.next().unwrap_or(0);
    Value::Num(values.fold(first, f) as f64)
}

fn floats(args: &[Value], f: fn(f64, f64) -> f64) -> Value {
    let mut values = args.iter().map(Value::num);
    let first = values.next().unwrap_or(0.0);
    Value::Num(values.fold(first, f))
}

/// Equal as Go's `eq` compares: numbers as numbers, else as text.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Num(x), other) | (other, Value::Num(x)) => other.num() == *x,
        _ => a.text() == b.text(),
    }
}

fn order(args: &[Value]) -> std::cmp::Ordering {
    let (a, b) = (arg(args, 0), arg(args, 1));
    match (&a, &b) {
        (Value::Num(_), _) | (_, Value::Num(_)) => a.num().total_cmp(&b.num()),
        _ => a.text().cmp(&b.text()),
    }
}

fn title(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut start = true;
    for c in text.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !c.is_alphanumeric();
    }
    out
}

fn trim_set(text: &str, set: &str, left: bool, right: bool) -> String {
    let cut = |c: char| set.contains(c);
    let t = if left {
        text.trim_start_matches(cut)
    } else {
        text
    };
    let t = if right { t.trim_end_matches(cut) } else { t };
    t.to_owned()
}

fn regex(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid regex \"{pattern}\": {e}"))
}

thread_local! {
    /// Regexes of template functions, compiled once per thread, not per
    /// line (a few patterns per query).
    static REGEXES: std::cell::RefCell<Vec<(String, Regex)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Most regexes kept compiled per thread.
const KEPT_REGEXES: usize = 16;

fn with_regex<T>(pattern: &str, f: impl FnOnce(&Regex) -> T) -> Result<T, String> {
    REGEXES.with(|cell| {
        let mut kept = cell.borrow_mut();
        if let Some((_, re)) = kept.iter().find(|(p, _)| p == pattern) {
            return Ok(f(re));
        }
        let re = regex(pattern)?;
        let out = f(&re);
        if kept.len() >= KEPT_REGEXES {
            kept.remove(0);
        }
        kept.push((pattern.to_owned(), re));
        Ok(out)
    })
}

/// `s` with `old` replaced by `new` (`most` times at most), the result
/// cut at `MAX_OUTPUT` (an empty `old` matches between every character,
/// as in Go).
fn bounded_replace(s: &str, old: &str, new: &str, most: usize) -> String {
    let mut out = String::new();
    let mut done = 0;
    let mut rest = s;
    while done < most && out.len() <= MAX_OUTPUT {
        let at = if old.is_empty() {
            if done > 0 && rest.is_empty() {
                break;
            }
            // Between characters: after the next one, except at the start.
            match (done, rest.chars().next()) {
                (0, _) => 0,
                (_, Some(c)) => c.len_utf8(),
                (_, None) => 0,
            }
        } else {
            match rest.find(old) {
                Some(at) => at,
                None => break,
            }
        };
        out.push_str(rest.get(..at).unwrap_or_default());
        out.push_str(new);
        rest = rest.get(at + old.len()..).unwrap_or_default();
        done += 1;
    }
    out.push_str(rest);
    cut(out)
}

/// Every match of `pattern` in `s` replaced by `with` (`$1`, `${name}`
/// expanded when `expand`), the result cut at `MAX_OUTPUT`.
fn regex_replace(pattern: &str, s: &str, with: &str, expand: bool) -> Result<String, String> {
    with_regex(pattern, |re| {
        let mut out = String::new();
        let mut last = 0;
        for found in re.captures_iter(s) {
            if out.len() > MAX_OUTPUT {
                break;
            }
            let Some(whole) = found.get(0) else { continue };
            out.push_str(s.get(last..whole.start()).unwrap_or_default());
            if expand {
                found.expand(with, &mut out);
            } else {
                out.push_str(with);
            }
            last = whole.end();
        }
        out.push_str(s.get(last..).unwrap_or_default());
        cut(out)
    })
}

/// `text` cut to at most `MAX_OUTPUT` bytes, at a character boundary.
fn cut(mut text: String) -> String {
    if text.len() > MAX_OUTPUT {
        let mut at = MAX_OUTPUT;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
    text
}

/// Go's `fmt.Sprintf` for `%s %v %d %f %q %x %%`, with width and
/// precision.
fn printf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if out.len() > MAX_OUTPUT {
            break;
        }
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&d) = chars.peek() {
            if d.is_ascii_digit() || d == '.' || d == '-' {
                spec.push(d);
                chars.next();
            } else {
                break;
            }
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(value) = args.next() else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        let left = spec.starts_with('-');
        let spec = spec.trim_start_matches('-');
        // Bounded: a width or precision past the output's size is cut.
        let (width, precision): (usize, Option<usize>) = match spec.split_once('.') {
            Some((w, p)) => (w.parse().unwrap_or(0), p.parse::<usize>().ok()),
            None => (spec.parse().unwrap_or(0), None),
        };
        let (width, precision) = (width.min(MAX_OUTPUT), precision.map(|p| p.min(64)));
        let body = match verb {
            'd' => format!("{}", value.num() as i64),
            'f' | 'F' => format!("{:.*}", precision.unwrap_or(6), value.num()),
            'x' => format!("{:x}", value.num() as i64),
            'q' => format!("{:?}", value.text()),
            _ => match precision {
                Some(p) => value.text().chars().take(p).collect(),
                None => value.text(),
            },
        };
        let pad = width.saturating_sub(body.chars().count());
        if left {
            out.push_str(&body);
            out.push_str(&" ".repeat(pad));
        } else {
            out.push_str(&" ".repeat(pad));
            out.push_str(&body);
        }
    }
    out
}

/// Longest output a template makes; a longer one is cut there.
const MAX_OUTPUT: usize = 64 * 1024;

impl Template {
    /// Renders the template for a line; an error names what failed (Loki
    /// then marks the line `__error__="TemplateFormatErr"`).
    pub fn render(&self, data: &Data<'_>) -> Result<String, String> {
        let mut out = String::new();
        render_nodes(&self.nodes, data, &mut out)?;
        Ok(cut(out))
    }
}

fn render_nodes(nodes: &[Node], data: &Data<'_>, out: &mut String) -> Result<(), String> {
    for node in nodes {
        if out.len() > MAX_OUTPUT {
            break;
        }
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Action(pipeline) => out.push_str(&cut(run(pipeline, data)?.text())),
            Node::If {
                branches,
                otherwise,
            } => {
                let mut body = otherwise;
                for (condition, then) in branches {
                    if run(condition, data)?.truthy() {
                        body = then;
                        break;
                    }
                }
                render_nodes(body, data, out)?;
            }
        }
    }
    Ok(())
}

fn run(pipeline: &Pipeline, data: &Data<'_>) -> Result<Value, String> {
    let mut last: Option<Value> = None;
    for command in &pipeline.0 {
        let mut args = command
            .args
            .iter()
            .map(|a| value(a, data))
            .collect::<Result<Vec<_>, _>>()?;
        args.extend(last.take());
        last = Some(match command.func {
            Some((name, least, _, f)) => {
                if args.len() < *least {
                    return Err(format!(
                        "{name} takes {least} arguments, given {}",
                        args.len()
                    ));
                }
                match f(&args)? {
                    Value::Text(t) => Value::Text(cut(t)),
                    other => other,
                }
            }
            None => args.pop().unwrap_or(Value::Text(String::new())),
        });
    }
    Ok(last.unwrap_or(Value::Text(String::new())))
}

fn value(arg: &Arg, data: &Data<'_>) -> Result<Value, String> {
    Ok(match arg {
        Arg::Label(name) => Value::Text((data.label)(name)),
        Arg::Line => Value::Text(data.line.to_owned()),
        Arg::Timestamp => Value::Time(data.ts),
        Arg::Text(t) => Value::Text(t.clone()),
        Arg::Num(n) => Value::Num(*n),
        Arg::Bool(b) => Value::Bool(*b),
        Arg::Nested(p) => run(p, data)?,
    })
}

// Parsing.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Field(String),
    Word(String),
    Str(String),
    Num(f64),
    Pipe,
    Open,
    Close,
}

/// Parses a template; the error says what is wrong, for the caller to
/// place at the template's string.
pub fn parse(text: &str) -> Result<Template, String> {
    let mut actions = split(text)?;
    actions.reverse();
    match nodes(&mut actions, 0)? {
        (nodes, Ending::Done) => Ok(Template { nodes }),
        (_, Ending::End) => Err("unexpected {{end}}".into()),
        (_, Ending::Else(_)) => Err("unexpected {{else}}".into()),
    }
}

/// Text and actions, in order; an action as its tokens.
enum Piece {
    Text(String),
    Action(Vec<Tok>),
}

fn split(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut before = &rest[..open];
        if trim_next {
            before = before.trim_start();
        }
        let mut inner = &rest[open + 2..];
        if let Some(t) = inner
            .strip_prefix('-')
            .filter(|t| t.starts_with(char::is_whitespace))
        {
            before = before.trim_end();
            inner = t;
        }
        let close = inner.find("}}").ok_or("an action {{ without its }}")?;
        let mut body = &inner[..close];
        trim_next = false;
        if let Some(b) = body
            .strip_suffix('-')
            .filter(|b| b.ends_with(char::is_whitespace))
        {
            body = b;
            trim_next = true;
        }
        if !before.is_empty() {
            pieces.push(Piece::Text(before.to_owned()));
        }
        let body = body.trim();
        if !(body.starts_with("/*") && body.ends_with("*/")) {
            pieces.push(Piece::Action(tokens(body)?));
        }
        rest = &inner[close + 2..];
    }
    let last = if trim_next { rest.trim_start() } else { rest };
    if !last.is_empty() {
        pieces.push(Piece::Text(last.to_owned()));
    }
    Ok(pieces)
}

fn tokens(body: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = body.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut open = 0usize;
    let word_char = |c: char| c.is_alphanumeric() || c == '_';
    while let Some(&c) = chars.get(i) {
        let start = i;
        let take = |i: &mut usize, ok: &dyn Fn(char) -> bool| {
            while chars.get(*i).is_some_and(|&c| ok(c)) {
                *i += 1;
            }
            chars
                .get(start..*i)
                .unwrap_or_default()
                .iter()
                .collect::<String>()
        };
        match c {
            c if c.is_whitespace() => i += 1,
            '|' | '(' | ')' => {
                out.push(match c {
                    '|' => Tok::Pipe,
                    '(' => Tok::Open,
                    _ => Tok::Close,
                });
                i += 1;
                match c {
                    '(' => open += 1,
                    ')' => open = open.saturating_sub(1),
                    _ => {}
                }
                if open > MAX_NESTING {
                    return Err(format!("parentheses nested deeper than {MAX_NESTING}"));
                }
            }
            '.' => {
                i += 1;
                let name = take(&mut i, &|c| word_char(c) || c == '.');
                let name = name.trim_start_matches('.').to_owned();
                if name.is_empty() {
                    return Err("'.' alone is not taken: name a label, as .status".into());
                }
                out.push(Tok::Field(name));
            }
            '"' | '`' => {
                let mut text = String::new();
                i += 1;
                loop {
                    let Some(&d) = chars.get(i) else {
                        return Err(format!("a string without its closing {c}"));
                    };
                    i += 1;
                    match d {
                        d if d == c => break,
                        '\\' if c == '"' => {
                            let e = chars.get(i).copied().unwrap_or('\\');
                            i += 1;
                            text.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                other => other,
                            });
                        }
                        d => text.push(d),
                    }
                }
                out.push(Tok::Str(text));
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' => {
                i += 1;
                let n = take(&mut i, &|c| c.is_ascii_alphanumeric() || c == '.');
                out.push(Tok::Num(
                    n.parse().map_err(|_| format!("'{n}' is not a number"))?,
                ));
            }
            c if word_char(c) => {
                let w = take(&mut i, &word_char);
                out.push(Tok::Word(w));
            }
            '$' => {
                return Err(
                    "template variables ($x) and range are not supported by lode: it takes .label, if, else and end"
                        .into(),
                );
            }
            other => return Err(format!("unexpected '{other}' in an action")),
        }
    }
    Ok(out)
}

/// Deepest nesting of `if` blocks and of parentheses in an action.
const MAX_NESTING: usize = 32;

/// How a list of nodes ended: at `{{end}}`, at `{{else}}` (with the
/// condition of an `{{else if ...}}`), or at the template's end.
enum Ending {
    End,
    Else(Vec<Tok>),
    Done,
}

/// Nodes up to an `else`, `else if ...` or `end`, or the end of the
/// template, inside `depth` `if` blocks.
fn nodes(pieces: &mut Vec<Piece>, depth: usize) -> Result<(Vec<Node>, Ending), String> {
    let mut out = Vec::new();
    while let Some(piece) = pieces.pop() {
        let toks = match piece {
            Piece::Text(t) => {
                out.push(Node::Text(t));
                continue;
            }
            Piece::Action(toks) => toks,
        };
        match toks.first() {
            Some(Tok::Word(w)) if w == "end" => return Ok((out, Ending::End)),
            Some(Tok::Word(w)) if w == "else" => {
                let rest = toks.get(1..).unwrap_or_default().to_vec();
                return Ok((out, Ending::Else(rest)));
            }
            Some(Tok::Word(w)) if w == "if" => {
                if depth >= MAX_NESTING {
                    return Err(format!("{{{{if}}}} nested deeper than {MAX_NESTING}"));
                }
                out.push(if_node(
                    toks.get(1..).unwrap_or_default(),
                    pieces,
                    depth + 1,
                )?)
            }
            Some(Tok::Word(w))
                if matches!(
                    w.as_str(),
                    "range" | "with" | "define" | "template" | "block"
                ) =>
            {
                return Err(format!(
                    "{{{{{w}}}}} is not supported by lode: it takes if, else and end"
                ));
            }
            _ => out.push(Node::Action(pipeline(&toks)?)),
        }
    }
    Ok((out, Ending::Done))
}

fn if_node(condition: &[Tok], pieces: &mut Vec<Piece>, depth: usize) -> Result<Node, String> {
    let mut branches = vec![(pipeline(condition)?, Vec::new())];
    loop {
        let (body, ending) = nodes(pieces, depth)?;
        if let Some(last) = branches.last_mut() {
            last.1 = body;
        }
        match ending {
            Ending::End => {
                return Ok(Node::If {
                    branches,
                    otherwise: Vec::new(),
                });
            }
            Ending::Else(rest) if rest.first() == Some(&Tok::Word("if".into())) => {
                branches.push((pipeline(rest.get(1..).unwrap_or_default())?, Vec::new()));
            }
            Ending::Else(rest) if rest.is_empty() => {
                let (otherwise, ending) = nodes(pieces, depth)?;
                if !matches!(ending, Ending::End) {
                    return Err("an {{if}} ... {{else}} without its {{end}}".into());
                }
                return Ok(Node::If {
                    branches,
                    otherwise,
                });
            }
            Ending::Else(_) => return Err("{{else}} takes nothing after it but if".into()),
            Ending::Done => return Err("an {{if}} without its {{end}}".into()),
        }
    }
}

fn pipeline(toks: &[Tok]) -> Result<Pipeline, String> {
    if toks.is_empty() {
        return Err("an empty action {{ }}".into());
    }
    let mut commands = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Open => depth += 1,
            Tok::Close => depth = depth.checked_sub(1).ok_or("a ')' without its '('")?,
            Tok::Pipe if depth == 0 => {
                commands.push(command(toks.get(start..i).unwrap_or_default())?);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("a '(' without its ')'".into());
    }
    commands.push(command(toks.get(start..).unwrap_or_default())?);
    Ok(Pipeline(commands))
}

fn command(toks: &[Tok]) -> Result<Command, String> {
    let mut args = Vec::new();
    let mut i = 0;
    let mut func = None;
    if let Some(Tok::Word(w)) = toks.first()
        && !matches!(w.as_str(), "__line__" | "__timestamp__" | "true" | "false")
    {
        let def = FUNCTIONS
            .iter()
            .find(|(name, ..)| name == w)
            .ok_or_else(|| format!("function \"{w}\" not defined (lode takes {})", names()))?;
        func = Some(def);
        i = 1;
    }
    while let Some(t) = toks.get(i) {
        i += 1;
        args.push(match t {
            Tok::Field(name) => Arg::Label(name.clone()),
            Tok::Str(s) => Arg::Text(s.clone()),
            Tok::Num(n) => Arg::Num(*n),
            Tok::Word(w) if w == "__line__" => Arg::Line,
            Tok::Word(w) if w == "__timestamp__" => Arg::Timestamp,
            Tok::Word(w) if w == "true" || w == "false" => Arg::Bool(w == "true"),
            Tok::Open => {
                let start = i;
                let mut depth = 1;
                while depth > 0 {
                    match toks.get(i) {
                        Some(Tok::Open) => depth += 1,
                        Some(Tok::Close) => depth -= 1,
                        Some(_) => {}
                        None => return Err("a '(' without its ')'".into()),
                    }
                    i += 1;
                }
                Arg::Nested(pipeline(toks.get(start..i - 1).unwrap_or_default())?)
            }
            // A function that takes nothing is called where it stands.
            Tok::Word(w) => {
                let niladic = FUNCTIONS
                    .iter()
                    .find(|(name, least, ..)| name == w && *least == 0);
                let Some(def) = niladic else {
                    return Err(format!(
                        "'{w}' as an argument: call a function in parentheses, as (ToUpper .x)"
                    ));
                };
                Arg::Nested(Pipeline(vec![Command {
                    func: Some(def),
                    args: Vec::new(),
                }]))
            }
            other => return Err(format!("unexpected {other:?} in an action")),
        });
    }
    match func {
        // A piped value may come as one more: too few is found when run.
        Some((name, _, most, _)) if args.len() > *most => {
            return Err(format!(
                "{name} takes at most {most} arguments, given {}",
                args.len()
            ));
        }
        Some(_) => {}
        None if args.len() != 1 => {
            return Err("an action without a function takes one value".into());
        }
        None => {}
    }
    Ok(Command { func, args })
}

fn names() -> String {
    FUNCTIONS
        .iter()
        .map(|(n, ..)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, labels: &[(&str, &str)]) -> String {
        let label = |name: &str| {
            labels
                .iter()
                .find(|(k, _)| *k == name)
                .map_or(String::new(), |(_, v)| (*v).to_owned())
        };
        parse(template)
            .unwrap()
            .render(&Data {
                label: &label,
                line: "the line",
                ts: 1_700_000_000_500_000_000,
            })
            .unwrap()
    }

    #[test]
    fn loki_docs_examples_render() {
        let l = [
            ("status", "200"),
            ("method", "get"),
            ("query", "a.b.c"),
            ("took", "1.5"),
        ];
        assert_eq!(render("{{.method}} {{.status}}", &l), "get 200");
        assert_eq!(render("{{ .method | ToUpper }}", &l), "GET");
        assert_eq!(render("{{ToUpper .method}}", &l), "GET");
        assert_eq!(render(r#"{{ Replace .query "." "/" -1 }}"#, &l), "a/b/c");
        assert_eq!(render(r#"{{ .query | replace "." "/" }}"#, &l), "a/b/c");
        assert_eq!(render(r#"{{ .none | default "-" }}"#, &l), "-");
        assert_eq!(
            render(
                r#"{{ regexReplaceAll "(\\w)\\.(\\w)" .query "${1}${2}" }}"#,
                &l
            ),
            "ab.c"
        );
        assert_eq!(
            render("{{ div .status 7 }} {{ mulf .took 2 }} {{ add 1 2 3 }}", &l),
            "28 3 6"
        );
        assert_eq!(
            render(r#"{{ printf "%-5s|%3d|%.2f" .method 7 .took }}"#, &l),
            "get  |  7|1.50"
        );
        assert_eq!(
            render(
                r#"{{ if eq .status "200" }}ok{{ else if eq .status "500" }}bad{{ else }}?{{ end }}"#,
                &l
            ),
            "ok"
        );
        assert_eq!(
            render(r#"{{ if gt .took 2.0 }}slow{{ else }}fast{{ end }}"#, &l),
            "fast"
        );
        assert_eq!(render("{{ __line__ | ToUpper }}", &l), "THE LINE");
        assert_eq!(
            render(
                r#"{{ date "2006-01-02T15:04:05.000Z07:00" __timestamp__ }}"#,
                &l
            ),
            "2023-11-14T22:13:20.500Z"
        );
        assert_eq!(render("{{ unixEpoch __timestamp__ }}", &l), "1700000000");
        assert_eq!(render("a  {{- .method -}}  b", &l), "agetb");
        assert_eq!(render("{{ trunc 2 (ToUpper .method) }}", &l), "GE");
        assert_eq!(render("{{/* a comment */}}x", &l), "x");
        assert_eq!(
            render("{{if .x}}A{{else}}{{if .method}}B{{end}}{{end}}", &l),
            "B"
        );
        // Bounded whatever the template asks.
        assert!(
            render(r#"{{ printf "%.70000f|%99999999999d" 1 2 }}"#, &l).len() <= MAX_OUTPUT + 80
        );
        let huge = r#"{{ repeat 1024 (repeat 1024 (repeat 1024 "xxxxxxxx")) }}"#;
        assert!(render(huge, &l).len() <= MAX_OUTPUT);
        assert!(
            render(r#"{{ replace "" "0123456789" (repeat 9999 "ab") }}"#, &l).len() <= MAX_OUTPUT
        );
        assert_eq!(render(r#"{{ replace "" "-" "abc" }}"#, &l), "-a-b-c-");
        assert_eq!(
            render(r#"{{ unixEpoch (toDate "2006-01-02" "2023-11-14") }}"#, &l),
            "1699920000"
        );
        assert_eq!(render(r#"{{ __line__ | count "e" }}"#, &l), "2");
        assert!(render("{{ unixEpoch now }}", &l).parse::<i64>().unwrap() > 1_700_000_000);
    }

    #[test]
    fn mistakes_are_refused_when_parsed() {
        for (bad, says) in [
            ("{{ frobnicate .x }}", "not defined"),
            ("{{ .x ", "without its }}"),
            ("{{ if .x }}a", "without its {{end}}"),
            ("{{ range .x }}{{ end }}", "not supported"),
            ("{{ end }}", "unexpected"),
            (
                &format!("{{{{ {}1{} }}}}", "(".repeat(40), ")".repeat(40)),
                "nested deeper",
            ),
            (&"{{if .a}}".repeat(40), "nested deeper"),
            ("{{ (ToUpper .x }}", "without its ')'"),
            ("{{ \"abc }}", "closing"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn no_template_panics(text in "\\PC{0,60}") {
            if let Ok(t) = parse(&text) {
                let _ = t.render(&Data { label: &|_| String::new(), line: "x", ts: 0 });
            }
        }
    }
}
