//! Memory stays flat however long the bill: parses a 10,000-row and a
//! 1,000,000-row bill of each channel (WeChat Pay gzip, Alipay zip) and
//! compares the peak RSS growth (VmHWM) of the two.
//!
//! Each parse runs in a child process of its own, so one size's peak cannot
//! hide the other's. Run: `cargo bench --bench recon_bill` (or
//! `cargo bench --profile dev --bench recon_bill` to reuse the dev build).
//! Exits 1 if the large bill needs more than 16 MiB over the small one.
//! `PAYRECON_BENCH_QUICK=1` (CI): 100,000 rows instead of 1,000,000.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use payrecon::domain::{format_signed_yuan, Channel};
use payrecon::gateway::bill::{alipay, open_bill, wechat};

const SMALL: u64 = 10_000;

#[allow(dead_code)] // the other benches use the rest
#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/report.rs"]
mod report;
const FLAT_LIMIT_KB: i64 = 16 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let channel: Channel = args[i + 1].parse().expect("channel");
        child(channel, Path::new(&args[i + 2]));
        return;
    }
    // Quick mode (CI): 100,000 rows against 10,000.
    let large = report::size("PAYRECON_BENCH_BILL_ROWS", 1_000_000) as u64;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut flat = true;
    for channel in [Channel::WechatPay, Channel::Alipay] {
        let mut growth = Vec::new();
        for rows in [SMALL, large] {
            let path = dir.path().join(format!("{channel}-{rows}"));
            let started = Instant::now();
            write_bill(channel, rows, &path);
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "{channel}: wrote {rows} rows ({size} bytes) in {:.1?}",
                started.elapsed()
            );
            let out = Command::new(std::env::current_exe().expect("exe"))
                .args(["--child", channel.as_str()])
                .arg(&path)
                .output()
                .expect("child");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let kb: i64 = text
                .trim()
                .split(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .expect("child output");
            println!(
                "{channel:>10} {rows:>9} rows: peak RSS growth {kb:>7} KiB ({})",
                text.trim()
            );
            growth.push(kb);
            let _ = std::fs::remove_file(&path);
        }
        let ratio = growth[1] as f64 / growth[0].max(4) as f64;
        println!("{channel:>10} growth ratio {large}/{SMALL} rows = {ratio:.2}");
        report::append(
            "recon_bill",
            channel.as_str(),
            serde_json::json!({
                "rows_small": SMALL, "rows_large": large,
                "peak_rss_growth_kib_small": growth[0], "peak_rss_growth_kib_large": growth[1],
                "target": "flat: at most 16 MiB more", "met": growth[1] - growth[0] <= FLAT_LIMIT_KB,
            }),
        );
        if growth[1] - growth[0] > FLAT_LIMIT_KB {
            println!(
                "{channel:>10} NOT FLAT: {} KiB more for 100x the rows",
                growth[1] - growth[0]
            );
            flat = false;
        }
    }
    if !flat {
        std::process::exit(1);
    }
}

fn child(channel: Channel, path: &Path) {
    let before = cpu::peak_rss_kib();
    let started = Instant::now();
    let (mut rows, mut fen) = (0u64, 0i64);
    for record in open_bill(channel, path, None).expect("open") {
        let r = record.expect("record");
        rows += 1;
        fen += r.amount.fen();
    }
    let after = cpu::peak_rss_kib();
    println!(
        "{} {rows} rows, {fen} fen, parsed in {:.1?}",
        after - before,
        started.elapsed()
    );
}

/// Streams a bill of `rows` payments to `path` in the channel's download format.
fn write_bill(channel: Channel, rows: u64, path: &Path) {
    let file = std::fs::File::create(path).expect("create");
    match channel {
        Channel::WechatPay => {
            let gz =
                flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::fast());
            let mut w = BufWriter::new(gz);
            writeln!(w, "{}", wechat::DETAIL_HEADER.join(",")).expect("write");
            let mut total = 0i64;
            for i in 0..rows {
                let fen = 100 + (i % 9_900) as i64;
                total += fen;
                let y = format_signed_yuan(fen, 2);
                writeln!(w, "`2026-11-24 10:00:00,`wxd930ea5d5a258f4f,`1900000001,`0,`,`42000{i:023},`{i:032x},`openid,`NATIVE,`SUCCESS,`OTHERS,`CNY,`{y},`0.00,`0,`0,`0.00,`0.00,`,`,`goods,`,`0.00000,`0.60%,`{y},`0.00,`").expect("write");
            }
            writeln!(w, "{}", wechat::SUMMARY_HEADER.join(",")).expect("write");
            let t = format_signed_yuan(total, 2);
            writeln!(w, "`{rows},`{t},`0.00,`0.00,`0.00000,`{t},`0.00").expect("write");
            let gz = w.into_inner().map_err(|e| e.into_error()).expect("flush");
            gz.finish().expect("gzip").flush().expect("flush");
        }
        Channel::Alipay => {
            let mut zip = zip::ZipWriter::new(file);
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .compression_level(Some(1))
                .large_file(true);
            zip.start_file("20880000000000000156_20261124_业务明细.csv", options)
                .expect("entry");
            let mut w = BufWriter::new(&mut zip);
            let gbk = |s: &str| encoding_rs::GBK.encode(s).0.into_owned();
            w.write_all(&gbk(&format!(
                "#支付宝业务明细查询\n{}\n",
                alipay::DETAIL_HEADER.join(",")
            )))
            .expect("write");
            for i in 0..rows {
                let y = format_signed_yuan(100 + (i % 9_900) as i64, 2);
                let row = format!("2026112422{i:018}\t,{i:032x}\t,交易\t,goods,2026-11-24 10:00:00,2026-11-24 10:00:05,\t,\t,\t,\t,buyer\t,{y},{y},0.00,0.00,0.00,0.00,0.00,,0.00\t,0.00,\t,0.00,0.00,\n");
                w.write_all(&gbk(&row)).expect("write");
            }
            w.write_all(&gbk(&format!(
                "#-----业务明细列表结束-----\n#交易合计：{rows}笔\n#退款合计：0笔\n"
            )))
            .expect("write");
            drop(w);
            zip.finish().expect("zip");
        }
    }
}
