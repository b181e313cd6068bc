//! A fresh database per test, and orders to feed the timeout job.

use chrono::{DateTime, Duration, Utc};
use payrecon::config::{DatabaseSettings, Secret};
use payrecon::domain::{Channel, LineItem, Money, NewOrder, Order, OrderId, PaymentState};
use payrecon::store;
use sqlx::{Connection, PgConnection, PgPool};

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct TestDb {
    pub name: String,
    pub pool: PgPool,
    finished: bool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = format!("payrecon_test_{}", uuid::Uuid::new_v4().simple());
        let pool = store::connect(&settings(&name))
            .await
            .expect("create test database");
        TestDb {
            name,
            pool,
            finished: false,
        }
    }

    /// Another "daemon" on the same database: its own pool.
    pub async fn second_pool(&self) -> PgPool {
        store::connect(&settings(&self.name))
            .await
            .expect("connect again")
    }

    /// Closes the pools and drops the database.
    pub async fn finish(mut self, others: &[PgPool]) {
        for p in others {
            p.close().await;
        }
        self.pool.close().await;
        drop_database(&self.name).await;
        self.finished = true;
    }
}

impl Drop for TestDb {
    /// A test that failed before `finish`: drop its database anyway, from a
    /// thread with its own runtime (the test's may be unwinding).
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_database(&name));
            }
        })
        .join();
    }
}

async fn drop_database(name: &str) {
    let Ok(mut admin) = PgConnection::connect(ADMIN_URL).await else {
        return;
    };
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await;
    let _ = admin.close().await;
}

fn settings(name: &str) -> DatabaseSettings {
    DatabaseSettings {
        url: Secret(format!("postgres://postgres@127.0.0.1:5432/{name}")),
        max_connections: 8,
        password_file: String::new(),
    }
}

pub fn fen(v: i64) -> Money {
    Money::from_fen(v).expect("amount")
}

/// An order placed at `created_at` that expires `timeout` later.
pub fn order(
    channel: Channel,
    created_at: DateTime<Utc>,
    timeout: Duration,
    state: PaymentState,
) -> Order {
    let mut o = Order::place(
        NewOrder {
            order_id: OrderId::generate(),
            user_id: "u1".into(),
            items: vec![LineItem {
                product_id: "p1".into(),
                quantity: 2,
                unit_price: fen(1999),
            }],
            payment_method: channel,
            pay_timeout: timeout,
        },
        created_at,
    )
    .expect("valid order");
    o.payment_state = state;
    o
}

pub async fn insert(pool: &PgPool, o: &Order) {
    let mut conn = pool.acquire().await.expect("connection");
    assert!(store::orders::insert(&mut conn, o)
        .await
        .expect("insert order"));
}

pub async fn load(pool: &PgPool, id: OrderId) -> Order {
    let mut conn = pool.acquire().await.expect("connection");
    store::orders::get(&mut conn, id)
        .await
        .expect("load")
        .expect("order exists")
}

/// Events in the outbox as parsed JSON, oldest first.
pub async fn events(pool: &PgPool) -> Vec<serde_json::Value> {
    let rows: Vec<String> = sqlx::query_scalar("SELECT payload FROM outbox ORDER BY id")
        .fetch_all(pool)
        .await
        .expect("outbox");
    rows.iter()
        .map(|p| serde_json::from_str(p).expect("event JSON"))
        .collect()
}

pub fn events_of<'a>(
    events: &'a [serde_json::Value],
    kind: &str,
    id: OrderId,
) -> Vec<&'a serde_json::Value> {
    let id = id.to_string();
    events
        .iter()
        .filter(|e| e["type"] == kind && e["data"]["order"]["order_id"] == id.as_str())
        .collect()
}
