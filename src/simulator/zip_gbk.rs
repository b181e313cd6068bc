//! A minimal zip writer for Alipay's bill archive. The `zip` crate writes entry
//! names as UTF-8 (setting the UTF-8 flag for non-ASCII); Alipay's archives
//! carry GBK-encoded names *without* that flag, which is exactly what bill
//! parsers must cope with, so the archive is written by hand.

use std::io::Write;

use chrono::{Datelike, NaiveDateTime, Timelike};
use flate2::write::DeflateEncoder;
use flate2::{Compression, Crc};

pub struct Entry {
    /// The name's raw bytes (GBK for Alipay).
    pub name: Vec<u8>,
    pub data: Vec<u8>,
}

fn dos_time(at: NaiveDateTime) -> (u16, u16) {
    let time = ((at.hour() << 11) | (at.minute() << 5) | (at.second() / 2)) as u16;
    let year = at.year().clamp(1980, 2107) as u32 - 1980;
    let date = ((year << 9) | (at.month() << 5) | at.day()) as u16;
    (time, date)
}

/// Deflated entries, no extra fields, no UTF-8 flag. Sizes are far below
/// the 4 GiB that would need zip64 (a day's bill in a test is kilobytes);
/// a larger one is refused rather than written corrupt.
pub fn write(entries: &[Entry], modified: NaiveDateTime) -> std::io::Result<Vec<u8>> {
    let too_big = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "zip64 not supported");
    let (time, date) = dos_time(modified);
    let mut out = Vec::new();
    let mut central = Vec::new();
    for entry in entries {
        let mut crc = Crc::new();
        crc.update(&entry.data);
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(&entry.data)?;
        let packed = encoder.finish()?;
        let offset = u32::try_from(out.len()).map_err(|_| too_big())?;
        let csize = u32::try_from(packed.len()).map_err(|_| too_big())?;
        let usize_ = u32::try_from(entry.data.len()).map_err(|_| too_big())?;
        let name_len = u16::try_from(entry.name.len()).map_err(|_| too_big())?;

        let common = |buf: &mut Vec<u8>| {
            buf.extend_from_slice(&20u16.to_le_bytes()); // version needed
            buf.extend_from_slice(&0u16.to_le_bytes()); // flags: no UTF-8 bit
            buf.extend_from_slice(&8u16.to_le_bytes()); // deflate
            buf.extend_from_slice(&time.to_le_bytes());
            buf.extend_from_slice(&date.to_le_bytes());
            buf.extend_from_slice(&crc.sum().to_le_bytes());
            buf.extend_from_slice(&csize.to_le_bytes());
            buf.extend_from_slice(&usize_.to_le_bytes());
            buf.extend_from_slice(&name_len.to_le_bytes());
            buf.extend_from_slice(&0u16.to_le_bytes()); // extra length
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(&entry.name);
        out.extend_from_slice(&packed);

        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        common(&mut central);
        central.extend_from_slice(&0u16.to_le_bytes()); // comment length
        central.extend_from_slice(&0u16.to_le_bytes()); // disk number
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(&entry.name);
    }
    let cd_offset = u32::try_from(out.len()).map_err(|_| too_big())?;
    let cd_size = u32::try_from(central.len()).map_err(|_| too_big())?;
    let count = u16::try_from(entries.len()).map_err(|_| too_big())?;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_zip_crate_reads_it_back_with_gbk_names() {
        let (name, _, _) = encoding_rs::GBK.encode("2088_20240101_业务明细.csv");
        let (body, _, _) = encoding_rs::GBK.encode("支付宝交易号,商户订单号\n");
        let entries = [Entry {
            name: name.to_vec(),
            data: body.to_vec(),
        }];
        let at = chrono::NaiveDate::from_ymd_opt(2024, 1, 2)
            .unwrap()
            .and_hms_opt(9, 0, 0)
            .unwrap();
        let bytes = write(&entries, at).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let mut file = archive.by_index(0).unwrap();
        let (decoded, _, bad) = encoding_rs::GBK.decode(file.name_raw());
        assert!(!bad);
        assert_eq!(decoded, "2088_20240101_业务明细.csv");
        let mut content = Vec::new();
        file.read_to_end(&mut content).unwrap();
        assert_eq!(content, body.to_vec());
    }
}
