//! The command line's contract: `migrate`, `order show` and their exit codes.

mod common;

use std::process::Command;

use common::TestEnv;
use payrecon::domain::{Channel, LineItem, Money, NewOrder, Order, OrderId};

fn payrecon(env: &TestEnv) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrecon"));
    cmd.env(
        "PAYRECON__DATABASE__URL",
        env.settings.database.url.expose(),
    )
    .env("PAYRECON__AMQP__PREFIX", &env.name)
    .env("RUST_LOG", "warn");
    cmd
}

/// `payrecon run` on `env`, answering on `http`, its simulator on a free
/// port, its stderr in `log`.
fn run_command(env: &TestEnv, http: &str, log: &std::path::Path) -> Command {
    let mut cmd = payrecon(env);
    cmd.arg("run")
        .env("PAYRECON__HTTP__LISTEN", http)
        .env(
            "PAYRECON__SIMULATOR__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("PAYRECON__SIMULATOR__KEYS_DIR", env.keys_dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_then_order_show() {
    let env = TestEnv::new("cli");
    let out = payrecon(&env).arg("migrate").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pool = payrecon::store::connect(&env.settings.database)
        .await
        .unwrap();
    let order = Order::place(
        NewOrder {
            order_id: OrderId::generate(),
            user_id: "u9".into(),
            items: vec![LineItem {
                product_id: "p".into(),
                quantity: 3,
                unit_price: Money::from_fen(250).unwrap(),
            }],
            payment_method: Channel::Alipay,
            pay_timeout: chrono::Duration::minutes(5),
        },
        chrono::Utc::now(),
    )
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    payrecon::store::orders::insert(&mut conn, &order)
        .await
        .unwrap();
    drop(conn);
    pool.close().await;

    let out = payrecon(&env)
        .args(["order", "show", &order.order_id.to_string(), "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON order");
    assert_eq!(json["order_id"], order.order_id.to_string());
    assert_eq!(json["total_amount"], 750);
    assert_eq!(json["status"], "pending_payment");
    assert_eq!(json["payment_method"], "alipay");

    let table = payrecon(&env)
        .args(["order", "show", &order.order_id.to_string()])
        .output()
        .unwrap();
    assert_eq!(table.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&table.stdout).contains("pending_payment"));

    let missing = payrecon(&env)
        .args(["order", "show", &OrderId::generate().to_string(), "--json"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(3));
    let garbage = payrecon(&env)
        .args(["order", "show", "not-a-uuid"])
        .output()
        .unwrap();
    assert_eq!(garbage.status.code(), Some(3));
}

#[test]
fn a_bad_config_names_the_key_and_exits_1() {
    let env = TestEnv::new("clicfg");
    let out = payrecon(&env)
        .env("PAYRECON__RETRY__BASE_DELAY", "soon")
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("base_delay"), "{err}");

    let live = payrecon(&env)
        .env("PAYRECON__GATEWAYS__ALIPAY__MODE", "live")
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(live.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&live.stderr).contains("gateways.alipay.base_url"));
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The one line a failed command prints: what to fix, not a chain of causes.
fn one_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr).trim().to_string();
    assert_eq!(text.lines().count(), 1, "not one line:\n{text}");
    text
}

#[test]
fn migrate_against_a_closed_port_names_host_and_port() {
    let env = TestEnv::new("cliport");
    let port = free_port();
    let out = payrecon(&env)
        .env(
            "PAYRECON__DATABASE__URL",
            format!("postgres://postgres@127.0.0.1:{port}/nowhere"),
        )
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = one_line(&out.stderr);
    assert!(
        err.contains(&format!("PostgreSQL is not reachable at 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("database.url"), "{err}");
}

#[test]
fn a_bad_duration_in_a_config_file_names_the_key_and_the_file() {
    let env = TestEnv::new("clidur");
    let file = env.keys_dir.path().join("payrecon.toml");
    std::fs::write(&file, "[retry]\nmax_attempts = 3\nbase_delay = \"soon\"\n").unwrap();
    let out = payrecon(&env)
        .arg("--config")
        .arg(&file)
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = one_line(&out.stderr);
    assert!(err.contains("retry.base_delay"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("soon"), "{err}");

    let env_out = payrecon(&env)
        .env("PAYRECON__ORDERS__PAY_TIMEOUT", "30 minutes")
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(env_out.status.code(), Some(1));
    let err = one_line(&env_out.stderr);
    assert!(err.contains("orders.pay_timeout"), "{err}");
    assert!(err.contains("PAYRECON__ORDERS__PAY_TIMEOUT"), "{err}");
}

/// `payrecon run` with a broker that refuses it keeps retrying, and says
/// on each attempt what is wrong: here the password, then the address.
#[test]
fn run_says_why_the_broker_refuses() {
    let env = TestEnv::new("clibroker");
    let cases = [
        (
            "amqp://guest:Wrong-Broker-Pw-91c2@127.0.0.1:5672/%2f".to_string(),
            "RabbitMQ at 127.0.0.1:5672 refused the login of user guest: wrong user or password"
                .to_string(),
        ),
        {
            let port = free_port();
            (
                format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
                format!("RabbitMQ is not reachable at 127.0.0.1:{port}"),
            )
        },
    ];
    for (url, expected) in cases {
        let log = env.keys_dir.path().join("run.log");
        let http = format!("127.0.0.1:{}", free_port());
        let mut child = run_command(&env, &http, &log)
            .env("PAYRECON__AMQP__URL", &url)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut text = String::new();
        while !text.contains(&expected) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(200));
            text = std::fs::read_to_string(&log).unwrap_or_default();
        }
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = child.wait().unwrap();
        assert!(text.contains(&expected), "never said {expected:?}:\n{text}");
        assert!(!text.contains("Wrong-Broker-Pw"), "{text}");
        assert_eq!(status.code(), Some(0), "{text}");
    }
}

/// The status line of `GET /readyz` at `addr`, or None while nothing answers.
fn readyz(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(s, "GET /readyz HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines().next().map(str::to_string)
}

/// The broker password from a file (`amqp.password_file`, as a mounted
/// secret, set through the environment): a wrong one is refused with the
/// one-line login error and never shown; the right one runs. A missing file
/// stops startup naming the key and the path.
#[test]
fn the_broker_password_comes_from_a_file() {
    let env = TestEnv::new("clipwfile");
    let pw_file = env.keys_dir.path().join("amqp-password");
    // The URL's own password is wrong: only the file's can make it run.
    let url = "amqp://guest:Url-Pw-Not-Used-5d@127.0.0.1:5672/%2f";
    for (password, runs) in [("File-Pw-Wrong-7e3a\n", false), ("guest\n", true)] {
        std::fs::write(&pw_file, password).unwrap();
        let log = env.keys_dir.path().join("pwfile.log");
        let http = format!("127.0.0.1:{}", free_port());
        let mut child = run_command(&env, &http, &log)
            .env("PAYRECON__AMQP__URL", url)
            .env("PAYRECON__AMQP__PASSWORD_FILE", &pw_file)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        let refused = "RabbitMQ at 127.0.0.1:5672 refused the login of user guest: \
                       wrong user or password";
        let mut ready = false;
        while std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            ready = readyz(&http).is_some_and(|l| l.contains(" 200"));
            if (runs && ready) || (!runs && said.contains(refused)) {
                break;
            }
        }
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = child.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if runs {
            assert!(ready, "never ready with the file's password:\n{text}");
            assert!(!text.contains("refused the login"), "{text}");
        } else {
            let line = text
                .lines()
                .find(|l| l.contains(refused))
                .unwrap_or_else(|| panic!("never said {refused:?}:\n{text}"));
            assert!(!line.contains("File-Pw-Wrong"), "{line}");
            assert!(!ready, "ready with a wrong password:\n{text}");
        }
        for secret in ["File-Pw-Wrong", "Url-Pw-Not-Used"] {
            assert!(!text.contains(secret), "{secret} in:\n{text}");
        }
        assert_eq!(status.code(), Some(0), "{text}");
    }

    let missing = env.keys_dir.path().join("no-such-password");
    let out = payrecon(&env)
        .env("PAYRECON__AMQP__PASSWORD_FILE", &missing)
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = one_line(&out.stderr);
    assert!(err.contains("amqp.password_file"), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
}
