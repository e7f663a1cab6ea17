//! `encode_partitioned`: the gateway's lines grouped by Kafka partition and packed into `lp1`
//! record values, exactly as `metricsflow.model.message.encode_partitioned_python` does.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), made positive.
pub fn murmur2_positive(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h & 0x7fff_ffff
}

#[inline]
fn char_count(s: &[u8]) -> usize {
    s.iter().filter(|&&b| (b & 0xC0) != 0x80).count()
}

type Records<'py> = Vec<(Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>)>;

/// `encode_partitioned(series_keys, lines, partitions, max_bytes)` ->
/// `[(partition, [(value, key or None), ...]), ...]` in order of each partition's first line,
/// or `None` when one line alone is larger than `max_bytes` (the Python path raises).
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn encode_partitioned<'py>(
    py: Python<'py>,
    series_keys: &Bound<'py, PyList>,
    lines: &Bound<'py, PyList>,
    partitions: u32,
    max_bytes: usize,
) -> PyResult<Option<Vec<(u32, Records<'py>)>>> {
    let n = lines.len();
    if series_keys.len() != n || partitions == 0 {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "series_keys and lines differ in length, or no partitions",
        ));
    }
    let mut key_strs: Vec<Bound<'py, PyString>> = Vec::with_capacity(n);
    let mut line_strs: Vec<Bound<'py, PyString>> = Vec::with_capacity(n);
    for i in 0..n {
        key_strs.push(series_keys.get_item(i)?.cast_into::<PyString>()?);
        line_strs.push(lines.get_item(i)?.cast_into::<PyString>()?);
    }
    let mut keys: Vec<&[u8]> = Vec::with_capacity(n);
    let mut texts: Vec<&[u8]> = Vec::with_capacity(n);
    for i in 0..n {
        keys.push(key_strs[i].to_str()?.as_bytes());
        texts.push(line_strs[i].to_str()?.as_bytes());
    }
    let mut slot: Vec<usize> = vec![usize::MAX; partitions as usize];
    let mut groups: Vec<(u32, Vec<usize>)> = Vec::new();
    let mut last: Option<(&[u8], usize)> = None;
    for i in 0..n {
        let g = match last {
            Some((k, g)) if k == keys[i] => g,
            _ => {
                let p = (murmur2_positive(keys[i]) % partitions) as usize;
                if slot[p] == usize::MAX {
                    slot[p] = groups.len();
                    groups.push((p as u32, Vec::new()));
                }
                slot[p]
            }
        };
        last = Some((keys[i], g));
        groups[g].1.push(i);
    }
    let mut out = Vec::with_capacity(groups.len());
    for (partition, idx) in groups {
        let m = idx.len();
        let mut records: Records<'py> = Vec::new();
        let mut start = 0;
        while start < m {
            let mut size = 0usize;
            let mut end = start;
            while end < m {
                let add = char_count(texts[idx[end]]) + 1;
                if end > start && size + add > max_bytes {
                    break;
                }
                size += add;
                end += 1;
            }
            let join = |end: usize| -> Vec<u8> {
                let total: usize = idx[start..end].iter().map(|&i| texts[i].len() + 1).sum();
                let mut v = Vec::with_capacity(total);
                for (j, &i) in idx[start..end].iter().enumerate() {
                    if j > 0 {
                        v.push(b'\n');
                    }
                    v.extend_from_slice(texts[i]);
                }
                v
            };
            let mut value = join(end);
            while value.len() > max_bytes && end - start > 1 {
                end = start + std::cmp::max(1, (end - start) / 2);
                value = join(end);
            }
            if value.len() > max_bytes {
                return Ok(None);
            }
            let first = keys[idx[start]];
            let single = idx[start + 1..end].iter().all(|&i| keys[i] == first);
            let key = if single { Some(PyBytes::new(py, first)) } else { None };
            records.push((PyBytes::new(py, &value), key));
            start = end;
        }
        out.push((partition, records));
    }
    Ok(Some(out))
}
