//! Watching a daemon's `/readyz` from a test: waiting for one answer, or
//! polling in the background to see an outage that may last only a few
//! hundred milliseconds.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

async fn readyz_status(client: &reqwest::Client, base: &str) -> Option<u16> {
    client
        .get(format!("{base}/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Polls `/readyz` until it answers `status`, or panics after `secs`.
pub async fn wait_readyz(base: &str, status: u16, secs: u64) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = readyz_status(&client, base).await;
        if got == Some(status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {got:?}, want {status} after {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the watch saw: 503 answers, and requests the daemon did not answer
/// at all (it must stay up through any outage of its dependencies).
#[derive(Default)]
struct Seen {
    /// Sum of the spans between consecutive polls that both said 503.
    unready: Duration,
    last_unready: Option<Instant>,
    episodes: usize,
}

/// Polls `/readyz` in the background as fast as it answers, remembering
/// whether it ever said 503: an outage may last only a few hundred ms, and
/// must be seen whenever it happens relative to the command that caused it.
pub struct ReadinessWatch {
    saw_unready: Arc<AtomicBool>,
    no_answer: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadinessWatch {
    pub fn start(base: String) -> ReadinessWatch {
        let saw_unready = Arc::new(AtomicBool::new(false));
        let no_answer = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (saw, silent, log, halt) = (
            saw_unready.clone(),
            no_answer.clone(),
            seen.clone(),
            stop.clone(),
        );
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !halt.load(Ordering::SeqCst) {
                let status = readyz_status(&client, &base).await;
                let now = Instant::now();
                if let Ok(mut seen) = log.lock() {
                    if status == Some(503) {
                        match seen.last_unready {
                            Some(last) => seen.unready += now - last,
                            None => seen.episodes += 1,
                        }
                        seen.last_unready = Some(now);
                    } else {
                        seen.last_unready = None;
                    }
                }
                match status {
                    Some(503) => saw.store(true, Ordering::SeqCst),
                    None => {
                        silent.fetch_add(1, Ordering::SeqCst);
                    }
                    Some(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        ReadinessWatch {
            saw_unready,
            no_answer,
            seen,
            stop,
            task,
        }
    }

    pub fn saw_unready(&self) -> bool {
        self.saw_unready.load(Ordering::SeqCst)
    }

    /// Polls that got no HTTP answer at all (refused, reset, timed out).
    pub fn no_answer(&self) -> usize {
        self.no_answer.load(Ordering::SeqCst)
    }

    /// Time seen unready so far, and in how many separate spells.
    pub fn unready(&self) -> (Duration, usize) {
        self.seen
            .lock()
            .map(|s| (s.unready, s.episodes))
            .unwrap_or_default()
    }

    /// Waits (bounded) until a 503 has been seen.
    pub async fn wait_unready(&self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.saw_unready() {
            assert!(Instant::now() < deadline, "/readyz never answered 503");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn finish(self) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        let saw = self.saw_unready();
        let _ = self.task.await;
        saw || self.saw_unready.load(Ordering::SeqCst)
    }
}
