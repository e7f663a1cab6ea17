//! A byte-level port of `metricsflow/model/lpscan.py` (InfluxDB 1.x's `models/points.go`
//! rules) and of the validating half of `lineprotocol.canonicalize`'s exact path.
//!
//! Every function mirrors the Python function of the same name step by step. Where the
//! Python works on characters and this works on UTF-8 bytes, the two agree: every byte the
//! rules look at is ASCII, and a UTF-8 continuation byte is never one of them; character
//! counts (line length, tag value length, the key-size shortcuts) are counted as characters.
//!
//! `Err(Defer)` means "not this path's to answer": every refused line, and every case this
//! port does not settle itself (very long digit strings, a canonical line holding a newline),
//! is handed back to the Python exact scanner, which produces the error (line, column, reason)
//! or the point. So errors are the Python path's by construction.

use std::borrow::Cow;

#[derive(Debug)]
pub struct Defer;

pub type R<T> = Result<T, Defer>;

#[derive(Clone, Copy)]
pub struct Limits {
    pub max_line_length: i64,
    pub max_tags: i64,
    pub max_fields: i64,
    pub max_key_length: i64,
    pub max_tag_value_length: i64,
    pub allow_unsigned: bool,
    pub min_time_ns: i128,
    pub max_time_ns: i128,
}

pub const DEFAULT_LIMITS: Limits = Limits {
    max_line_length: 200_000,
    max_tags: 16_384,
    max_fields: 50_000,
    max_key_length: 65_535,
    max_tag_value_length: 65_535,
    allow_unsigned: false,
    min_time_ns: i64::MIN as i128,
    max_time_ns: i64::MAX as i128,
};

const MIN_TIME_NS: i128 = i64::MIN as i128 + 2;
const MAX_TIME_NS: i128 = i64::MAX as i128 - 1;
/// Python's `int()` refuses longer digit strings (`sys.get_int_max_str_digits`): such a line
/// is left to the Python path whatever it does with it.
const MAX_DIGITS: usize = 4_000;

#[inline]
fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t' || c == 0
}

#[inline]
pub fn char_len(s: &[u8]) -> usize {
    s.iter().filter(|&&b| (b & 0xC0) != 0x80).count()
}

#[inline]
fn skip_blank(buf: &[u8], mut i: usize) -> usize {
    while i < buf.len() && is_blank(buf[i]) {
        i += 1;
    }
    i
}

/// `_line_end`: the index of the newline ending the line that starts at `i` (or `len`).
pub fn line_end(buf: &[u8], mut i: usize) -> usize {
    let n = buf.len();
    let mut quoted = false;
    let mut fields = false;
    let mut equals = 0usize;
    let mut commas = 0usize;
    while i < n {
        let c = buf[i];
        if c == b'\\' && i + 2 < n {
            i += 2;
            continue;
        }
        if c == b' ' {
            fields = true;
        }
        if fields {
            if !quoted && c == b'=' {
                i += 1;
                equals += 1;
                continue;
            }
            if !quoted && c == b',' {
                i += 1;
                commas += 1;
                continue;
            }
            if c == b'"' && equals > commas {
                i += 1;
                quoted = !quoted;
                continue;
            }
        }
        if c == b'\n' && !quoted {
            break;
        }
        i += 1;
    }
    i
}

pub struct Scanned<'a> {
    /// the line from its first non-blank character
    pub text: &'a [u8],
    pub meas_end: usize,
    /// raw (escaped) tag key and value
    pub tags: Vec<(&'a [u8], &'a [u8])>,
    pub key_end: usize,
    pub fields_at: usize,
    pub fields_end: usize,
    pub time_ns: i64,
}

impl<'a> Scanned<'a> {
    pub fn fields(&self) -> &'a [u8] {
        &self.text[self.fields_at..self.fields_end]
    }
    pub fn raw_measurement(&self) -> &'a [u8] {
        &self.text[..self.meas_end]
    }
}

/// `(?<!\\)[, ]` (measurement) searched from `from`.
#[inline]
fn meas_stop(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find(|&p| (buf[p] == b',' || buf[p] == b' ') && buf[p - 1] != b'\\')
}

/// `(?<!\\)[, =]` (tags) searched from `from` (`from >= 1`).
#[inline]
fn tag_stop(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len())
        .find(|&p| (buf[p] == b',' || buf[p] == b' ' || buf[p] == b'=') && buf[p - 1] != b'\\')
}

/// `scan_point`: `Ok(None)` for a blank or comment line.
pub fn scan_point<'a>(
    line: &'a [u8],
    precision_factor: i64,
    default_time_ns: Option<i64>,
    limits: &Limits,
) -> R<Option<Scanned<'a>>> {
    let start = skip_blank(line, 0);
    if start >= line.len() || line[start] == b'#' {
        return Ok(None);
    }
    let buf = &line[start..];
    if line.len() as i64 > limits.max_line_length && char_len(line) as i64 > limits.max_line_length
    {
        return Err(Defer);
    }
    if buf[0] == b',' {
        return Err(Defer);
    }
    let meas_end = meas_stop(buf, 1).ok_or(Defer)?;
    let mut tags: Vec<(&[u8], &[u8])> = Vec::new();
    let mut key_end = meas_end;
    if buf[meas_end] == b',' {
        key_end = scan_tags(buf, meas_end + 1, &mut tags, limits)?;
    }
    let max_key = limits.max_key_length;
    let mut key_bytes: i64 = 0;
    if key_end as i64 * 4 > max_key && char_len(&buf[..key_end]) as i64 * 4 > max_key {
        key_bytes = key_end as i64;
    }
    if key_bytes > max_key {
        return Err(Defer);
    }
    let (fields_end, fields_at) = scan_fields(buf, key_end, limits)?;
    let fields = &buf[fields_at..fields_end];
    if key_bytes == 0
        && (key_end + fields.len()) as i64 * 4 > max_key
        && (char_len(&buf[..key_end]) + char_len(fields)) as i64 * 4 > max_key
    {
        key_bytes = key_end as i64;
    }
    // (Python walks the fields here in any case; a walk that fails is refused by
    // `check_field_values` on the same bytes, so the walk is only needed for the key size)
    if key_bytes != 0 {
        for (raw_key, _value) in walk_fields(fields)? {
            if key_bytes + 4 + raw_key.len() as i64 > max_key {
                return Err(Defer);
            }
        }
    }
    let time_ns = scan_time(buf, fields_end, precision_factor, default_time_ns)?;
    let t = time_ns as i128;
    if !(limits.min_time_ns <= t && t < limits.max_time_ns) {
        return Err(Defer);
    }
    for (k, _v) in &tags {
        if k.len() >= 4 && (*k == b"time" || (k.contains(&b'\\') && unescape(k, TAG_SET) == b"time"))
        {
            return Err(Defer);
        }
    }
    Ok(Some(Scanned {
        text: buf,
        meas_end,
        tags,
        key_end,
        fields_at,
        fields_end,
        time_ns,
    }))
}

fn scan_tags<'a>(
    buf: &'a [u8],
    mut i: usize,
    out: &mut Vec<(&'a [u8], &'a [u8])>,
    limits: &Limits,
) -> R<usize> {
    let n = buf.len();
    let end;
    loop {
        let kstart = i;
        if i >= n || matches!(buf[i], b' ' | b',' | b'=') {
            return Err(Defer);
        }
        let j = tag_stop(buf, i + 1).ok_or(Defer)?;
        if buf[j] != b'=' {
            return Err(Defer);
        }
        i = j + 1;
        if i >= n || buf[i] == b',' || buf[i] == b' ' {
            return Err(Defer);
        }
        let e = tag_stop(buf, i + 1).ok_or(Defer)?;
        let c = buf[e];
        if c == b'=' {
            return Err(Defer);
        }
        let value = &buf[i..e];
        if value.len() as i64 > limits.max_tag_value_length
            && char_len(value) as i64 > limits.max_tag_value_length
        {
            return Err(Defer);
        }
        out.push((&buf[kstart..j], value));
        if out.len() as i64 > limits.max_tags {
            return Err(Defer);
        }
        if c == b' ' {
            end = e;
            break;
        }
        i = e + 1;
    }
    // duplicate (raw) tag keys
    if out.len() <= 16 {
        for a in 0..out.len() {
            for b in a + 1..out.len() {
                if out[a].0 == out[b].0 {
                    return Err(Defer);
                }
            }
        }
    } else {
        let mut keys: Vec<&[u8]> = out.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(Defer);
        }
    }
    Ok(end)
}

/// `_scan_fields` from `i` (the space after the key): `(end, start)` of the field section.
pub fn scan_fields(buf: &[u8], i: usize, limits: &Limits) -> R<(usize, usize)> {
    let n = buf.len();
    let start = skip_blank(buf, i);
    let mut i = start;
    let mut quoted = false;
    let mut equals: i64 = 0;
    let mut commas: i64 = 0;
    while i < n {
        let c = buf[i];
        if c == b'\\' && i + 1 < n {
            i += 2;
            continue;
        }
        if c == b'"' && equals > commas {
            quoted = !quoted;
            i += 1;
            continue;
        }
        if c == b'=' && !quoted {
            equals += 1;
            let before = buf[i - 1];
            if (before == b' ' || before == b',') && buf[i - 2] != b'\\' {
                return Err(Defer);
            }
            if i + 1 >= n || buf[i + 1] == b',' || buf[i + 1] == b' ' {
                return Err(Defer);
            }
            let d = buf[i + 1];
            if matches!(d, b'0'..=b'9' | b'.' | b'-' | b'N' | b'n') {
                i = scan_number(buf, i + 1, limits)?;
                continue;
            }
            if d != b'"' {
                i = scan_boolean(buf, i + 1)?;
                continue;
            }
        }
        if !quoted {
            if c == b',' {
                commas += 1;
            } else if c == b' ' {
                break;
            }
        }
        i += 1;
    }
    if quoted || equals == 0 || commas != equals - 1 || i == start || equals > limits.max_fields {
        return Err(Defer);
    }
    Ok((i, start))
}

/// Whether the digits `text` (`-?[0-9]+`) lie in `[min, max]`; `Err` for very long ones.
fn int_in_range(text: &[u8], min: i128, max: i128) -> R<bool> {
    if text.len() > MAX_DIGITS {
        return Err(Defer);
    }
    let (neg, digits) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let first = digits.iter().position(|&c| c != b'0').unwrap_or(digits.len());
    let sig = &digits[first..];
    if sig.len() > 30 {
        return Ok(false);
    }
    let mut v: i128 = 0;
    for &c in sig {
        v = v * 10 + (c - b'0') as i128;
    }
    if neg {
        v = -v;
    }
    Ok(min <= v && v <= max)
}

fn int_value(text: &[u8]) -> i128 {
    let (neg, digits) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let mut v: i128 = 0;
    for &c in digits {
        v = v * 10 + (c - b'0') as i128;
    }
    if neg {
        -v
    } else {
        v
    }
}

fn scan_number(buf: &[u8], mut i: usize, limits: &Limits) -> R<usize> {
    let n = buf.len();
    let start = i;
    let (mut is_int, mut is_unsigned, mut decimal, mut scientific) = (false, false, false, false);
    if buf[i] == b'-' {
        i += 1;
        if i == n {
            return Err(Defer);
        }
    }
    while i < n {
        let c = buf[i];
        if c == b',' || c == b' ' {
            break;
        }
        if c == b'i' && i > start && !(is_int || is_unsigned) {
            is_int = true;
            i += 1;
            continue;
        }
        if c == b'u' && i > start && !(is_int || is_unsigned) {
            is_unsigned = true;
            i += 1;
            continue;
        }
        if c == b'.' {
            if decimal {
                return Err(Defer);
            }
            decimal = true;
        }
        if i > start && (c == b'e' || c == b'E') {
            scientific = true;
            i += 1;
            continue;
        }
        if (c == b'+' || c == b'-') && (buf[i - 1] == b'e' || buf[i - 1] == b'E') {
            i += 1;
            continue;
        }
        if !(c.is_ascii_digit() || c == b'.') {
            return Err(Defer); // also `N`/`n`
        }
        i += 1;
    }
    if (is_int || is_unsigned) && (decimal || scientific) {
        return Err(Defer);
    }
    let digits = (i - start) as i64
        - is_int as i64
        - decimal as i64
        - (buf[start] == b'-') as i64;
    if digits == 0 {
        return Err(Defer);
    }
    if is_int {
        if buf[i - 1] != b'i' {
            return Err(Defer);
        }
        let text = &buf[start..i - 1];
        if text.len() >= 19 && !int_in_range(text, i64::MIN as i128, i64::MAX as i128)? {
            return Err(Defer);
        }
    } else if is_unsigned {
        if !limits.allow_unsigned {
            return Err(Defer);
        }
        if buf[i - 1] != b'u' || buf[start] == b'-' {
            return Err(Defer);
        }
        let text = &buf[start..i - 1];
        if text.len() >= 20 && !int_in_range(text, 0, u64::MAX as i128)? {
            return Err(Defer);
        }
    } else if (scientific || i - start >= 25) && go_float(&buf[start..i]).is_none() {
        return Err(Defer);
    }
    Ok(i)
}

/// `[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?` in full (`_GO_FLOAT`).
fn go_float_syntax(t: &[u8]) -> bool {
    let n = t.len();
    let mut i = 0;
    if i < n && (t[i] == b'+' || t[i] == b'-') {
        i += 1;
    }
    let d0 = i;
    while i < n && t[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - d0;
    if int_digits > 0 {
        if i < n && t[i] == b'.' {
            i += 1;
            while i < n && t[i].is_ascii_digit() {
                i += 1;
            }
        }
    } else {
        if !(i < n && t[i] == b'.') {
            return false;
        }
        i += 1;
        let f0 = i;
        while i < n && t[i].is_ascii_digit() {
            i += 1;
        }
        if i == f0 {
            return false;
        }
    }
    if i < n && (t[i] == b'e' || t[i] == b'E') {
        i += 1;
        if i < n && (t[i] == b'+' || t[i] == b'-') {
            i += 1;
        }
        let e0 = i;
        while i < n && t[i].is_ascii_digit() {
            i += 1;
        }
        if i == e0 {
            return false;
        }
    }
    i == n
}

/// `_go_float` on text the number scan let through, or `_GO_FLOAT.fullmatch` + `_go_float`:
/// Python's `float()` (correctly rounded, as Rust's) that is not infinite.
fn go_float(t: &[u8]) -> Option<f64> {
    if !go_float_syntax(t) {
        return None;
    }
    if t.len() < 300 && !t.iter().any(|&c| c == b'e' || c == b'E') {
        return Some(0.0); // fewer than 300 digits, no exponent: finite (only validity is used)
    }
    let s = std::str::from_utf8(t).ok()?;
    let v: f64 = s.parse().ok()?;
    if v.is_infinite() {
        None
    } else {
        Some(v)
    }
}

fn scan_boolean(buf: &[u8], mut i: usize) -> R<usize> {
    let n = buf.len();
    let start = i;
    if !matches!(buf[i], b't' | b'f' | b'T' | b'F') {
        return Err(Defer);
    }
    i += 1;
    while i < n && buf[i] != b',' && buf[i] != b' ' {
        i += 1;
    }
    if i - start == 1 {
        return Ok(i);
    }
    if is_bool_word(&buf[start..i]) {
        Ok(i)
    } else {
        Err(Defer)
    }
}

fn is_bool_word(w: &[u8]) -> bool {
    matches!(
        w,
        b"t" | b"T" | b"true" | b"True" | b"TRUE" | b"f" | b"F" | b"false" | b"False" | b"FALSE"
    )
}

fn scan_time(buf: &[u8], i: usize, factor: i64, default_time_ns: Option<i64>) -> R<i64> {
    let n = buf.len();
    let start = skip_blank(buf, i);
    let mut i = start;
    while i < n {
        let c = buf[i];
        if c == b'\n' || c == b' ' {
            break;
        }
        if i == start && c == b'-' {
            i += 1;
            continue;
        }
        if !c.is_ascii_digit() {
            return Err(Defer);
        }
        i += 1;
    }
    let raw = &buf[start..i];
    if raw.is_empty() {
        let d = default_time_ns.ok_or(Defer)? as i128;
        let f = factor as i128;
        return Ok((d - d.rem_euclid(f)) as i64);
    }
    if raw == b"-" {
        return Err(Defer);
    }
    if !int_in_range(raw, i64::MIN as i128, i64::MAX as i128)? {
        return Err(Defer);
    }
    let time_ns = int_value(raw) * factor as i128;
    if !(MIN_TIME_NS..=MAX_TIME_NS).contains(&time_ns) {
        return Err(Defer);
    }
    if buf[i..].iter().any(|&c| c != b' ') {
        return Err(Defer);
    }
    Ok(time_ns as i64)
}

/// `walk_fields`: `(raw key, raw value)` per field.
pub fn walk_fields(fields: &[u8]) -> R<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    let n = fields.len();
    let mut pos = 0;
    while pos < n {
        let mut j = pos;
        while j < n && !(fields[j] == b'=' && (j == pos || fields[j - 1] != b'\\')) {
            j += 1;
        }
        if j + 1 >= n {
            return Err(Defer);
        }
        let mut k = j + 1;
        let mut quoted = false;
        while k < n {
            let c = fields[k];
            if c == b'\\' && k + 1 < n && (fields[k + 1] == b'"' || fields[k + 1] == b'\\') {
                k += 2;
                continue;
            }
            if c == b'"' {
                quoted = !quoted;
            } else if c == b',' && !quoted {
                break;
            }
            k += 1;
        }
        out.push((&fields[pos..j], &fields[j + 1..k]));
        pos = k + 1;
    }
    Ok(out)
}

pub const NAME_SET: &[u8] = b", =\"";
pub const TAG_SET: &[u8] = b", =";

/// `unescape_name` / `unescape_tag`: drop the backslash of `\x` for `x` in `set`.
pub fn unescape(raw: &[u8], set: &[u8]) -> Vec<u8> {
    let n = raw.len();
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        if raw[i] == b'\\' && i + 1 < n && set.contains(&raw[i + 1]) {
            out.push(raw[i + 1]);
            i += 2;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Float,
    Int,
    Unsigned,
    Bool,
    Str,
}

/// `_field_value`: the type of a raw field value, `None` when InfluxDB cannot read it.
fn field_kind(raw: &[u8]) -> R<Option<Kind>> {
    let c = raw[0];
    if c == b'"' {
        return Ok(if raw.len() < 2 { None } else { Some(Kind::Str) });
    }
    if matches!(c, b'0'..=b'9' | b'-' | b'.' | b'n' | b'N' | b'i' | b'I' | b'u') {
        let last = raw[raw.len() - 1];
        let body = &raw[..raw.len() - 1];
        if last == b'i' {
            let d = if !body.is_empty() && (body[0] == b'+' || body[0] == b'-') {
                &body[1..]
            } else {
                body
            };
            if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
                return Ok(None);
            }
            return Ok(if int_in_range(body, i64::MIN as i128, i64::MAX as i128)? {
                Some(Kind::Int)
            } else {
                None
            });
        }
        if last == b'u' {
            if body.is_empty() || !body.iter().all(u8::is_ascii_digit) {
                return Ok(None);
            }
            return Ok(if int_in_range(body, 0, u64::MAX as i128)? {
                Some(Kind::Unsigned)
            } else {
                None
            });
        }
        return Ok(go_float(raw).map(|_| Kind::Float));
    }
    Ok(if is_bool_word(raw) {
        Some(Kind::Bool)
    } else {
        None
    })
}

/// `field_values` as a check: every field readable, no key `time`, escaped keys that write
/// back, one type per key.
pub fn check_field_values(fields: &[u8]) -> R<()> {
    let mut seen: Vec<(Cow<[u8]>, Kind)> = Vec::new();
    for (raw_key, raw) in walk_fields(fields)? {
        let key: Cow<[u8]> = if raw_key.contains(&b'\\') {
            Cow::Owned(unescape(raw_key, NAME_SET))
        } else {
            Cow::Borrowed(raw_key)
        };
        if raw.is_empty() || key.as_ref() == b"time" {
            return Err(Defer);
        }
        if key.contains(&b'\\') && !field_key_writes_back(&key) {
            return Err(Defer);
        }
        let kind = field_kind(raw)?.ok_or(Defer)?;
        if let Some((_, before)) = seen.iter().find(|(k, _)| *k == key) {
            if *before != kind {
                return Err(Defer);
            }
        } else {
            seen.push((key, kind));
        }
    }
    Ok(())
}

/// `escape_field_key`: `[, =]`, and `"` right after a backslash; `None` for a trailing `\`.
fn escape_field_key(name: &[u8]) -> Option<Vec<u8>> {
    if name.last() == Some(&b'\\') {
        return None;
    }
    let mut out = Vec::with_capacity(name.len() + 4);
    for (i, &c) in name.iter().enumerate() {
        if matches!(c, b',' | b' ' | b'=') || (c == b'"' && i > 0 && name[i - 1] == b'\\') {
            out.push(b'\\');
        }
        out.push(c);
    }
    Some(out)
}

/// `field_key_writes_back`.
fn field_key_writes_back(key: &[u8]) -> bool {
    let Some(escaped) = escape_field_key(key) else {
        return false;
    };
    let mut probe = b"m x_".to_vec();
    probe.extend_from_slice(&escaped);
    probe.extend_from_slice(b"=1");
    let Ok((end, start)) = scan_fields(&probe, 1, &DEFAULT_LIMITS) else {
        return false;
    };
    let Ok(pairs) = walk_fields(&probe[start..end]) else {
        return false;
    };
    if end != probe.len() || pairs.len() != 1 {
        return false;
    }
    let got = unescape(pairs[0].0, NAME_SET);
    got.len() == key.len() + 2 && got.starts_with(b"x_") && &got[2..] == key
}

/// `escape_measurement`; `None` where Python raises SerializationError.
pub fn escape_measurement(name: &[u8], out: &mut Vec<u8>) -> Option<()> {
    if name.is_empty() || matches!(name[0], b'#' | b'\t' | 0) || name.last() == Some(&b'\\') {
        return None;
    }
    for (i, &c) in name.iter().enumerate() {
        if c == b',' || c == b' ' || ((c == b'=' || c == b'"') && i > 0 && name[i - 1] == b'\\') {
            out.push(b'\\');
        }
        out.push(c);
    }
    Some(())
}

/// `escape_tag`; `None` for a trailing backslash.
pub fn escape_tag(name: &[u8]) -> Option<Vec<u8>> {
    if name.last() == Some(&b'\\') {
        return None;
    }
    let mut out = Vec::with_capacity(name.len() + 2);
    for &c in name {
        if matches!(c, b',' | b' ' | b'=') {
            out.push(b'\\');
        }
        out.push(c);
    }
    Some(out)
}
