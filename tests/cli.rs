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
