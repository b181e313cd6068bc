//! `payrecon dlq list|replay|purge`: the dead-letter queues for people. The
//! broker work (and why it loses nothing) is in `messaging::dlq`. Exit
//! codes: 0 done, 1 could not run (or a purge not confirmed), 3 no dead
//! letter with the `--id` given.

use std::io::{BufRead, IsTerminal, Write};

use chrono::{DateTime, Utc};
use clap::{ArgGroup, Subcommand, ValueEnum};
use serde::Serialize;

use super::exit;
use super::progress::Progress;
use crate::config::AmqpSettings;
use crate::messaging::dlq::{Action, DeadLetter, DeadLetters};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueArg {
    /// P.requests.dlq: requests that could not be parsed.
    Requests,
    /// P.notifications.dlq: gateway notifications that failed verification.
    Notifications,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show dead letters with their reason, type, request id and age; they stay in the queue.
    #[command(after_help = "Examples:
  payrecon dlq list
  payrecon dlq list --queue notifications --limit 20
  payrecon dlq list --json | jq -r '.[].id'

Listing takes each message without acknowledging it and returns them all
when done: nothing is removed, a message is only counted once more in the
broker's x-delivery-count (the dead-letter queues have no delivery limit).")]
    List {
        /// Only this dead-letter queue (default: both).
        #[arg(long, value_enum)]
        queue: Option<QueueArg>,
        /// At most this many, from the head of each queue.
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on the queue they came from, each once.
    #[command(
        group(ArgGroup::new("which").required(true).args(["id", "all"])),
        after_help = "Examples:
  payrecon dlq replay --id 0193a5c2-7d4e-7b21-9c1f-5e8a0b6d2f10
  payrecon dlq replay --all --queue requests

A message leaves the dead-letter queue only after the broker confirmed its
republish, so an interrupted replay loses nothing; at worst a message is on
both queues, and the daemon's inbox ignores the second copy (same
request_id). Run it again to finish."
    )]
    Replay {
        /// The dead letter's id as `dlq list` shows it (every copy with that id is replayed).
        #[arg(long)]
        id: Option<String>,
        /// Every dead letter that is in the queue when the replay starts.
        #[arg(long)]
        all: bool,
        /// Only this dead-letter queue (default: both).
        #[arg(long, value_enum)]
        queue: Option<QueueArg>,
    },
    /// Remove dead letters older than a given age.
    #[command(after_help = "Examples:
  payrecon dlq purge --older-than 7d
  payrecon dlq purge --older-than 12h --queue notifications --yes

Asks for confirmation on a terminal; elsewhere (cron, scripts) it refuses
unless --yes is given. Dead letters whose age is unknown are kept.")]
    Purge {
        /// Age, as a number and a unit: s, m, h, d or w (e.g. 90m, 7d).
        #[arg(long, value_parser = parse_age)]
        older_than: chrono::Duration,
        /// Only this dead-letter queue (default: both).
        #[arg(long, value_enum)]
        queue: Option<QueueArg>,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(cmd: DlqCommand, amqp: &AmqpSettings) -> i32 {
    let dl = match DeadLetters::connect(amqp).await {
        Ok(dl) => dl,
        Err(e) => {
            eprintln!("payrecon: {e}");
            return exit::FAILED;
        }
    };
    let code = match cmd {
        DlqCommand::List { queue, limit, json } => list(&dl, queue, limit, json).await,
        DlqCommand::Replay { id, all: _, queue } => replay(&dl, queue, id).await,
        DlqCommand::Purge {
            older_than,
            queue,
            yes,
        } => purge(&dl, queue, older_than, yes).await,
    };
    let code = code.unwrap_or_else(|e| {
        eprintln!("payrecon: {e}");
        exit::FAILED
    });
    dl.close().await;
    code
}

fn queues(dl: &DeadLetters, only: Option<QueueArg>) -> Vec<String> {
    let n = dl.names();
    match only {
        Some(QueueArg::Requests) => vec![n.requests_dlq.clone()],
        Some(QueueArg::Notifications) => vec![n.notifications_dlq.clone()],
        None => vec![n.requests_dlq.clone(), n.notifications_dlq.clone()],
    }
}

/// A dead letter as `list --json` prints it.
#[derive(Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    letter: &'a DeadLetter,
    age_s: Option<i64>,
}

async fn list(
    dl: &DeadLetters,
    only: Option<QueueArg>,
    limit: u64,
    json: bool,
) -> anyhow::Result<i32> {
    let now = Utc::now();
    let mut all = Vec::new();
    let mut unshown = Vec::new();
    for queue in queues(dl, only) {
        let depth = dl.depth(&queue).await?;
        let letters = dl.list(&queue, limit).await?;
        if depth > letters.len() as u64 {
            unshown.push((queue, depth - letters.len() as u64));
        }
        all.extend(letters);
    }
    if json {
        let rows: Vec<Listed> = all
            .iter()
            .map(|letter| Listed {
                letter,
                age_s: letter.age(now).map(|a| a.num_seconds()),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&all, now);
    }
    for (queue, more) in unshown {
        eprintln!("{more} more in {queue} not shown (--limit)");
    }
    Ok(exit::OK)
}

fn print_table(letters: &[DeadLetter], now: DateTime<Utc>) {
    if letters.is_empty() {
        println!("no dead letters");
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<36}  {:<28}  {:>7}  {:<22}  {:<24}  {:>5}  REASON",
        "ID", "QUEUE", "AGE", "TYPE", "REQUEST_ID", "DELIV"
    );
    for l in letters {
        let age = l.age(now).map(human_age).unwrap_or_else(|| "?".into());
        let dash = || "-".to_string();
        let reason = l.reason.clone().unwrap_or_else(dash).replace('\n', " ");
        let _ = writeln!(
            out,
            "{:<36}  {:<28}  {:>7}  {:<22}  {:<24}  {:>5}  {}",
            l.id,
            l.queue,
            age,
            l.kind.clone().unwrap_or_else(dash),
            l.request_id.clone().unwrap_or_else(dash),
            l.deliveries,
            reason
        );
    }
}

async fn replay(
    dl: &DeadLetters,
    only: Option<QueueArg>,
    id: Option<String>,
) -> anyhow::Result<i32> {
    let mut replayed = 0;
    for queue in queues(dl, only) {
        let origin = dl.origin_of(&queue)?;
        let mut bar = Progress::new(&format!("replay {queue}"));
        let sweep = dl
            .sweep(
                &queue,
                None,
                |letter| match &id {
                    Some(id) if *id != letter.id => Action::Keep,
                    _ => Action::Replay,
                },
                |s| bar.update(s, s.replayed, "replayed"),
            )
            .await;
        bar.finish();
        let sweep = sweep?;
        if sweep.replayed > 0 || id.is_none() {
            println!(
                "replayed {} dead letter(s) from {queue} to {origin}",
                sweep.replayed
            );
        }
        replayed += sweep.replayed;
    }
    match id {
        Some(id) if replayed == 0 => {
            eprintln!("payrecon: no dead letter with id {id}");
            Ok(exit::NOT_FOUND)
        }
        _ => Ok(exit::OK),
    }
}

async fn purge(
    dl: &DeadLetters,
    only: Option<QueueArg>,
    older_than: chrono::Duration,
    yes: bool,
) -> anyhow::Result<i32> {
    if !yes && !std::io::stdin().is_terminal() {
        eprintln!("payrecon: purge removes dead letters for good; stdin is not a terminal, so give --yes to confirm");
        return Ok(exit::FAILED);
    }
    let age = human_age(older_than);
    let is_old = |letter: &DeadLetter| letter.age(Utc::now()).is_some_and(|a| a > older_than);
    for queue in queues(dl, only) {
        if !yes {
            let mut old = 0u64;
            dl.sweep(
                &queue,
                None,
                |l| {
                    old += u64::from(is_old(l));
                    Action::Keep
                },
                |_| {},
            )
            .await?;
            if old == 0 {
                println!("no dead letters older than {age} in {queue}");
                continue;
            }
            if !confirm(&format!(
                "remove {old} dead letter(s) older than {age} from {queue}?"
            ))? {
                println!("nothing removed from {queue}");
                continue;
            }
        }
        let mut bar = Progress::new(&format!("purge {queue}"));
        let sweep = dl
            .sweep(
                &queue,
                None,
                |l| {
                    if is_old(l) {
                        Action::Remove
                    } else {
                        Action::Keep
                    }
                },
                |s| bar.update(s, s.removed, "removed"),
            )
            .await;
        bar.finish();
        let sweep = sweep?;
        println!(
            "removed {} dead letter(s) older than {age} from {queue}; {} kept",
            sweep.removed, sweep.kept
        );
    }
    Ok(exit::OK)
}

fn confirm(question: &str) -> std::io::Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// `7d`, `12h`, `90m`, `30s`, `2w`.
pub fn parse_age(text: &str) -> Result<chrono::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} needs a unit: s, m, h, d or w (e.g. 7d)"))?;
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("{text:?} must start with a whole number (e.g. 7d)"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: use s, m, h, d or w"
            ))
        }
    };
    n.checked_mul(secs)
        .and_then(chrono::Duration::try_seconds)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// The largest one or two units: `3d4h`, `5m12s`, `40s`.
fn human_age(age: chrono::Duration) -> String {
    let s = age.num_seconds().max(0);
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m{sec}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_and_print() {
        assert_eq!(parse_age("7d").unwrap(), chrono::Duration::days(7));
        assert_eq!(parse_age("90m").unwrap(), chrono::Duration::minutes(90));
        assert_eq!(parse_age("2w").unwrap(), chrono::Duration::weeks(2));
        for bad in ["7", "d", "7y", "-1d", "1.5h", ""] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
        assert_eq!(human_age(chrono::Duration::seconds(40)), "40s");
        assert_eq!(human_age(chrono::Duration::seconds(312)), "5m12s");
        assert_eq!(human_age(chrono::Duration::hours(76)), "3d4h");
    }
}
