//! `payrecon dlq list|replay|purge` against the real broker, on dead letters
//! made by a running daemon from bad requests: listing takes nothing away,
//! replay puts each back once (by id or all), an interrupted replay loses
//! nothing, purge keeps the young and refuses without --yes off a terminal.
//! Every command's --help carries an example.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Broker, TestEnv};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use payrecon::app::Daemon;
use payrecon::messaging::dlq::{letter, DeadLetters};
use serde_json::{json, Value};

fn payrecon(env: &TestEnv) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrecon"));
    cmd.env(
        "PAYRECON__DATABASE__URL",
        env.settings.database.url.expose(),
    )
    .env("PAYRECON__AMQP__PREFIX", &env.name)
    .env("RUST_LOG", "warn")
    .stdin(Stdio::null());
    cmd
}

fn run(env: &TestEnv, args: &[&str]) -> Output {
    let out = payrecon(env).args(args).output().expect("run payrecon");
    eprintln!(
        "payrecon {args:?} -> {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn depth(broker: &Broker, queue: &str) -> u32 {
    let ch = broker.conn.create_channel().await.expect("channel");
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .expect("queue exists");
    let _ = ch.close(200, "depth".into()).await;
    q.message_count()
}

/// Waits (generously) until `queue` holds `n` ready messages.
async fn wait_depth(broker: &Broker, queue: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = depth(broker, queue).await;
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue} holds {now} messages, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes every message of `queue` away; their bodies, counted.
async fn drain(broker: &Broker, queue: &str) -> HashMap<Vec<u8>, usize> {
    let mut bodies = HashMap::new();
    while let Some(m) = broker
        .channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        *bodies.entry(m.delivery.data).or_insert(0) += 1;
    }
    bodies
}

/// A request the daemon dead-letters (data lacks user_id); its body.
fn bad_request(rid: &str) -> Vec<u8> {
    json!({"type": "order.place", "request_id": rid, "sent_at": "2026-11-24T10:00:00+08:00",
           "data": {"items": [{"product_id": "p1", "quantity": 1, "unit_price": 100}],
                    "currency": "CNY", "payment_method": "alipay"}})
    .to_string()
    .into_bytes()
}

/// Starts a daemon, has it dead-letter `n` bad requests (and the non-JSON
/// body if `garbage`), stops it (so replays stay in the work queue), and
/// returns the bodies.
async fn dead_letters(env: &TestEnv, broker: &Broker, n: usize, garbage: bool) -> Vec<Vec<u8>> {
    let daemon = Daemon::start(env.settings.clone()).await.expect("daemon");
    let names = env.names();
    let mut bodies: Vec<Vec<u8>> = (0..n).map(|i| bad_request(&format!("bad-{i}"))).collect();
    if garbage {
        bodies.push(b"this is {not json".to_vec());
    }
    for body in &bodies {
        broker.publish_raw(&names.requests, body).await;
    }
    wait_depth(broker, &names.requests_dlq, bodies.len() as u32).await;
    daemon.stop().await;
    bodies
}

fn listed(env: &TestEnv) -> Vec<Value> {
    let out = run(env, &["dlq", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).expect("list --json is JSON");
    v.as_array().expect("an array").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_reasons_and_replay_puts_each_back_once() {
    let env = TestEnv::new("dlqreplay");
    let broker = Broker::connect(&env).await;
    let names = env.names();
    let bodies = dead_letters(&env, &broker, 6, true).await;

    let letters = listed(&env);
    assert_eq!(letters.len(), 7, "{letters:?}");
    for l in &letters {
        assert_eq!(l["queue"], names.requests_dlq.as_str());
        let reason = l["reason"].as_str().expect("a reason");
        let age = l["age_s"].as_i64().expect("an age");
        assert!((0..600).contains(&age), "age {age}");
        assert!(l["dead_lettered_at"].is_string());
        assert!(!l["id"].as_str().unwrap().is_empty());
        match l["request_id"].as_str() {
            Some(rid) => {
                assert!(rid.starts_with("bad-"), "{rid}");
                assert_eq!(l["type"], "order.place");
                assert!(reason.contains("user_id"), "{reason}");
            }
            None => {
                assert!(l["type"].is_null());
                assert!(reason.contains("not JSON"), "{reason}");
            }
        }
    }
    let mut ids: Vec<&str> = letters.iter().map(|l| l["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 7, "ids are distinct");

    let table = stdout(&run(&env, &["dlq", "list", "--queue", "requests"]));
    assert!(table.contains("bad-3") && table.contains("user_id") && table.contains("REASON"));
    let limited = stdout(&run(&env, &["dlq", "list", "--limit", "2", "--json"]));
    assert_eq!(
        serde_json::from_str::<Value>(&limited)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Listing more often than the work queues' delivery limit loses nothing.
    let dl = DeadLetters::connect(&env.settings.amqp).await.unwrap();
    for _ in 0..payrecon::messaging::topology::DELIVERY_LIMIT + 5 {
        assert_eq!(dl.list(&names.requests_dlq, 100).await.unwrap().len(), 7);
    }
    dl.close().await;
    wait_depth(&broker, &names.requests_dlq, 7).await;
    assert_eq!(depth(&broker, &names.requests).await, 0);

    // One, by id.
    let first = letters[0]["id"].as_str().unwrap().to_string();
    let out = run(&env, &["dlq", "replay", "--id", &first]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("replayed 1 "), "{}", stdout(&out));
    wait_depth(&broker, &names.requests, 1).await;
    wait_depth(&broker, &names.requests_dlq, 6).await;
    assert!(!listed(&env).iter().any(|l| l["id"] == first.as_str()));
    let missing = run(&env, &["dlq", "replay", "--id", &first]);
    assert_eq!(missing.status.code(), Some(3), "that id is gone");

    // The rest.
    let out = run(&env, &["dlq", "replay", "--all"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("replayed 6 "), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("replayed 0 "),
        "the empty notifications DLQ"
    );
    wait_depth(&broker, &names.requests, 7).await;
    assert_eq!(depth(&broker, &names.requests_dlq).await, 0);
    let back = drain(&broker, &names.requests).await;
    assert_eq!(back.len(), 7);
    for body in &bodies {
        assert_eq!(back.get(body), Some(&1), "each body back once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_replay_loses_nothing() {
    let env = TestEnv::new("dlqcrash");
    let broker = Broker::connect(&env).await;
    let names = env.names();
    let bodies = dead_letters(&env, &broker, 150, false).await;

    // Exits (without closing anything) once 100 are confirmed: after the
    // second batch of 64 was confirmed and before it was acked.
    let out = payrecon(&env)
        .env(payrecon::messaging::dlq::EXIT_AFTER_CONFIRMS_ENV, "100")
        .args(["dlq", "replay", "--all", "--queue", "requests"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_depth(&broker, &names.requests, 128).await;
    wait_depth(&broker, &names.requests_dlq, 150 - 64).await;

    let out = run(&env, &["dlq", "replay", "--all", "--queue", "requests"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("replayed 86 "), "{}", stdout(&out));
    wait_depth(&broker, &names.requests, 150 + 64).await;
    assert_eq!(depth(&broker, &names.requests_dlq).await, 0);
    let back = drain(&broker, &names.requests).await;
    let doubled = bodies.iter().filter(|b| back.get(*b) == Some(&2)).count();
    for body in &bodies {
        assert!(
            back.get(body).is_some_and(|n| (1..=2).contains(n)),
            "lost or tripled"
        );
    }
    assert_eq!(
        doubled, 64,
        "only the batch confirmed but not acked is doubled"
    );
    assert_eq!(back.len(), 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replay_loses_nothing() {
    const N: u32 = 600;
    let env = TestEnv::new("dlqkill");
    let broker = Broker::connect(&env).await;
    let names = env.names();
    let bodies = dead_letters(&env, &broker, N as usize, false).await;

    let mut child = payrecon(&env)
        .args(["dlq", "replay", "--all", "--queue", "requests"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // SIGKILL as soon as the first replays reach the work queue.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while depth(&broker, &names.requests).await == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None, "killed mid-way, not finished");

    // The broker returns what the killed process held; then nothing is missing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (in_work, in_dlq) = loop {
        let (w, d) = (
            depth(&broker, &names.requests).await,
            depth(&broker, &names.requests_dlq).await,
        );
        if w + d >= N || tokio::time::Instant::now() > deadline {
            break (w, d);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(in_work + in_dlq >= N, "{in_work} + {in_dlq} < {N}: lost");
    assert!(in_dlq > 0, "the kill landed before the end");

    let out = run(&env, &["dlq", "replay", "--all", "--queue", "requests"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains(&format!("replayed {in_dlq} ")));
    wait_depth(&broker, &names.requests_dlq, 0).await;
    let back = drain(&broker, &names.requests).await;
    for body in &bodies {
        assert!(
            back.get(body).is_some_and(|n| (1..=2).contains(n)),
            "lost or tripled"
        );
    }
    let doubled = bodies.iter().filter(|b| back.get(*b) == Some(&2)).count();
    assert!(doubled <= 64, "at most one batch doubled, got {doubled}");
    eprintln!("killed after {in_work} replayed ({in_dlq} left); doubled {doubled}; lost 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_request_is_processed_once_even_when_doubled() {
    let env = TestEnv::new("dlqvalid");
    let mut broker = Broker::connect(&env).await;
    let names = env.names();
    let daemon = Daemon::start(env.settings.clone()).await.expect("daemon");
    // A valid request dead-lettered (say, by a faulty release) twice over,
    // as an interrupted replay would leave it.
    let mut data = common::place_data("alipay");
    data["order_id"] = json!(payrecon::domain::OrderId::generate().to_string());
    let body = json!({"type": "order.place", "request_id": "replay-me",
                      "sent_at": "2026-11-24T10:00:00+08:00", "data": data})
    .to_string();
    for _ in 0..2 {
        let props = letter::mark(
            BasicProperties::default(),
            "faulty release",
            chrono::Utc::now(),
        );
        publish_to_dlx(&broker, body.as_bytes(), props).await;
    }
    wait_depth(&broker, &names.requests_dlq, 2).await;

    let out = run(&env, &["dlq", "replay", "--all"]);
    assert!(stdout(&out).contains("replayed 2 "), "{}", stdout(&out));
    let created = broker.wait_event("order.created", 20).await;
    assert_eq!(created["request_id"], "replay-me");
    broker.assert_quiet(1500).await;
    assert_eq!(
        depth(&broker, &names.requests_dlq).await,
        0,
        "processed, not dead-lettered again"
    );
    daemon.stop().await;
}

/// A dead letter as the daemon marks it, dead-lettered `days_ago`.
async fn old_dead_letter(broker: &Broker, rid: &str, days_ago: i64) {
    let at = chrono::Utc::now() - chrono::Duration::days(days_ago);
    let props = letter::mark(BasicProperties::default(), "old and bad", at);
    publish_to_dlx(broker, &bad_request(rid), props).await;
}

async fn publish_to_dlx(broker: &Broker, body: &[u8], props: BasicProperties) {
    broker
        .channel
        .basic_publish(
            broker.names.dlx.as_str().into(),
            broker.names.requests.as_str().into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_only_the_old_and_wants_yes_off_a_terminal() {
    let env = TestEnv::new("dlqpurge");
    let broker = Broker::connect(&env).await;
    let names = env.names();
    dead_letters(&env, &broker, 3, false).await;
    old_dead_letter(&broker, "old-1", 8).await;
    old_dead_letter(&broker, "old-2", 30).await;
    // As the broker dead-letters (delivery limit): x-death's time, no id.
    let mut death = FieldTable::default();
    death.insert(
        "time".into(),
        AMQPValue::Timestamp((chrono::Utc::now() - chrono::Duration::days(9)).timestamp() as u64),
    );
    death.insert(
        "reason".into(),
        AMQPValue::LongString("delivery_limit".into()),
    );
    death.insert(
        "queue".into(),
        AMQPValue::LongString(names.requests.as_str().into()),
    );
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
    );
    publish_to_dlx(
        &broker,
        &bad_request("old-3"),
        BasicProperties::default().with_headers(headers),
    )
    .await;
    wait_depth(&broker, &names.requests_dlq, 6).await;

    let by_broker = listed(&env)
        .into_iter()
        .find(|l| l["request_id"] == "old-3")
        .expect("listed");
    assert!(by_broker["id"].as_str().unwrap().starts_with("sha256-"));
    assert!(by_broker["reason"]
        .as_str()
        .unwrap()
        .contains("delivery_limit"));
    assert!(by_broker["age_s"].as_i64().unwrap() > 8 * 86_400);

    let refused = run(&env, &["dlq", "purge", "--older-than", "7d"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    wait_depth(&broker, &names.requests_dlq, 6).await;

    let out = run(&env, &["dlq", "purge", "--older-than", "7d", "--yes"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("removed 3 "), "{}", stdout(&out));
    wait_depth(&broker, &names.requests_dlq, 3).await;
    let mut left: Vec<String> = listed(&env)
        .iter()
        .map(|l| l["request_id"].as_str().unwrap().to_string())
        .collect();
    left.sort();
    assert_eq!(left, ["bad-0", "bad-1", "bad-2"]);
}

#[test]
fn every_command_help_has_an_example() {
    let env = TestEnv::new("dlqhelp");
    for args in [
        &[][..],
        &["run"],
        &["migrate"],
        &["order"],
        &["order", "show"],
        &["recon"],
        &["recon", "run"],
        &["recon", "report"],
        &["recon", "list"],
        &["dlq"],
        &["dlq", "list"],
        &["dlq", "replay"],
        &["dlq", "purge"],
        &["gateway-sim"],
    ] {
        let mut full = args.to_vec();
        full.push("--help");
        let out = payrecon(&env).args(&full).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{full:?}");
        let text = stdout(&out);
        assert!(
            text.contains("Example"),
            "{full:?} --help has no example:\n{text}"
        );
        let example = format!("payrecon {}", args.join(" "));
        assert!(
            text.contains(example.trim_end()),
            "{full:?}: no `{example}` line"
        );
    }
}

#[test]
fn a_prefix_without_queues_is_an_error_not_a_new_queue() {
    let env = TestEnv::new("dlqnone");
    let out = run(&env, &["dlq", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no queue"));
}
