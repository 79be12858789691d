//! TensorBoard event files, so that `tensorboard --logdir OUT_DIR/tensorboard` shows a run.
//!
//! An event file is a sequence of TFRecords (`u64` length, masked CRC-32C of the length, the
//! bytes, masked CRC-32C of the bytes), each holding one `tensorflow.Event` protobuf: first one
//! with `file_version = "brain.Event:2"`, then one per step with a `Summary` of simple scalar
//! values. The few fields needed are encoded here directly with prost's wire helpers.
//!
//! The file mirrors `metrics.jsonl`: a run (or a resumed run) rewrites it from the metrics
//! history and appends a record per step, so a resume leaves no steps twice.
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::encoding::encode_varint;

use crate::{Error, Result};

/// Writes one TensorBoard event file.
pub struct EventWriter {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` and a new event file in it, after removing the event files of earlier runs
    /// there (their steps are rewritten from the metrics history).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let p = entry.map_err(|e| Error::io(dir, e))?.path();
            let old = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("events.out.tfevents."));
            if old {
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
        let now = wall_time();
        let path = dir.join(format!("events.out.tfevents.{}.koala", now as u64));
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = EventWriter {
            file: std::io::BufWriter::new(file),
            path,
        };
        let mut ev = Vec::new();
        put_double(&mut ev, 1, now);
        put_bytes(&mut ev, 3, b"brain.Event:2");
        w.record(&ev)?;
        w.flush()?;
        Ok(w)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event of scalar values (`tag`, value) at `step`.
    pub fn scalars(&mut self, step: u64, wall_time: f64, values: &[(&str, f32)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in values {
            let mut value = Vec::new();
            put_bytes(&mut value, 1, tag.as_bytes());
            // simple_value = 2, a float (wire type 5).
            encode_varint((2 << 3) | 5, &mut value);
            value.extend_from_slice(&v.to_le_bytes());
            put_bytes(&mut summary, 1, &value);
        }
        let mut ev = Vec::new();
        put_double(&mut ev, 1, wall_time);
        encode_varint(2 << 3, &mut ev);
        encode_varint(step, &mut ev);
        put_bytes(&mut ev, 5, &summary);
        self.record(&ev)
    }

    /// Pushes what is buffered to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file
            .write_all(&rec)
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Seconds since the Unix epoch, as TensorBoard's `wall_time`.
pub fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// TFRecord's masked CRC-32C.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn put_double(buf: &mut Vec<u8>, field: u64, v: f64) {
    encode_varint((field << 3) | 1, buf);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(buf: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    encode_varint((field << 3) | 2, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // CRC-32C of "123456789" is 0xE3069283 (RFC 3720); TensorFlow's mask,
        // ((crc >> 15) | (crc << 17)) + 0xa282ead8, makes it 0xC78AB0E5 (worked out by hand).
        assert_eq!(masked_crc(b"123456789"), 0xC78A_B0E5);
    }

    #[test]
    fn records_frame_their_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(7, 1.5, &[("loss/train", 2.5)]).unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        // Walk the records: each length and checksum is right, and there are two.
        let mut at = 0;
        let mut n = 0;
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            let lcrc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(lcrc, masked_crc(&bytes[at..at + 8]));
            let data = &bytes[at + 12..at + 12 + len];
            let dcrc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(dcrc, masked_crc(data));
            at += 16 + len;
            n += 1;
        }
        assert_eq!(n, 2);
        // A second writer in the same folder replaces the first file.
        let w2 = EventWriter::create(dir.path()).unwrap();
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1, "{}", w2.path().display());
    }
}
