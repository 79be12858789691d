//! NumPy `.npy` (format 1.0) for `f32` arrays, so anyone can cross-check our outputs with
//! `numpy.load` without writing Rust.
use std::path::Path;

use crate::{Error, Result};

/// Encodes a little-endian `f32` C-order array.
///
/// ```
/// let bytes = koala_trainer::npy::encode_f32(&[2, 1], &[1.0, 2.0]);
/// assert!(bytes.starts_with(b"\x93NUMPY\x01\x00"));
/// assert_eq!(koala_trainer::npy::decode_f32(&bytes).unwrap(), (vec![2, 1], vec![1.0, 2.0]));
/// ```
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // magic (6) + version (2) + header length (2) + header, padded with spaces to 64 bytes, '\n'.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Writes an `f32` array to `path`.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    crate::weights::atomic_write(path, &encode_f32(shape, data))
}

/// Decodes what [`encode_f32`] writes (`<f4`, C order, format 1.0).
pub fn decode_f32(bytes: &[u8]) -> std::result::Result<(Vec<usize>, Vec<f32>), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let hl = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(bytes.get(10..10 + hl).ok_or("truncated header")?)
        .map_err(|e| e.to_string())?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        return Err(format!("unsupported header {header}"));
    }
    let s = header
        .split("'shape': (")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .ok_or("no shape")?;
    let shape: Vec<usize> = s
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().map_err(|_| format!("bad dim {x}")))
        .collect::<std::result::Result<_, _>>()?;
    let body = &bytes[10 + hl..];
    let n: usize = shape.iter().product();
    if body.len() != n * 4 {
        return Err(format!("{} data bytes for shape {shape:?}", body.len()));
    }
    Ok((
        shape,
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    ))
}

/// Reads an `f32` `.npy` file.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_f32(&bytes).map_err(|m| Error::format(path, m))
}
