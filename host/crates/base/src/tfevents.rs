//! TensorBoard event files (`events.out.tfevents.*`), written by hand: TFRecord framing (length,
//! masked CRC32C of the length, payload, masked CRC32C of the payload) around `tensorflow.Event`
//! protocol buffers with scalar (`simple_value`) and text-plugin summaries. TensorBoard's own
//! reader parses them (the host's `tensorboard_reads_malt_events` test runs it). The trainer's
//! metrics and the evaluation's reports both write through [`EventFile`].
//!
//! An event file here mirrors a JSONL log that stays the source of truth: [`EventFile::create`]
//! replaces the directory's earlier malt event file, so a resumed phase rewrites its history
//! once instead of leaving duplicate steps.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Suffix of malt's event files: only these are replaced by [`EventFile::create`].
const SUFFIX: &str = ".malt";

/// One open event file.
pub struct EventFile {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventFile {
    /// A new event file in `dir` (created if needed), replacing malt's earlier ones there.
    pub fn create(dir: &Path) -> std::io::Result<EventFile> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("events.out.tfevents.") && name.ends_with(SUFFIX) {
                std::fs::remove_file(entry.path())?;
            }
        }
        let secs = now().floor() as u64;
        let path = dir.join(format!("events.out.tfevents.{secs}{SUFFIX}"));
        let mut f = EventFile {
            out: BufWriter::new(File::create(&path)?),
            path,
        };
        let mut ev = Vec::new();
        put_double(&mut ev, 1, now());
        put_bytes(&mut ev, 3, b"brain.Event:2");
        f.record(&ev)?;
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A scalar (TensorBoard's Scalars tab).
    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> std::io::Result<()> {
        let mut v = Vec::new();
        put_bytes(&mut v, 1, tag.as_bytes());
        put_float(&mut v, 2, value as f32);
        self.summary(step, &v)
    }

    /// A text (TensorBoard's Text tab renders it as markdown).
    pub fn text(&mut self, tag: &str, step: i64, markdown: &str) -> std::io::Result<()> {
        let mut plugin = Vec::new();
        put_bytes(&mut plugin, 1, b"text");
        let mut meta = Vec::new();
        put_bytes(&mut meta, 1, &plugin);
        let mut tensor = Vec::new();
        put_varint_field(&mut tensor, 1, 7); // DT_STRING
        put_bytes(&mut tensor, 2, &[]); // scalar shape
        put_bytes(&mut tensor, 8, markdown.as_bytes());
        let mut v = Vec::new();
        put_bytes(&mut v, 1, tag.as_bytes());
        put_bytes(&mut v, 8, &tensor);
        put_bytes(&mut v, 9, &meta);
        self.summary(step, &v)
    }

    /// Makes everything written so far visible to readers.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    fn summary(&mut self, step: i64, value: &[u8]) -> std::io::Result<()> {
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, value);
        let mut ev = Vec::new();
        put_double(&mut ev, 1, now());
        put_varint_field(&mut ev, 2, step as u64);
        put_bytes(&mut ev, 5, &summary);
        self.record(&ev)
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc(&len).to_le_bytes())?;
        self.out.write_all(data)?;
        self.out.write_all(&masked_crc(data).to_le_bytes())
    }
}

/// The config of a run as a markdown code block, for [`EventFile::text`].
pub fn config_markdown(toml: &str) -> String {
    format!("```toml\n{toml}\n```")
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, u64::from(field) << 3);
    put_varint(out, v);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    put_varint(out, (u64::from(field) << 3) | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_float(out: &mut Vec<u8>, field: u32, v: f32) {
    put_varint(out, (u64::from(field) << 3) | 5);
    out.extend_from_slice(&v.to_le_bytes());
}

/// CRC-32C (Castagnoli), as TFRecord uses.
fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_values() {
        // RFC 3720 B.4 and the standard check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn records_are_framed_and_old_files_replaced() {
        let d = tempfile::tempdir().unwrap();
        let mut f = EventFile::create(d.path()).unwrap();
        f.scalar("train/loss", 3, 0.5).unwrap();
        f.flush().unwrap();
        let first = f.path().to_owned();
        let bytes = std::fs::read(&first).unwrap();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
            masked_crc(&bytes[..8])
        );
        let data = &bytes[12..12 + len];
        assert_eq!(
            u32::from_le_bytes(bytes[12 + len..16 + len].try_into().unwrap()),
            masked_crc(data)
        );
        std::fs::write(d.path().join("events.out.tfevents.1.other"), b"x").unwrap();
        drop(f);
        let g = EventFile::create(d.path()).unwrap();
        let names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(g.path().exists());
    }
}
