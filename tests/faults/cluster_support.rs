//! A three-node RabbitMQ cluster of the test's own (three private nodes
//! joined with `rabbitmqctl join_cluster`), and daemons as `payrecon run`
//! processes pointed at it: each has its own `/metrics`, so the test can
//! tell which instance consumed what (in-process daemons share one
//! process-wide recorder).

use std::path::PathBuf;
use std::time::Duration;

use payrecon::messaging::topology::Names;
use tokio::process::Child;
use tokio::time::Instant;

use crate::common::TestEnv;
use crate::services::{free_port, PrivateRabbit};

pub const NODES: usize = 3;

/// Three nodes in one cluster. Dropping it stops every node and removes
/// its directory (each `PrivateRabbit` does so on drop), also when the
/// test failed.
pub struct RabbitCluster {
    pub nodes: Vec<PrivateRabbit>,
}

impl RabbitCluster {
    /// Starts the nodes side by side, then joins the second and third to
    /// the first. They share root's Erlang cookie (see `PrivateRabbit`).
    pub async fn start(tag: &str) -> RabbitCluster {
        let tags: Vec<String> = (0..NODES).map(|i| format!("{tag}{i}")).collect();
        let nodes = futures::future::join_all(tags.iter().map(|t| PrivateRabbit::start(t))).await;
        let cluster = RabbitCluster { nodes };
        let seed = cluster.nodes[0].node.clone();
        for node in &cluster.nodes[1..] {
            node.stop_app().await;
            node.ctl(&["join_cluster", &seed]).await;
            node.start_app().await;
        }
        let status = cluster.nodes[0]
            .ctl(&["cluster_status", "--formatter", "json"])
            .await;
        let status: serde_json::Value = serde_json::from_str(&status).expect("cluster_status json");
        let running = status["running_nodes"].as_array().map_or(0, Vec::len);
        assert_eq!(running, NODES, "cluster not formed: {status}");
        cluster
    }

    /// Every node's AMQP URL, comma-separated, starting with node `first`:
    /// what an instance's `amqp.url` says.
    pub fn urls_from(&self, first: usize) -> String {
        (0..NODES)
            .map(|k| self.nodes[(first + k) % NODES].amqp_url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node whose name is `node`.
    pub fn index_of(&self, node: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.node == node)
    }

    /// Which node leads `queue`, and its members, asked on node `via`.
    pub async fn quorum_of(&self, via: usize, queue: &str) -> Quorum {
        let out = self.nodes[via]
            .ctl(&[
                "list_queues",
                "name",
                "leader",
                "members",
                "online",
                "--formatter",
                "json",
            ])
            .await;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("list_queues json");
        let row = rows
            .iter()
            .find(|r| r["name"] == queue)
            .unwrap_or_else(|| panic!("{queue} not in {out}"));
        let names = |key: &str| -> Vec<String> {
            row[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        Quorum {
            leader: row["leader"].as_str().unwrap_or_default().to_string(),
            members: names("members"),
            online: names("online"),
        }
    }

    /// Waits until `queue` has a leader among the online nodes other than
    /// `lost` (asked on `via`), and returns that quorum.
    pub async fn wait_new_leader(&self, via: usize, queue: &str, lost: usize, secs: u64) -> Quorum {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let q = self.quorum_of(via, queue).await;
            if q.leader != self.nodes[lost].node && q.online.contains(&q.leader) {
                return q;
            }
            assert!(
                Instant::now() < deadline,
                "{queue}: no new leader after {secs}s: {q:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The daemon's exchanges and queues, declared on the node at `url`.
pub async fn declare_topology(url: &str, names: &Names) {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .expect("amqp");
    let channel = conn.create_channel().await.expect("channel");
    payrecon::messaging::topology::declare(&channel, names)
        .await
        .expect("topology");
    let _ = conn.close(200, "declared".into()).await;
}

/// Whether process `pid` is still the VM of node `name` (not a process
/// that reused the number). The node name is in the VM's environment, not
/// on its command line.
fn is_node(pid: &str, name: &str) -> bool {
    let want = format!("RABBITMQ_NODENAME={name}@");
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&want))
}

/// A node whose VM got SIGSTOP: it keeps its sockets open and answers
/// nothing, like a host that lost power or its network. Killed on drop,
/// since a stopped VM cannot answer `rabbitmqctl stop`; declare it after
/// the node so that it drops first.
pub struct Frozen {
    pid: String,
    name: String,
}

impl Frozen {
    pub async fn freeze(node: &PrivateRabbit) -> Frozen {
        // From the VM itself: the pid file may name a process that started it.
        let pid = node.ctl(&["eval", "os:getpid()."]).await;
        let pid = pid.trim().trim_matches('"').to_string();
        let name = node.node.split('@').next().unwrap_or_default().to_string();
        assert!(is_node(&pid, &name), "pid {pid} is not {name}");
        crate::services::run("kill", &["-STOP", &pid], &[]).await;
        Frozen { pid, name }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if is_node(&self.pid, &self.name) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.pid])
                .status();
        }
    }
}

#[derive(Debug)]
pub struct Quorum {
    pub leader: String,
    pub members: Vec<String>,
    pub online: Vec<String>,
}

/// `payrecon run` on `env`'s database and prefix with its own `amqp.url`,
/// HTTP port and log file. Killed on drop if `stop` was not reached.
pub struct Instance {
    pub child: Child,
    pub base: String,
    log: PathBuf,
}

impl Instance {
    pub async fn start(env: &TestEnv, tag: &str, amqp_url: &str) -> Instance {
        let http = format!("127.0.0.1:{}", free_port());
        let log = env.keys_dir.path().join(format!("{tag}.log"));
        let child = crate::scale_support::run_command(env, amqp_url, &http, &log)
            // The supervisor's lines say when and where each session began.
            .env("RUST_LOG", "warn,payrecon::messaging::supervisor=info")
            .spawn()
            .expect("spawn payrecon run");
        let mut instance = Instance {
            child,
            base: format!("http://{http}"),
            log,
        };
        instance.wait_ready(60).await;
        instance
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.readyz().await.is_some_and(|(status, _)| status == 200) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("payrecon run exited early ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "{} never ready", self.base);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/readyz`'s status and body.
    pub async fn readyz(&self) -> Option<(u16, serde_json::Value)> {
        let r = reqwest::get(format!("{}/readyz", self.base)).await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.ok()?))
    }

    /// host:port of the broker the instance's session is on, if any.
    pub async fn broker(&self) -> Option<String> {
        let (_, body) = self.readyz().await?;
        body["broker_address"].as_str().map(str::to_string)
    }

    /// Requests this instance has settled (any outcome), from its own
    /// `/metrics`: `payrecon_messages_total{queue="requests",…}` summed.
    pub async fn requests_settled(&self) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .expect("/metrics")
            .text()
            .await
            .expect("/metrics body");
        text.lines()
            .filter(|l| {
                l.starts_with("payrecon_messages_total{") && l.contains("queue=\"requests\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// SIGTERM, and waits for a clean exit.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let waited = tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await;
        assert!(
            matches!(waited, Ok(Ok(s)) if s.success()),
            "{} did not stop cleanly: {waited:?}\n{}",
            self.base,
            self.log()
        );
    }
}
