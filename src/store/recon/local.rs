//! The local side of one channel-day: the summary's status groups, the
//! orders paid in the day, the orders a bill batch mentions, the refunds.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::domain::recon::{LocalOrder, LocalRefund, StatusGroup};
use crate::domain::{Channel, Money, OrderId};
use crate::store::StoreError;

/// Orders of the channel created in `[from, to)`, grouped for the summary.
pub async fn status_groups(
    conn: &mut PgConnection,
    channel: Channel,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<StatusGroup>, StoreError> {
    let rows: Vec<(String, bool, i64, i64)> = sqlx::query_as(
        "SELECT status, payment_state = 'failed', count(*), COALESCE(sum(total_amount), 0)::bigint \
         FROM orders WHERE payment_method = $1 AND created_at >= $2 AND created_at < $3 \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(channel.as_str())
    .bind(from)
    .bind(to)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(status, prepay_failed, count, total)| {
            Ok(StatusGroup {
                status: status.parse().map_err(StoreError::Corrupt)?,
                prepay_failed,
                count,
                total,
            })
        })
        .collect()
}

#[derive(FromRow)]
struct LocalRow {
    order_id: Uuid,
    out_trade_no: String,
    status: String,
    total_amount: i64,
    paid_amount: i64,
    paid_at: Option<DateTime<Utc>>,
}

const LOCAL_COLUMNS: &str =
    "o.order_id, o.out_trade_no, o.status, o.total_amount, o.paid_amount, o.paid_at";

impl TryFrom<LocalRow> for LocalOrder {
    type Error = StoreError;
    fn try_from(r: LocalRow) -> Result<Self, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("order {}: {what}", r.order_id));
        let money = |v: i64| Money::from_fen(v).map_err(|e| corrupt(e.to_string()));
        Ok(LocalOrder {
            order_id: OrderId(r.order_id),
            status: r.status.parse().map_err(corrupt)?,
            total_amount: money(r.total_amount)?,
            paid_amount: money(r.paid_amount)?,
            out_trade_no: r.out_trade_no,
            paid_at: r.paid_at,
        })
    }
}

/// Which orders are "paid in the business day" (they must be in the bill):
/// $1 channel, [$2, $3) the day.
const PAID_IN_WINDOW: &str =
    "FROM orders o WHERE o.payment_method = $1 AND o.paid_at >= $2 AND o.paid_at < $3 \
       AND o.status IN ('paid', 'shipped', 'completed', 'refunded')";

/// How many orders [`paid_in_window`] will yield.
pub async fn paid_in_window_count(
    conn: &mut PgConnection,
    channel: Channel,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar(&format!("SELECT count(*) {PAID_IN_WINDOW}"))
            .bind(channel.as_str())
            .bind(from)
            .bind(to)
            .fetch_one(conn)
            .await?,
    )
}

/// The statement [`paid_in_window`] runs, built once: the stream borrows
/// its text for as long as it runs.
static PAID_IN_WINDOW_SELECT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {LOCAL_COLUMNS} {PAID_IN_WINDOW}"));

/// Orders of the channel paid in `[from, to)`, streamed: a day of a million
/// orders is never held as rows all at once, only as the matcher's keys.
pub fn paid_in_window(
    conn: &mut PgConnection,
    channel: Channel,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> impl futures::Stream<Item = Result<LocalOrder, StoreError>> + '_ {
    use futures::StreamExt;
    sqlx::query_as::<_, LocalRow>(PAID_IN_WINDOW_SELECT.as_str())
        .bind(channel.as_str())
        .bind(from)
        .bind(to)
        .fetch(conn)
        .map(|row| LocalOrder::try_from(row?))
}

/// The channel's orders among `out_trade_nos` (a bill's batch).
pub async fn orders_by_out_trade_no(
    conn: &mut PgConnection,
    channel: Channel,
    out_trade_nos: &[String],
) -> Result<Vec<LocalOrder>, StoreError> {
    // Our out_trade_no is the order id's hex: look up by the primary key (a
    // number that is not such hex cannot be one of ours).
    let ids: Vec<Uuid> = out_trade_nos
        .iter()
        .filter_map(|otn| crate::domain::OrderId::from_out_trade_no(otn))
        .map(|id| id.0)
        .collect();
    let rows: Vec<LocalRow> = sqlx::query_as(&format!(
        "SELECT {LOCAL_COLUMNS} FROM orders o WHERE o.payment_method = $1 AND o.order_id = ANY($2)"
    ))
    .bind(channel.as_str())
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(LocalOrder::try_from).collect()
}

/// Our refunds requested in `[from, to)` that reached the gateway (accepted
/// or succeeded), summed per order: the bill lists refunds by the day they
/// were initiated.
pub async fn refunds_in_window(
    conn: &mut PgConnection,
    channel: Channel,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<LocalRefund>, StoreError> {
    #[derive(FromRow)]
    struct Row {
        #[sqlx(flatten)]
        order: LocalRow,
        refunded: i64,
    }
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {LOCAL_COLUMNS}, sum(r.amount)::bigint AS refunded \
         FROM refunds r JOIN orders o ON o.order_id = r.order_id \
         WHERE o.payment_method = $1 AND r.created_at >= $2 AND r.created_at < $3 \
           AND r.status IN ('succeeded', 'processing') \
         GROUP BY o.order_id"
    ))
    .bind(channel.as_str())
    .bind(from)
    .bind(to)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let amount =
                Money::from_fen(r.refunded).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok(LocalRefund {
                order: LocalOrder::try_from(r.order)?,
                amount,
            })
        })
        .collect()
}
