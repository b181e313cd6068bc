//! Streams a bill through the matcher. The file is read on a blocking
//! thread (decompression and parsing are CPU and file I/O) and handed over
//! in bounded batches, so at most a few batches are in memory at once
//! whatever the bill's size; each batch's unknown ids are looked up in one
//! query.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{ReconContext, ReconError};
use crate::domain::recon::{BillRecord, MatchOutcome, Matcher, ReconRun};
use crate::gateway::bill::{self, BillError};
use crate::store::recon as store;

const BATCH: usize = 1000;
/// Batches in flight between the reader thread and the matcher.
const QUEUE: usize = 4;
const HEARTBEAT: Duration = Duration::from_secs(10);

type Batch = Result<Vec<BillRecord>, BillError>;

pub(super) async fn match_bill(
    ctx: &ReconContext,
    run: &ReconRun,
    path: &Path,
    expected_sha1: Option<String>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<MatchOutcome, ReconError> {
    let mut conn = ctx
        .pool
        .acquire()
        .await
        .map_err(crate::store::StoreError::from)?;
    let expected = store::paid_in_window_count(&mut conn, run.channel, from, to).await?;
    let mut matcher = Matcher::with_capacity(usize::try_from(expected).unwrap_or(0));
    {
        let mut orders = store::paid_in_window(&mut conn, run.channel, from, to);
        while let Some(order) = orders.next().await {
            matcher.add_expected(order?);
        }
    }

    let (tx, mut rx) = mpsc::channel::<Batch>(QUEUE);
    let reader = spawn_reader(run, path.to_path_buf(), expected_sha1, tx);

    let mut rows = 0u64;
    let mut last_beat = Instant::now();
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        let wanted = matcher.to_look_up(&batch);
        if !wanted.is_empty() {
            let found = store::orders_by_out_trade_no(&mut conn, run.channel, &wanted).await?;
            for order in found {
                matcher.add_known(order);
            }
            // Whatever was not found is not ours; remember so it is not asked again.
            for otn in &wanted {
                matcher.mark_absent(otn);
            }
        }
        for record in &batch {
            matcher.observe(record)?;
        }
        rows += batch.len() as u64;
        if let Some(progress) = &ctx.progress {
            progress(rows);
        }
        if last_beat.elapsed() >= HEARTBEAT {
            store::heartbeat(&mut conn, run.run_id, Utc::now()).await?;
            tracing::info!(run.id = %run.run_id, rows, "reconciliation progress");
            last_beat = Instant::now();
        }
    }
    // The reader ends the channel after the last batch or the first error;
    // a panic in it must not pass for a complete bill.
    match reader.await {
        Ok(true) => {}
        Ok(false) | Err(_) => return Err(ReconError::ReaderLost),
    }
    let refunds = store::refunds_in_window(&mut conn, run.channel, from, to).await?;
    tracing::info!(run.id = %run.run_id, rows, "bill read");
    Ok(matcher.finish(refunds))
}

/// Returns true when the reader reached the end of the bill or reported its
/// error (both are complete answers); false if the receiver went away.
fn spawn_reader(
    run: &ReconRun,
    path: PathBuf,
    expected_sha1: Option<String>,
    tx: mpsc::Sender<Batch>,
) -> tokio::task::JoinHandle<bool> {
    let channel = run.channel;
    tokio::task::spawn_blocking(move || {
        let records = match bill::open_bill(channel, &path, expected_sha1.as_deref()) {
            Ok(r) => r,
            Err(e) => return tx.blocking_send(Err(e)).is_ok(),
        };
        let mut batch = Vec::with_capacity(BATCH);
        for record in records {
            match record {
                Ok(r) => batch.push(r),
                Err(e) => return tx.blocking_send(Err(e)).is_ok(),
            }
            if batch.len() == BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                if tx.blocking_send(Ok(full)).is_err() {
                    return false;
                }
            }
        }
        batch.is_empty() || tx.blocking_send(Ok(batch)).is_ok()
    })
}
