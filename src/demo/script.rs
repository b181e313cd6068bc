//! What happens in the demo, step by step: 200 orders on both channels, most
//! paid, some left to time out, some still pending, one payment with a
//! tampered amount and one forged notification, shipping, receipts and
//! refunds, then the day's reconciliation of both channels.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use chrono::Utc;
use futures::StreamExt;
use serde_json::{json, Value};

use super::bill::{Edits, WechatBill};
use super::tap::Tap;
use crate::app::Daemon;
use crate::config::Settings;
use crate::domain::recon::Report;
use crate::domain::{Channel, OrderId};
use crate::gateway::factory::build_gateways;
use crate::jobs::reconcile::{run_reconciliation, BillSource, ReconContext, RunOutcome};
use crate::jobs::report;
use crate::messaging::topology::Names;

const ORDERS: usize = 200;
const PAID: usize = 170;
/// 170..180 prepared and left unpaid, 180..190 never prepared: both time out.
const TIMEOUT_PREPARED: std::ops::Range<usize> = 170..180;
const TIMEOUT_UNPREPARED: std::ops::Range<usize> = 180..190;
/// 190..200 prepared and still pending at the end (one long timeout).
const PENDING: std::ops::Range<usize> = 190..200;
/// A pending WeChat Pay order whose buyer pays a tampered amount.
const TAMPERED: usize = 190;

struct Order {
    id: OrderId,
    channel: Channel,
    unit_price: i64,
    quantity: i64,
    /// quantity × unit_price, as payrecon computes it.
    total: i64,
}

fn plan() -> Vec<Order> {
    (0..ORDERS)
        .map(|i| {
            let channel = if i % 2 == 0 {
                Channel::WechatPay
            } else {
                Channel::Alipay
            };
            let unit = 990 + (i as i64 * 137) % 5000;
            let quantity = 1 + (i as i64 % 3);
            Order {
                id: OrderId::generate(),
                channel,
                unit_price: unit,
                quantity,
                total: unit * quantity,
            }
        })
        .collect()
}

fn timeout_s(i: usize) -> i64 {
    match i {
        i if TIMEOUT_PREPARED.contains(&i) => 8,
        i if TIMEOUT_UNPREPARED.contains(&i) => 3,
        i if PENDING.contains(&i) => 3600,
        _ => 600,
    }
}

fn step(title: &str) -> Instant {
    println!("\n▸ {title}");
    Instant::now()
}

fn done(t: Instant, what: String) {
    println!("  {what} ({:.1} s)", t.elapsed().as_secs_f64());
}

pub async fn play(s: &Settings, d: &Daemon, out: &Path) -> anyhow::Result<()> {
    let names = Names::new(&s.amqp.prefix);
    let mut tap = Tap::connect(&s.amqp, names).await?;
    let sim = d
        .simulator_base_url
        .clone()
        .context("the demo needs the in-process simulator")?;
    let base = format!("http://{}", d.http_addr);
    let http = reqwest::Client::new();
    let orders = plan();

    let t = step("An upstream shop places 200 orders (order.place), half WeChat Pay, half Alipay");
    for (i, o) in orders.iter().enumerate() {
        let data = json!({
            "order_id": o.id.to_string(), "user_id": format!("buyer-{}", i % 37),
            "items": [{"product_id": format!("sku-{}", i % 11), "quantity": o.quantity, "unit_price": o.unit_price}],
            "currency": "CNY", "payment_method": o.channel.as_str(), "pay_timeout_s": timeout_s(i),
        });
        tap.request("order.place", data).await?;
    }
    tap.wait_for(&["order.created"], ORDERS, 60).await?;
    done(t, format!("{} × order.created", tap.count("order.created")));

    let t = step("190 buyers ask to pay (payment.request); payrecon prepays at the gateway");
    let to_prepare = (0..PAID).chain(TIMEOUT_PREPARED).chain(PENDING);
    let n_prepare = PAID + TIMEOUT_PREPARED.len() + PENDING.len();
    for i in to_prepare {
        let o = &orders[i];
        let data = json!({"order_id": o.id.to_string(), "amount": o.total, "payment_method": o.channel.as_str()});
        tap.request("payment.request", data).await?;
    }
    let prepay_outcomes = ["payment.prepared", "payment.failed", "request.rejected"];
    tap.wait_for(&prepay_outcomes, n_prepare, 60).await?;
    done(
        t,
        format!(
            "{} × payment.prepared (QR codes / prepay ids), {} × payment.failed",
            tap.count("payment.prepared"),
            tap.count("payment.failed")
        ),
    );

    let t = step(
        "170 buyers pay at the simulator; it posts signed notifications to payrecon's HTTP ingress",
    );
    let paid = pay_all(&http, &sim, &orders[..PAID]).await;
    tap.wait_for(&["order.paid"], paid, 60).await?;
    done(
        t,
        format!(
            "{paid} paid at the gateway → {} × order.paid",
            tap.count("order.paid")
        ),
    );

    let t = step(
        "One buyer's payment arrives with a tampered amount; one forged notification is posted",
    );
    let o = &orders[TAMPERED];
    sim_pay(&http, &sim, o, Some(o.total + 100)).await?;
    tap.wait_for(&["payment.anomaly"], 1, 30).await?;
    let forged = forge(&http, &base).await?;
    done(t, format!("payment.anomaly ({}), the order stays unpaid; the forged one was refused with HTTP {forged}", tap.seen["payment.anomaly"][0]["data"]["kind"].as_str().unwrap_or("?")));

    let t = step(
        "The shop ships 60 orders, 30 buyers confirm receipt, 10 orders are refunded (5 in part)",
    );
    for o in &orders[..60] {
        tap.request("order.ship", json!({"order_id": o.id.to_string(), "carrier": "SF", "tracking_no": format!("SF{}", &o.id.out_trade_no()[..10])})).await?;
    }
    tap.wait_for(&["order.shipped"], 60, 30).await?;
    for o in &orders[..30] {
        tap.request(
            "order.confirm_receipt",
            json!({"order_id": o.id.to_string()}),
        )
        .await?;
    }
    for (k, o) in orders[100..110].iter().enumerate() {
        let amount = if k < 5 { o.total / 2 } else { o.total };
        tap.request("refund.request", json!({"order_id": o.id.to_string(), "amount": amount, "reason": "buyer changed their mind"})).await?;
    }
    tap.wait_for(&["order.completed"], 30, 30).await?;
    tap.wait_for(&["refund.succeeded", "refund.failed"], 10, 60)
        .await?;
    tap.wait_for(&["order.refunded"], 5, 30).await?;
    done(
        t,
        format!(
            "{} shipped, {} completed, {} refunds succeeded, {} orders fully refunded",
            tap.count("order.shipped"),
            tap.count("order.completed"),
            tap.count("refund.succeeded"),
            tap.count("order.refunded")
        ),
    );

    let t = step("20 orders were left unpaid: the timeout job (every second here) cancels them, closing prepared payments at the gateway");
    tap.wait_for(
        &["order.cancelled"],
        TIMEOUT_PREPARED.len() + TIMEOUT_UNPREPARED.len(),
        60,
    )
    .await?;
    done(
        t,
        format!(
            "{} × order.cancelled (reason timeout)",
            tap.count("order.cancelled")
        ),
    );

    let t = step("Reconciliation of today's business day against each gateway's bill");
    // The gateways' business day is Beijing's.
    let beijing = chrono::FixedOffset::east_opt(8 * 3600).context("UTC+8")?;
    let date = Utc::now().with_timezone(&beijing).date_naive();
    let ctx = ReconContext::from_settings(s, d.pool.clone(), build_gateways(s, Some(&sim))?);
    let bill_path = out.join(format!("bill-wechat_pay-{date}.csv"));
    let text = http
        .get(format!("{sim}/sim/bill?channel=wechat_pay&date={date}"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut bill = WechatBill::parse(&text)?;
    bill.apply(&Edits {
        amount_mismatch: orders[120].id.out_trade_no(),
        missing_gateway: orders[122].id.out_trade_no(),
        duplicate: orders[124].id.out_trade_no(),
        refund_mismatch: orders[100].id.out_trade_no(),
        paid_after_cancel: (orders[180].id.out_trade_no(), orders[180].total),
        missing_local: OrderId::generate().out_trade_no(),
    })?;
    std::fs::write(&bill_path, bill.render()?)?;
    println!(
        "  WeChat Pay: the simulator's bill with one discrepancy of each kind written in: {}",
        bill_path.display()
    );
    let wechat = reconcile(
        &ctx,
        Channel::WechatPay,
        date,
        BillSource::File(bill_path),
        out,
    )
    .await?;
    let alipay = reconcile(&ctx, Channel::Alipay, date, BillSource::Gateway, out).await?;
    tap.wait_for(&["recon.completed"], 2, 30).await?;
    done(t, "two runs completed (recon.completed × 2)".into());
    tell_run(&wechat);
    tell_run(&alipay);

    tap.drain(300).await;
    let mut kinds: Vec<(&String, usize)> = tap.seen.iter().map(|(k, v)| (k, v.len())).collect();
    kinds.sort();
    println!("\nEvents published on {}.events:", s.amqp.prefix);
    for (k, n) in kinds {
        println!("  {k:<20} {n}");
    }
    println!(
        "\nReports in {}: report-<channel>.html, .csv, .json",
        out.display()
    );
    tap.close().await;
    Ok(())
}

async fn pay_all(http: &reqwest::Client, sim: &str, orders: &[Order]) -> usize {
    futures::stream::iter(orders)
        .map(|o| sim_pay(http, sim, o, None))
        .buffer_unordered(16)
        .filter(|r| futures::future::ready(r.is_ok()))
        .count()
        .await
}

/// A buyer pays at the simulator (docs/contract.md §5 `POST /sim/pay`).
async fn sim_pay(
    http: &reqwest::Client,
    sim: &str,
    o: &Order,
    amount: Option<i64>,
) -> anyhow::Result<Value> {
    let mut body = json!({"channel": o.channel.as_str(), "out_trade_no": o.id.out_trade_no()});
    if let Some(a) = amount {
        body["amount"] = json!(a);
    }
    let resp = http
        .post(format!("{sim}/sim/pay"))
        .json(&body)
        .send()
        .await?;
    Ok(resp.error_for_status()?.json().await?)
}

/// A notification no gateway signed, as an attacker would post it.
async fn forge(http: &reqwest::Client, base: &str) -> anyhow::Result<u16> {
    let body = r#"{"id":"forged","event_type":"TRANSACTION.SUCCESS","resource":{"algorithm":"AEAD_AES_256_GCM","ciphertext":"Zm9yZ2Vk","nonce":"0123456789ab","associated_data":"transaction"}}"#;
    let resp = http
        .post(format!("{base}/notify/wechat_pay"))
        .header("Wechatpay-Signature", "Zm9yZ2VkIHNpZ25hdHVyZQ==")
        .header("Wechatpay-Timestamp", Utc::now().timestamp().to_string())
        .header("Wechatpay-Nonce", "demo-forged-nonce")
        .header(
            "Wechatpay-Serial",
            "PUB_KEY_ID_0114232134912410000000000000",
        )
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

async fn reconcile(
    ctx: &ReconContext,
    channel: Channel,
    date: chrono::NaiveDate,
    source: BillSource,
    out: &Path,
) -> anyhow::Result<Report> {
    let RunOutcome::Completed(r) = run_reconciliation(ctx, channel, date, source, "demo").await?
    else {
        anyhow::bail!("another reconciliation of {} was running", channel.as_str());
    };
    let stem = out.join(format!("report-{}", channel.as_str()));
    std::fs::write(stem.with_extension("html"), report::render_html(&r))?;
    std::fs::write(stem.with_extension("csv"), report::render_csv(&r))?;
    std::fs::write(stem.with_extension("json"), report::render_json(&r))?;
    Ok(*r)
}

fn tell_run(r: &Report) {
    let Some(s) = &r.run.summary else { return };
    println!(
        "  {}: {} orders, {} paid, bill {} payments, {} matched, {} discrepancies",
        r.run.channel.as_str(),
        s.order_count,
        s.paid_count,
        s.bill_count,
        s.matched_count,
        s.discrepancy_count
    );
    for (category, n) in &s.discrepancies_by_category {
        if *n > 0 {
            let resolved: Vec<&str> = r
                .discrepancies
                .iter()
                .filter(|d| d.category.as_str() == category)
                .map(|d| d.resolution.as_str())
                .collect();
            println!("    {category:<18} {n}  ({})", resolved.join(", "));
        }
    }
}
