//! Turns a downloaded bill file into its uncompressed content stream.
//! WeChat Pay serves gzip (`tar_type=GZIP`) or plain CSV; Alipay serves a
//! zip whose entry names are GBK. `--bill-file` accepts any of these, so the
//! container is detected from the magic bytes, never from the file name.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use flate2::read::{DeflateDecoder, MultiGzDecoder};

use super::BillError;
use crate::domain::Channel;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZIP_MAGIC: [u8; 4] = [b'P', b'K', 0x03, 0x04];
const EMPTY_ZIP_MAGIC: [u8; 4] = [b'P', b'K', 0x05, 0x06];

/// The content of the bill, decompressed, as a buffered stream.
pub fn open_content(channel: Channel, path: &Path) -> Result<Box<dyn BufRead + Send>, BillError> {
    let mut file = File::open(path)?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic)?;
    file.seek(SeekFrom::Start(0))?;
    let magic = &magic[..n];
    if magic.starts_with(&GZIP_MAGIC) {
        if channel == Channel::Alipay {
            return Err(BillError::Archive(
                "a gzip file is not an Alipay bill (Alipay serves a zip)".into(),
            ));
        }
        return Ok(Box::new(BufReader::with_capacity(
            64 * 1024,
            MultiGzDecoder::new(BufReader::new(file)),
        )));
    }
    if magic == ZIP_MAGIC || magic == EMPTY_ZIP_MAGIC {
        if channel == Channel::WechatPay {
            return Err(BillError::Archive(
                "a zip file is not a WeChat Pay bill (WeChat Pay serves gzip or plain CSV)".into(),
            ));
        }
        return open_alipay_entry(file);
    }
    Ok(Box::new(BufReader::with_capacity(64 * 1024, file)))
}

/// SHA1 (lower-case hex) of the decompressed content, read as a stream.
pub fn content_sha1(channel: Channel, path: &Path) -> Result<String, BillError> {
    let mut content = open_content(channel, path)?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    loop {
        let chunk = content
            .fill_buf()
            .map_err(|e| BillError::Archive(format!("the bill does not decompress: {e}")))?;
        if chunk.is_empty() {
            break;
        }
        ctx.update(chunk);
        let len = chunk.len();
        content.consume(len);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Finds the 业务明细 entry (not the 汇总 one) and streams it straight from the
/// file: the archive is only used to locate it, so nothing is held in memory
/// and the reader owns its file.
fn open_alipay_entry(file: File) -> Result<Box<dyn BufRead + Send>, BillError> {
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| BillError::Archive(format!("not a readable zip: {e}")))?;
    let mut found = None;
    let mut names = Vec::new();
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| BillError::Archive(format!("zip entry {i}: {e}")))?;
        let name = decode_entry_name(entry.name_raw());
        if name.contains("业务明细") && !name.contains("汇总") && !entry.is_dir() {
            found = Some((
                entry.data_start(),
                entry.compressed_size(),
                entry.compression(),
                entry.crc32(),
            ));
            break;
        }
        names.push(name);
    }
    let Some((start, size, method, crc32)) = found else {
        return Err(BillError::Archive(format!(
            "no 业务明细 entry in the zip (entries: {})",
            names.join(", ")
        )));
    };
    let mut file = archive.into_inner();
    file.seek(SeekFrom::Start(start))?;
    let raw = BufReader::new(file).take(size);
    let reader: Box<dyn Read + Send> = match method {
        zip::CompressionMethod::Stored => Box::new(raw),
        zip::CompressionMethod::Deflated => Box::new(DeflateDecoder::new(raw)),
        other => {
            return Err(BillError::Archive(format!(
                "unsupported zip compression {other:?}"
            )))
        }
    };
    let checked = CrcChecked {
        inner: flate2::CrcReader::new(reader),
        expected: crc32,
    };
    Ok(Box::new(BufReader::with_capacity(64 * 1024, checked)))
}

/// Checks the entry's CRC-32 when its end is reached: a damaged stored
/// (uncompressed) entry would otherwise read as plausible text.
struct CrcChecked {
    inner: flate2::CrcReader<Box<dyn Read + Send>>,
    expected: u32,
}

impl Read for CrcChecked {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && self.inner.crc().sum() != self.expected {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the zip entry's CRC-32 does not match its content",
            ));
        }
        Ok(n)
    }
}

/// Alipay writes GBK names without the zip UTF-8 flag; a re-packed archive
/// may carry UTF-8. Either is accepted.
fn decode_entry_name(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(s) => s.to_string(),
        Err(_) => encoding_rs::GBK
            .decode_without_bom_handling(raw)
            .0
            .into_owned(),
    }
}
