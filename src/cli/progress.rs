//! Progress of a long sweep over a dead-letter queue, for whoever watches.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::messaging::dlq::Sweep;

/// A bar on a terminal; elsewhere a plain line at most every few seconds
/// (and at the end), so logs of a long sweep show it is moving.
pub struct Progress {
    label: String,
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: Instant,
    last: Option<(Sweep, u64, &'static str)>,
}

impl Progress {
    pub fn new(label: &str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} {bar:30} {pos}/{len} looked at, {msg} ({per_sec}, {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        Progress {
            label: label.to_string(),
            bar,
            started: Instant::now(),
            last_line: Instant::now(),
            last: None,
        }
    }

    pub fn update(&mut self, sweep: &Sweep, done: u64, verb: &'static str) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(sweep.total);
                bar.set_position(sweep.seen);
                bar.set_message(format!("{done} {verb}"));
            }
            None => {
                self.last = Some((*sweep, done, verb));
                if self.last_line.elapsed() >= Duration::from_secs(2) {
                    self.line();
                }
            }
        }
    }

    fn line(&mut self) {
        if let Some((s, done, verb)) = self.last {
            eprintln!(
                "{}: {}/{} looked at, {done} {verb}",
                self.label, s.seen, s.total
            );
        }
        self.last_line = Instant::now();
    }

    pub fn finish(mut self) {
        match self.bar.take() {
            Some(bar) => bar.finish_and_clear(),
            // A sweep long enough to have shown a line shows its last one too.
            None if self.started.elapsed() >= Duration::from_secs(2) => self.line(),
            None => {}
        }
    }
}
