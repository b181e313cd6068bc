//! The generated hostile requests through the real broker and a daemon, a
//! batch per case: publish the whole batch, then check that every message
//! got its outcome and that a valid order placed afterwards is created.

use super::*;

struct Harness {
    env: TestEnv,
    daemon: Daemon,
    broker: Broker,
    batch: usize,
}

impl Harness {
    async fn start() -> Harness {
        let env = TestEnv::new("hostilereq");
        let broker = Broker::connect(&env).await;
        let daemon = Daemon::start(env.settings.clone()).await.expect("daemon");
        Harness {
            env,
            daemon,
            broker,
            batch: 0,
        }
    }

    /// Whatever a failed batch left behind, so a shrunk rerun starts clean.
    async fn drain(&mut self, dlq: &str) {
        while self.broker.get_from(dlq, 0).await.is_some() {}
        while let Ok(Some(_)) = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            self.broker.try_next_event(),
        )
        .await
        {}
    }

    async fn run_batch(&mut self, batch: &[Hostile]) {
        self.batch += 1;
        let requests = self.env.names().requests.clone();
        let dlq = self.env.names().requests_dlq.clone();
        self.drain(&dlq).await;
        // Request ids are made now, so a shrunk rerun never meets its own
        // earlier ids in the inbox.
        let mut dead: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut rejected: HashMap<String, &'static str> = HashMap::new();
        for (i, h) in batch.iter().enumerate() {
            let rid = format!(
                "b{}-{i}-{}",
                self.batch,
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            let (body, expect) = h.render(&rid);
            match expect {
                Expect::Invalid(Some(rid)) => {
                    *dead.entry(body.clone()).or_default() += 1;
                    rejected.insert(rid, "invalid_request");
                }
                Expect::Invalid(None) => *dead.entry(body.clone()).or_default() += 1,
                Expect::Rejected(rid, reason) => {
                    rejected.insert(rid, reason);
                }
            }
            self.broker.publish_raw(&requests, &body).await;
        }
        let mut expected_dead: usize = dead.values().sum();
        while expected_dead > 0 {
            let m = self
                .broker
                .get_from(&dlq, 30)
                .await
                .unwrap_or_else(|| panic!("{expected_dead} dead letters missing"));
            let reason = header_str(&m.delivery.properties, "x-payrecon-error").unwrap_or_default();
            assert!(reason.starts_with("invalid_request: "), "{reason}");
            let left = dead
                .get_mut(&m.delivery.data)
                .filter(|n| **n > 0)
                .unwrap_or_else(|| panic!("unexpected dead letter ({reason})"));
            *left -= 1;
            expected_dead -= 1;
        }
        let mut waiting: HashSet<String> = rejected.keys().cloned().collect();
        while !waiting.is_empty() {
            let e = self.broker.next_event(30).await;
            assert_eq!(e["type"], "request.rejected", "{e}");
            let rid = e["request_id"].as_str().unwrap_or_default().to_string();
            assert!(waiting.remove(&rid), "unexpected or repeated rejection {e}");
            assert_eq!(e["data"]["reason"], rejected[&rid], "{e}");
            assert!(e["data"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        // Still consuming: a valid order placed after the batch is created.
        let rid = format!("alive-{}", uuid::Uuid::new_v4().simple());
        self.broker
            .request("order.place", &rid, place_data("alipay"))
            .await;
        let e = self.broker.next_event(30).await;
        assert_eq!(
            (e["type"].as_str(), e["request_id"].as_str()),
            (Some("order.created"), Some(rid.as_str())),
            "{e}"
        );
        assert!(
            self.broker.get_from(&dlq, 0).await.is_none(),
            "nothing else dead-lettered"
        );
    }
}

#[test]
fn hostile_batches_through_the_broker_each_get_their_outcome() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let harness = RefCell::new(rt.block_on(Harness::start()));
    let mut runner = TestRunner::new(Config {
        cases: 8,
        failure_persistence: None,
        max_shrink_iters: 32,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(hostile(), 1..40), |batch| {
        rt.block_on(harness.borrow_mut().run_batch(&batch));
        Ok(())
    });
    let h = harness.into_inner();
    rt.block_on(h.daemon.stop());
    drop(h.broker);
    drop(h.env);
    if let Err(e) = result {
        panic!("{e}");
    }
}
