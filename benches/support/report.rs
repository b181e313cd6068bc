//! What every bench stage shares: its size (a tenth in quick mode), a table
//! printed for a reader, and one JSON line appended to
//! `target/bench-results.jsonl` for a machine, so that runs can be compared
//! across commits without scraping the tables.

#![allow(dead_code)] // each bench binary uses its own part of this module

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use serde_json::{json, Value};

/// `PAYRECON_BENCH_QUICK=1`: every stage at a tenth of its size, so that
/// `.ci/run` can check the benches still work in a few minutes. Quick runs
/// are marked as such in the JSON line; their figures are not the targets'.
pub fn quick() -> bool {
    std::env::var("PAYRECON_BENCH_QUICK").is_ok_and(|v| v == "1" || v == "true")
}

/// A stage's size: `env` if set (a number), else `full`, divided by ten in
/// quick mode.
pub fn size(env: &str, full: usize) -> usize {
    let n = std::env::var(env)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(full);
    if quick() {
        (n / 10).max(1)
    } else {
        n
    }
}

/// Where the JSON lines go: `target/bench-results.jsonl` (or under
/// `CARGO_TARGET_DIR`).
pub fn results_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-results.jsonl")
}

/// Appends one stage's result: `figures` is an object of the stage's own
/// numbers (rates, ratio, target, CPU per message, memory); the bench, the
/// stage, the time, the commit and quick mode are added here.
pub fn append(bench: &str, stage: &str, figures: Value) {
    let line = json!({
        "bench": bench,
        "stage": stage,
        "at": chrono::Utc::now().to_rfc3339(),
        "commit": commit(),
        "quick": quick(),
        "figures": figures,
    });
    let path = results_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match OpenOptions::new().create(true).append(true).open(&path) {
        Ok(mut f) => {
            if let Err(e) = writeln!(f, "{line}") {
                eprintln!("could not append to {}: {e}", path.display());
            }
        }
        Err(e) => eprintln!("could not open {}: {e}", path.display()),
    }
}

fn commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A table printed with its columns aligned: a header row, then rows.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: &[String]) {
        self.rows.push(cells.to_vec());
    }

    pub fn print(&self, title: &str) {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        println!("\n{title}");
        for (i, row) in self.rows.iter().enumerate() {
            let line: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(c, s)| format!("{s:<w$}", w = widths[c]))
                .collect();
            println!("| {} |", line.join(" | "));
            if i == 0 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                println!("|-{}-|", rule.join("-|-"));
            }
        }
    }
}

/// A number with thousands separators, for tables.
pub fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}
