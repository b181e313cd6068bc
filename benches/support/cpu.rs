//! CPU time per process group, read from /proc (Linux): the throughput
//! bench reports where a message's CPU goes, which on a noisy shared
//! machine is steadier than the messages per second it yields.

use std::fs;

/// Clock ticks (utime + stime) of this process, of PostgreSQL's processes
/// and of the broker's (Erlang VM).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTicks {
    pub this: u64,
    pub postgres: u64,
    pub broker: u64,
    /// The whole machine (/proc/stat): busy, idle, waiting for I/O, stolen
    /// by the hypervisor.
    pub machine: [u64; 4],
}

/// Where a phase's wall time went on the machine as a whole, in percent
/// of all cores: busy, idle, waiting for I/O, stolen.
#[derive(Debug, Clone, Copy)]
pub struct MachineShare {
    pub busy: f64,
    pub idle: f64,
    pub iowait: f64,
    pub steal: f64,
}

impl CpuTicks {
    pub fn now() -> CpuTicks {
        let mut t = CpuTicks {
            this: ticks_of("self").unwrap_or(0),
            machine: machine_ticks().unwrap_or_default(),
            ..CpuTicks::default()
        };
        let Ok(dir) = fs::read_dir("/proc") else {
            return t;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            match comm.trim() {
                "postgres" => t.postgres += ticks_of(pid).unwrap_or(0),
                "beam.smp" => t.broker += ticks_of(pid).unwrap_or(0),
                _ => {}
            }
        }
        t
    }

    /// Microseconds of CPU per message of each group since `earlier`
    /// (`USER_HZ` is 100 on Linux).
    pub fn per_message_since(&self, earlier: &CpuTicks, n: usize) -> (f64, f64, f64) {
        let us = |a: u64, b: u64| a.saturating_sub(b) as f64 * 10_000.0 / n as f64;
        (
            us(self.this, earlier.this),
            us(self.postgres, earlier.postgres),
            us(self.broker, earlier.broker),
        )
    }
}

impl CpuTicks {
    pub fn machine_since(&self, earlier: &CpuTicks) -> MachineShare {
        let d: Vec<f64> = (0..4)
            .map(|i| self.machine[i].saturating_sub(earlier.machine[i]) as f64)
            .collect();
        let total: f64 = d.iter().sum::<f64>().max(1.0);
        MachineShare {
            busy: 100.0 * d[0] / total,
            idle: 100.0 * d[1] / total,
            iowait: 100.0 * d[2] / total,
            steal: 100.0 * d[3] / total,
        }
    }
}

/// The first line of /proc/stat: user nice system idle iowait irq softirq
/// steal, folded into busy, idle, iowait, steal.
fn machine_ticks() -> Option<[u64; 4]> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    if v.len() < 8 {
        return None;
    }
    Some([v[0] + v[1] + v[2] + v[5] + v[6], v[3], v[4], v[7]])
}

/// utime + stime of /proc/<pid>/stat: fields 14 and 15, counted after the
/// command name, which is in parentheses and may contain spaces.
fn ticks_of(pid: &str) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// This process's peak resident memory so far (`VmHWM`), in KiB; 0 where
/// /proc cannot tell.
#[allow(dead_code)] // only the benches that report memory use it
pub fn peak_rss_kib() -> i64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
