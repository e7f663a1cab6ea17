//! metricsflow_lp: the compiled path of `metricsflow.model.lineprotocol.canonicalize`.
//!
//! `canonicalize(body, precision_factor, default_time_ns, limits)` splits a UTF-8 body into
//! lines as InfluxDB does and returns, for every line it settles, the series key and the
//! canonical line, exactly as the Python canonicalizer would (the Python path stays the
//! reference: `tests/model/test_lp_native.py` checks the two agree). Lines it does not settle
//! (every refused line, and a few rare cases) are returned as *deferred* for the Python exact
//! scanner. See `scan.rs` for the rules.

mod records;
mod scan;

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use scan::{
    check_field_values, escape_measurement, escape_tag, line_end, scan_point, unescape,
    Defer, Limits, Scanned, NAME_SET, TAG_SET,
};

/// FxHash-style (8 bytes per step): keys are short, and the cache lives for one call.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            h = (h.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
        self.0 = h;
    }
}

type FnvMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

enum Outcome<'a> {
    Skip,
    Defer,
    /// series key and canonical line
    Line(Cow<'a, [u8]>, Vec<u8>),
    /// the line itself is canonical; its key is `line[..key_len]`
    Same(usize),
}

type Tags = Vec<(Vec<u8>, Vec<u8>)>;

/// `series_key` of a scanned line, with its unescaped measurement and tags.
fn series_key(s: &Scanned) -> Option<(Vec<u8>, Vec<u8>, Tags)> {
    let measurement = unescape(s.raw_measurement(), NAME_SET);
    let mut key = Vec::with_capacity(s.key_end + 8);
    escape_measurement(&measurement, &mut key)?;
    let mut tags: Tags = Vec::with_capacity(s.tags.len());
    let mut escaped: Tags = Vec::with_capacity(s.tags.len());
    for (k, v) in &s.tags {
        let (k, v) = (unescape(k, TAG_SET), unescape(v, TAG_SET));
        escaped.push((escape_tag(&k)?, escape_tag(&v)?));
        tags.push((k, v));
    }
    escaped.sort();
    for (k, v) in &escaped {
        key.push(b',');
        key.extend_from_slice(k);
        key.push(b'=');
        key.extend_from_slice(v);
    }
    Some((key, measurement, tags))
}

fn canonical_line<'a>(
    line: &'a [u8],
    precision_factor: i64,
    default_time_ns: i64,
    limits: &Limits,
) -> Result<Outcome<'a>, Defer> {
    let Some(s) = scan_point(line, precision_factor, Some(default_time_ns), limits)? else {
        return Ok(Outcome::Skip);
    };
    let fields = s.fields();
    check_field_values(fields)?;
    let text = s.text;
    let sep = &text[s.key_end..s.fields_at];
    let mut itoa = [0u8; 24];
    let time = fmt_i64(s.time_ns, &mut itoa);
    let raw_key = &text[..s.key_end];
    if !raw_key.contains(&b'\\')
        && s.tags.iter().all(|(_k, v)| v[0] != b'=')
        && s.tags.windows(2).all(|w| w[0].0 < w[1].0)
    {
        // nothing escaped (a tag value may start with a bare `=`), tags sorted: the key as
        // written is the series key, and the line starts with the canonical head
        // (`_write_back`'s first case)
        let tail = &text[s.fields_end..];
        if line.len() == text.len()
            && sep == b" "
            && tail.len() == time.len() + 1
            && tail[0] == b' '
            && &tail[1..] == time
        {
            return Ok(Outcome::Same(s.key_end));
        }
        let mut out = Vec::with_capacity(s.fields_end + 22);
        out.extend_from_slice(&text[..s.fields_end]);
        out.push(b' ');
        out.extend_from_slice(time);
        return Ok(Outcome::Line(Cow::Borrowed(raw_key), out));
    }
    let (key, measurement, mut tags) = series_key(&s).ok_or(Defer)?;
    let mut out = Vec::with_capacity(key.len() + sep.len() + fields.len() + 22);
    out.extend_from_slice(&key);
    out.extend_from_slice(sep);
    out.extend_from_slice(fields);
    let head_len = out.len();
    out.push(b' ');
    out.extend_from_slice(time);
    if text.starts_with(&out[..head_len]) {
        return Ok(Outcome::Line(Cow::Owned(key), out));
    }
    // `_write_back`: the canonical line, read again, must be the same point
    if out.contains(&b'\n') {
        return Err(Defer);
    }
    let again = scan_point(&out, 1, None, limits)?.ok_or(Defer)?;
    if again.time_ns != s.time_ns || again.fields() != fields {
        return Err(Defer);
    }
    let (_key, measurement2, mut tags2) = series_key(&again).ok_or(Defer)?;
    tags.sort();
    tags2.sort();
    if measurement2 != measurement || tags != tags2 {
        return Err(Defer);
    }
    Ok(Outcome::Line(Cow::Owned(key), out))
}

fn fmt_i64(v: i64, buf: &mut [u8; 24]) -> &[u8] {
    let mut i = buf.len();
    let neg = v < 0;
    let mut u = v.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (u % 10) as u8;
        u /= 10;
        if u == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// `canonicalize(body, precision_factor, default_time_ns, limits)` ->
/// `(series_keys, lines, deferred)` or `None` when the body is not valid UTF-8.
///
/// `limits` = `(max_line_length, max_tags, max_fields, max_key_length, max_tag_value_length,
/// allow_unsigned, min_time_ns, max_time_ns)`. `deferred` lists `(index, lineno, start, end)`
/// per line left to the Python exact scanner: it belongs before output `index`, its text is
/// `body[start:end]`.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn canonicalize<'py>(
    py: Python<'py>,
    body: &[u8],
    precision_factor: i64,
    default_time_ns: i64,
    limits: (i64, i64, i64, i64, i64, bool, i64, i64),
) -> PyResult<Option<(Bound<'py, PyList>, Bound<'py, PyList>, Vec<(usize, usize, usize, usize)>)>> {
    if std::str::from_utf8(body).is_err() || precision_factor <= 0 {
        return Ok(None);
    }
    let limits = Limits {
        max_line_length: limits.0,
        max_tags: limits.1,
        max_fields: limits.2,
        max_key_length: limits.3,
        max_tag_value_length: limits.4,
        allow_unsigned: limits.5,
        min_time_ns: limits.6 as i128,
        max_time_ns: limits.7 as i128,
    };
    let plain = !body.iter().any(|&c| c == b'"' || c == b'\\');
    let mut spans: Vec<(usize, usize, usize)> = Vec::new(); // (lineno, start, end)
    if plain {
        let mut start = 0;
        for (lineno, part) in body.split(|&c| c == b'\n').enumerate() {
            spans.push((lineno + 1, start, start + part.len()));
            start += part.len() + 1;
        }
    } else {
        let (mut pos, mut lineno) = (0usize, 1usize);
        while pos < body.len() {
            let end = line_end(body, pos);
            spans.push((lineno, pos, end));
            lineno += body[pos..end].iter().filter(|&&c| c == b'\n').count() + 1;
            pos = end + 1;
        }
    }
    let keys = PyList::empty(py);
    let lines = PyList::empty(py);
    let mut deferred = Vec::new();
    let mut key_cache: FnvMap<Vec<u8>, Bound<'py, PyString>> = FnvMap::default();
    let mut count = 0usize;
    for (lineno, start, end) in spans {
        let line = &body[start..end];
        let outcome = canonical_line(line, precision_factor, default_time_ns, &limits)
            .unwrap_or(Outcome::Defer);
        let (key_bytes, pyline) = match &outcome {
            Outcome::Skip => continue,
            Outcome::Defer => {
                deferred.push((count, lineno, start, end));
                continue;
            }
            Outcome::Same(key_len) => (&line[..*key_len], as_str(py, line)),
            Outcome::Line(key, out) => (key.as_ref(), as_str(py, out)),
        };
        let pykey = match key_cache.get(key_bytes) {
            Some(k) => k.clone(),
            None => {
                let k = as_str(py, key_bytes);
                key_cache.insert(key_bytes.to_vec(), k.clone());
                k
            }
        };
        keys.append(pykey)?;
        lines.append(pyline)?;
        count += 1;
    }
    Ok(Some((keys, lines, deferred)))
}

fn as_str<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    // SAFETY-free: every slice handed here is valid UTF-8 (the body was checked, slices are
    // cut at ASCII bytes, and canonical lines are built from such slices and ASCII)
    PyString::new(py, std::str::from_utf8(bytes).expect("utf-8"))
}

/// Kafka's murmur2 of `data`, made positive (`toPositive(murmur2(data))`).
#[pyfunction]
fn murmur2(data: &[u8]) -> u32 {
    records::murmur2_positive(data)
}

#[pymodule]
fn metricsflow_lp(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(canonicalize, m)?)?;
    m.add_function(wrap_pyfunction!(records::encode_partitioned, m)?)?;
    m.add_function(wrap_pyfunction!(murmur2, m)?)?;
    Ok(())
}
