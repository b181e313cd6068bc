//! Private PostgreSQL clusters and RabbitMQ nodes that a test may stop and
//! restart at will: the shared servers on 5432 and 5672 run other
//! engineers' tests and must never go down. Each instance listens on
//! 127.0.0.1 only, on ports picked free, and is torn down on drop (stopped,
//! every directory and the cluster removed), also when the test failed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sqlx::Connection;
use tokio::time::Instant;

/// A TCP port nobody listens on right now (the kernel's pick).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A name no other instance on this machine uses (lowercase, `[a-z0-9_]`,
/// which both pg_createcluster and Erlang node names accept).
pub fn unique_name(tag: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("f{tag}_{}", id.get(..10).unwrap_or("x"))
}

/// Runs a command to completion; panics with its output when it fails.
pub async fn run(program: &str, args: &[&str], envs: &[(String, String)]) -> String {
    let out = tokio::process::Command::new(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Best effort, for Drop: a failure here must not hide the test's own.
fn run_quietly(program: &str, args: &[&str], envs: &[(String, String)]) -> bool {
    Command::new(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub async fn wait_listening(port: u16, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port} after {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The newest PostgreSQL major version the Debian tooling knows here.
fn pg_version() -> String {
    let mut versions: Vec<u32> = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql (postgresql-common)")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    versions
        .last()
        .expect("a PostgreSQL version under /etc/postgresql")
        .to_string()
}

/// How a private cluster does TLS. Debian's clusters default to `ssl = on`
/// with the machine's snakeoil certificate; a test about TLS says which.
pub enum PgTls {
    /// Whatever pg_createcluster set up.
    Default,
    Off,
    /// `ssl = on` with this certificate (chain) and key, both PEM.
    On {
        cert_pem: String,
        key_pem: String,
    },
}

/// A PostgreSQL cluster of its own (`pg_createcluster`), trust auth, user
/// `postgres`, on 127.0.0.1:`port`.
pub struct PrivatePostgres {
    pub version: String,
    pub name: String,
    pub port: u16,
}

impl PrivatePostgres {
    pub async fn start(tag: &str) -> PrivatePostgres {
        PrivatePostgres::start_with(tag, PgTls::Default).await
    }

    pub async fn start_with(tag: &str, tls: PgTls) -> PrivatePostgres {
        let pg = PrivatePostgres {
            version: pg_version(),
            name: unique_name(tag),
            port: free_port(),
        };
        // From here on, Drop removes whatever part of the cluster exists.
        let port = pg.port.to_string();
        run(
            "pg_createcluster",
            &[&pg.version, &pg.name, "--port", &port, "--", "--auth=trust"],
            &[],
        )
        .await;
        // pg_createcluster's own `-o` quotes values its own way; a conf.d
        // file (included by Debian's postgresql.conf) says exactly this.
        let mut settings = "listen_addresses = '127.0.0.1'\nmax_connections = 50\n".to_string();
        match tls {
            PgTls::Default => {}
            PgTls::Off => settings.push_str("ssl = off\n"),
            PgTls::On { cert_pem, key_pem } => {
                // In the cluster's conf dir, so Drop removes them with it;
                // the server refuses a key others may read.
                let cert = pg.conf_dir().join("server.crt");
                let key = pg.conf_dir().join("server.key");
                std::fs::write(&cert, cert_pem).expect("write server.crt");
                std::fs::write(&key, key_pem).expect("write server.key");
                let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
                run("chown", &["postgres:postgres", &cert, &key], &[]).await;
                run("chmod", &["600", &key], &[]).await;
                settings.push_str(&format!(
                    "ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n"
                ));
            }
        }
        let conf = pg.conf_dir().join("conf.d").join("faults.conf");
        std::fs::write(&conf, settings).expect("write conf.d/faults.conf");
        pg.ctl(&["start"]).await;
        pg.wait_ready(60).await;
        pg
    }

    fn conf_dir(&self) -> PathBuf {
        Path::new("/etc/postgresql")
            .join(&self.version)
            .join(&self.name)
    }

    /// `postgres://postgres@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// `pg_ctlcluster VERSION NAME args…`.
    pub async fn ctl(&self, args: &[&str]) -> String {
        let mut all = vec![
            "--skip-systemctl-redirect",
            self.version.as_str(),
            &self.name,
        ];
        all.extend_from_slice(args);
        run("pg_ctlcluster", &all, &[]).await
    }

    /// A fast restart (`-m fast`: sessions are disconnected, transactions
    /// in progress roll back), returning once it accepts connections again.
    pub async fn restart_fast(&self) {
        self.ctl(&["restart", "-m", "fast"]).await;
        self.wait_ready(60).await;
    }

    pub async fn stop_fast(&self) {
        self.ctl(&["stop", "-m", "fast"]).await;
    }

    pub async fn start_again(&self) {
        self.ctl(&["start"]).await;
        self.wait_ready(60).await;
    }

    /// Waits until the server accepts a session (not merely the socket).
    pub async fn wait_ready(&self, secs: u64) {
        let url = self.url("postgres");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(conn) = sqlx::PgConnection::connect(&url).await {
                let _ = conn.close().await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster {} not ready after {secs}s",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let (v, n) = (self.version.as_str(), self.name.as_str());
        if !run_quietly("pg_dropcluster", &[v, n, "--stop"], &[]) {
            run_quietly(
                "pg_ctlcluster",
                &["--skip-systemctl-redirect", v, n, "stop", "-m", "immediate"],
                &[],
            );
            run_quietly("pg_dropcluster", &[v, n], &[]);
        }
        // pg_dropcluster leaves files it did not write (our conf.d file).
        let _ = std::fs::remove_dir_all(self.conf_dir());
        let _ = std::fs::remove_dir_all(Path::new("/var/lib/postgresql").join(v).join(n));
        let _ = std::fs::remove_file(format!("/var/log/postgresql/postgresql-{v}-{n}.log"));
    }
}

const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// A RabbitMQ node of its own, run by root from the package's scripts (the
/// `/usr/sbin` wrappers would switch to the `rabbitmq` user), so it shares
/// root's Erlang cookie with the CLI and with other private nodes — which
/// is what a cluster of them needs. Everything it writes is under `dir`;
/// epmd is the machine's.
pub struct PrivateRabbit {
    pub node: String,
    pub port: u16,
    pub dist_port: u16,
    /// The `amqps://` port, when started with `start_with_tls`.
    pub tls_port: Option<u16>,
    pub dir: tempfile::TempDir,
    /// The node's OS process, killed on drop if a clean stop failed.
    pid: Option<u32>,
}

/// A TLS listener's server certificate (chain) and key, both PEM, and the
/// CA file the node names in `ssl_options.cacertfile`.
pub struct RabbitTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl PrivateRabbit {
    /// Starts a node and waits until it accepts AMQP connections.
    pub async fn start(tag: &str) -> PrivateRabbit {
        PrivateRabbit::start_node(tag, None).await
    }

    /// As `start`, with a TLS listener (`listeners.ssl.default`) on a port
    /// of its own besides the plain one. Clients are not asked for a
    /// certificate (`verify_none`): the tests are about the server's.
    pub async fn start_with_tls(tag: &str, tls: RabbitTls) -> PrivateRabbit {
        PrivateRabbit::start_node(tag, Some(tls)).await
    }

    async fn start_node(tag: &str, tls: Option<RabbitTls>) -> PrivateRabbit {
        let dir = tempfile::Builder::new()
            .prefix("payrecon-rabbit-")
            .tempdir()
            .expect("tempdir");
        let mut rabbit = PrivateRabbit {
            node: format!("{}@localhost", unique_name(tag)),
            port: free_port(),
            dist_port: free_port(),
            tls_port: tls.as_ref().map(|_| free_port()),
            dir,
            pid: None,
        };
        let mut config = format!(
            "listeners.tcp.local = 127.0.0.1:{}\nloopback_users.guest = true\n",
            rabbit.port
        );
        if let (Some(tls), Some(port)) = (tls, rabbit.tls_port) {
            config.push_str(&rabbit.tls_config(tls, port));
        }
        std::fs::write(rabbit.path("rabbitmq.conf"), config).expect("rabbitmq.conf");
        // No plugins (no management or prometheus ports) and none of
        // /etc/rabbitmq's settings, which name the shared node.
        std::fs::write(rabbit.path("enabled_plugins"), "[].\n").expect("enabled_plugins");
        std::fs::write(rabbit.path("rabbitmq-env.conf"), "").expect("rabbitmq-env.conf");
        run(
            &format!("{RABBITMQ_BIN}/rabbitmq-server"),
            &["-detached"],
            &rabbit.env(),
        )
        .await;
        // `wait` follows the pid file, then the distribution, then the boot.
        let pid_file = rabbit.path("rabbit.pid");
        let pid_file = pid_file.to_string_lossy();
        rabbit.ctl(&["wait", &pid_file, "--timeout", "120"]).await;
        rabbit.pid = std::fs::read_to_string(rabbit.path("rabbit.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        wait_listening(rabbit.port, 60).await;
        if let Some(port) = rabbit.tls_port {
            wait_listening(port, 60).await;
        }
        rabbit
    }

    /// Writes the PEM files into the node's directory (removed with it) and
    /// returns the `rabbitmq.conf` lines of the TLS listener.
    fn tls_config(&self, tls: RabbitTls, port: u16) -> String {
        let write = |file: &str, pem: &str| {
            let path = self.path(file);
            std::fs::write(&path, pem).unwrap_or_else(|e| panic!("{file}: {e}"));
            path.to_string_lossy().into_owned()
        };
        let ca = write("tls-ca.pem", &tls.ca_pem);
        let cert = write("tls-server.crt", &tls.cert_pem);
        let key = write("tls-server.key", &tls.key_pem);
        format!(
            "listeners.ssl.default = 127.0.0.1:{port}\n\
             ssl_options.cacertfile = {ca}\n\
             ssl_options.certfile = {cert}\n\
             ssl_options.keyfile = {key}\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n"
        )
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The environment every script needs to address this node.
    pub fn env(&self) -> Vec<(String, String)> {
        let path = |f: &str| self.path(f).to_string_lossy().into_owned();
        [
            ("RABBITMQ_NODENAME", self.node.clone()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", self.port.to_string()),
            ("RABBITMQ_DIST_PORT", self.dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE", path("mnesia")),
            ("RABBITMQ_LOG_BASE", path("log")),
            ("RABBITMQ_PID_FILE", path("rabbit.pid")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins")),
            ("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf")),
            ("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf")),
            // Distribution (the node's and each CLI's) on loopback only,
            // as the shared node is configured in /etc/rabbitmq.
            (
                "ERL_FLAGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".into(),
            ),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `amqps://guest:guest@HOST:TLS_PORT/%2f` (HOST as the certificate
    /// test wants it: `localhost` or `127.0.0.1`).
    pub fn amqps_url(&self, host: &str) -> String {
        let port = self.tls_port.expect("started with_tls");
        format!("amqps://guest:guest@{host}:{port}/%2f")
    }

    /// `rabbitmqctl -n NODE args…`.
    pub async fn ctl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.node.as_str()];
        all.extend_from_slice(args);
        run(&format!("{RABBITMQ_BIN}/rabbitmqctl"), &all, &self.env()).await
    }

    /// Stops the RabbitMQ application (every connection is closed, the
    /// port stops listening); the Erlang node stays up.
    pub async fn stop_app(&self) {
        self.ctl(&["stop_app"]).await;
    }

    /// Starts the application again and waits until it accepts AMQP.
    pub async fn start_app(&self) {
        self.ctl(&["start_app"]).await;
        self.ctl(&["await_startup", "--timeout", "120"]).await;
        wait_listening(self.port, 60).await;
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let ctl = format!("{RABBITMQ_BIN}/rabbitmqctl");
        run_quietly(
            &ctl,
            &["-n", &self.node, "stop", "--timeout", "30"],
            &self.env(),
        );
        // `stop` returns while the VM is still halting; the directory may
        // go only once the process has.
        if let Some(pid) = self.pid {
            let proc_dir = PathBuf::from(format!("/proc/{pid}"));
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while proc_dir.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            // Only if that pid is still our node, not a process that
            // reused the number.
            let name = self.node.split('@').next().unwrap_or(&self.node);
            let ours = std::fs::read(proc_dir.join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(name));
            if ours {
                run_quietly("kill", &["-KILL", &pid.to_string()], &[]);
            }
        }
        // The TempDir field removes the directory after this.
    }
}
