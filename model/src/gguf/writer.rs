//! The GGUF container (version 3), as llama.cpp's `ggml/docs/gguf.md` specifies it:
//!
//! ```text
//! "GGUF" u32:version u64:n_tensors u64:n_kv
//! n_kv × (string:key u32:value_type value)
//! n_tensors × (string:name u32:n_dims u64[n_dims]:ne u32:ggml_type u64:offset)
//! padding to `general.alignment` (32)
//! tensor data, each tensor at its offset, each padded to the alignment
//! ```
//!
//! Strings are a `u64` byte length and UTF-8 without a terminator; everything is little-endian.
//! `ne` lists dimensions innermost first, so a row-major `[out, in]` matrix is `ne = [in, out]`.
//! Tensor data is written in one pass after the header: offsets follow from the sizes, so no
//! tensor is held in memory longer than it takes to encode it.
use std::io::{self, Write};

/// The alignment of the tensor data section and of each tensor in it (GGUF's default).
pub const ALIGNMENT: u64 = 32;

/// A metadata value (the GGUF value types this exporter writes).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// An array of strings.
    StrArray(Vec<String>),
    /// An array of `f32`.
    F32Array(Vec<f32>),
    /// An array of `i32`.
    I32Array(Vec<i32>),
}

// GGUF value type tags (gguf.md, `gguf_metadata_value_type`).
const T_UINT32: u32 = 4;
const T_INT32: u32 = 5;
const T_FLOAT32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

/// The ggml tensor types this exporter writes, with their `ggml_type` numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Bf16,
    /// Blocks of 32 values: an `f16` scale and 32 `i8`s (34 bytes).
    Q8_0,
}

impl TensorType {
    /// The `ggml_type` number.
    pub fn id(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q8_0 => 8,
            TensorType::Bf16 => 30,
        }
    }

    /// Bytes of `n` values (`n` a multiple of 32 for `Q8_0`).
    pub fn bytes(self, n: u64) -> u64 {
        match self {
            TensorType::F32 => n * 4,
            TensorType::F16 | TensorType::Bf16 => n * 2,
            TensorType::Q8_0 => n / 32 * 34,
        }
    }
}

/// One tensor's entry in the header.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions outermost first, as the model stores them (`[out, in]`); written reversed.
    pub shape: Vec<u64>,
    pub ty: TensorType,
}

impl TensorInfo {
    /// Number of values.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

fn put_u32(w: &mut impl Write, v: u32) -> io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

fn put_u64(w: &mut impl Write, v: u64) -> io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

fn put_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    put_u64(w, s.len() as u64)?;
    w.write_all(s.as_bytes())
}

fn put_value(w: &mut impl Write, v: &Value) -> io::Result<()> {
    match v {
        Value::U32(x) => {
            put_u32(w, T_UINT32)?;
            put_u32(w, *x)
        }
        Value::I32(x) => {
            put_u32(w, T_INT32)?;
            w.write_all(&x.to_le_bytes())
        }
        Value::F32(x) => {
            put_u32(w, T_FLOAT32)?;
            w.write_all(&x.to_le_bytes())
        }
        Value::Bool(x) => {
            put_u32(w, T_BOOL)?;
            w.write_all(&[u8::from(*x)])
        }
        Value::Str(s) => {
            put_u32(w, T_STRING)?;
            put_str(w, s)
        }
        Value::StrArray(a) => {
            put_u32(w, T_ARRAY)?;
            put_u32(w, T_STRING)?;
            put_u64(w, a.len() as u64)?;
            a.iter().try_for_each(|s| put_str(w, s))
        }
        Value::F32Array(a) => {
            put_u32(w, T_ARRAY)?;
            put_u32(w, T_FLOAT32)?;
            put_u64(w, a.len() as u64)?;
            a.iter().try_for_each(|x| w.write_all(&x.to_le_bytes()))
        }
        Value::I32Array(a) => {
            put_u32(w, T_ARRAY)?;
            put_u32(w, T_INT32)?;
            put_u64(w, a.len() as u64)?;
            a.iter().try_for_each(|x| w.write_all(&x.to_le_bytes()))
        }
    }
}

/// The padding that brings `n` to a multiple of [`ALIGNMENT`].
pub fn pad(n: u64) -> u64 {
    (ALIGNMENT - n % ALIGNMENT) % ALIGNMENT
}

/// Writes a GGUF file: [`Header::write`] first, then each tensor's data in header order with
/// [`Header::write_tensor`].
pub struct Header {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
}

impl Header {
    /// Writes the header and the padding up to the data section; returns the bytes written.
    pub fn write(&self, w: &mut impl Write) -> io::Result<u64> {
        let mut c = Counting { inner: w, n: 0 };
        c.write_all(b"GGUF")?;
        put_u32(&mut c, 3)?;
        put_u64(&mut c, self.tensors.len() as u64)?;
        put_u64(&mut c, self.metadata.len() as u64)?;
        for (k, v) in &self.metadata {
            put_str(&mut c, k)?;
            put_value(&mut c, v)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut c, &t.name)?;
            put_u32(&mut c, t.shape.len() as u32)?;
            for d in t.shape.iter().rev() {
                put_u64(&mut c, *d)?;
            }
            put_u32(&mut c, t.ty.id())?;
            put_u64(&mut c, offset)?;
            let n = t.ty.bytes(t.numel());
            offset += n + pad(n);
        }
        let p = pad(c.n);
        c.write_all(&vec![0u8; p as usize])?;
        Ok(c.n)
    }

    /// Writes one tensor's encoded bytes and its padding; checks the length against the header.
    pub fn write_tensor(&self, w: &mut impl Write, index: usize, bytes: &[u8]) -> io::Result<()> {
        let t = &self.tensors[index];
        let want = t.ty.bytes(t.numel());
        if bytes.len() as u64 != want {
            return Err(io::Error::other(format!(
                "tensor {}: {} bytes encoded, the header promises {want}",
                t.name,
                bytes.len()
            )));
        }
        w.write_all(bytes)?;
        w.write_all(&vec![0u8; pad(want) as usize])
    }

    /// The file's total size once every tensor is written.
    pub fn file_size(&self) -> io::Result<u64> {
        let head = self.write(&mut io::sink())?;
        let data: u64 = self
            .tensors
            .iter()
            .map(|t| {
                let n = t.ty.bytes(t.numel());
                n + pad(n)
            })
            .sum();
        Ok(head + data)
    }
}

struct Counting<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Encodes `f32` values as `ty` (little-endian). `Q8_0` needs a multiple of 32 values and rounds
/// as ggml's reference `quantize_row_q8_0_ref` does: `d = max|x| / 127` stored as `f16`, and
/// `q = round(x / d)`, halves away from zero, with `1/d` computed from the unrounded `d`.
pub fn encode(values: &[f32], ty: TensorType, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(ty.bytes(values.len() as u64) as usize);
    match ty {
        TensorType::F32 => values
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorType::F16 => values
            .iter()
            .for_each(|x| out.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes())),
        TensorType::Bf16 => values
            .iter()
            .for_each(|x| out.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes())),
        TensorType::Q8_0 => {
            debug_assert!(values.len().is_multiple_of(32));
            for block in values.chunks_exact(32) {
                let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
                out.extend(block.iter().map(|x| (x * id).round() as i8 as u8));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_follows_the_spec() {
        let h = Header {
            metadata: vec![("general.architecture".into(), Value::Str("llama".into()))],
            tensors: vec![
                TensorInfo {
                    name: "a".into(),
                    shape: vec![2, 3],
                    ty: TensorType::F32,
                },
                TensorInfo {
                    name: "b".into(),
                    shape: vec![32],
                    ty: TensorType::Q8_0,
                },
            ],
        };
        let mut buf = Vec::new();
        let n = h.write(&mut buf).unwrap();
        assert_eq!(n as usize, buf.len());
        assert_eq!(n % ALIGNMENT, 0);
        assert_eq!(&buf[..4], b"GGUF");
        assert_eq!(u32::from_le_bytes(buf[4..8].try_into().unwrap()), 3);
        assert_eq!(u64::from_le_bytes(buf[8..16].try_into().unwrap()), 2);
        assert_eq!(u64::from_le_bytes(buf[16..24].try_into().unwrap()), 1);
        // key: u64 len 20 + "general.architecture", type 8, string u64 5 + "llama".
        assert_eq!(u64::from_le_bytes(buf[24..32].try_into().unwrap()), 20);
        assert_eq!(&buf[32..52], b"general.architecture");
        assert_eq!(u32::from_le_bytes(buf[52..56].try_into().unwrap()), 8);
        let mut p = 56 + 8 + 5;
        // tensor "a": ne = [3, 2] (innermost first), f32, offset 0.
        p += 8 + 1;
        assert_eq!(u32::from_le_bytes(buf[p..p + 4].try_into().unwrap()), 2);
        assert_eq!(
            u64::from_le_bytes(buf[p + 4..p + 12].try_into().unwrap()),
            3
        );
        assert_eq!(
            u64::from_le_bytes(buf[p + 12..p + 20].try_into().unwrap()),
            2
        );
        assert_eq!(
            u32::from_le_bytes(buf[p + 20..p + 24].try_into().unwrap()),
            0
        );
        assert_eq!(
            u64::from_le_bytes(buf[p + 24..p + 32].try_into().unwrap()),
            0
        );
        // tensor "b" starts after a's 24 bytes padded to 32.
        p += 32 + 8 + 1 + 4 + 8;
        assert_eq!(u32::from_le_bytes(buf[p..p + 4].try_into().unwrap()), 8);
        assert_eq!(
            u64::from_le_bytes(buf[p + 4..p + 12].try_into().unwrap()),
            32
        );
        assert_eq!(h.file_size().unwrap(), n + 32 + 64);
        let mut data = Vec::new();
        assert!(h.write_tensor(&mut data, 0, &[0u8; 20]).is_err());
        h.write_tensor(&mut data, 0, &[0u8; 24]).unwrap();
        assert_eq!(data.len(), 32);
    }

    #[test]
    fn q8_0_matches_ggml_reference_rounding() {
        // max |x| = 127 → d = 1: values are rounded half away from zero.
        let mut x = vec![0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = -127.0;
        x[4] = 0.49;
        let mut out = Vec::new();
        encode(&x, TensorType::Q8_0, &mut out);
        assert_eq!(out.len(), 34);
        assert_eq!(half::f16::from_le_bytes([out[0], out[1]]).to_f32(), 1.0);
        let q: Vec<i8> = out[2..].iter().map(|b| *b as i8).collect();
        assert_eq!(&q[..5], &[127, 3, -3, -127, 0]);
        // An all-zero block has d = 0 and zero quants.
        encode(&[0f32; 32], TensorType::Q8_0, &mut out);
        assert!(out.iter().all(|b| *b == 0));
    }
}
