//! Test support: a fresh database per test, orders through the store API,
//! bills written in the gateways' real formats, and a scripted gateway for
//! the one call reconciliation makes (the query before a repair).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use payrecon::config::{DatabaseSettings, Secret};
use payrecon::domain::{
    format_signed_yuan, Channel, LineItem, Money, NewOrder, Order, OrderId, OrderStatus,
    PaymentState, RefundId,
};
use payrecon::gateway::{
    CloseOutcome, DownloadedBill, Gateway, GatewayError, Headers, Notification, NotificationError,
    PaymentStatus, Prepared, PrepayRequest, RefundRequest, RefundStatus,
};
use payrecon::jobs::reconcile::ReconContext;
use payrecon::store;
use sqlx::{Connection, PgConnection, PgPool};

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct TestDb {
    pub pool: PgPool,
    name: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = format!("payrecon_test_{}", uuid::Uuid::new_v4().simple());
        let settings = DatabaseSettings {
            url: Secret(format!("postgres://postgres@127.0.0.1:5432/{name}")),
            max_connections: 5,
            password_file: String::new(),
        };
        let pool = store::connect(&settings).await.expect("connect");
        TestDb { pool, name }
    }

    pub async fn drop_db(self) {
        self.pool.close().await;
        let mut admin = PgConnection::connect(ADMIN_URL).await.expect("admin");
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .expect("drop");
    }
}

pub fn offset() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).unwrap()
}

pub fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()
}

/// A time of the business day, in +08:00.
pub fn at(h: u32, m: u32) -> DateTime<Utc> {
    offset()
        .from_local_datetime(&day().and_hms_opt(h, m, 0).unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

pub fn fen(v: i64) -> Money {
    Money::from_fen(v).unwrap()
}

/// What an order should look like after its history.
#[derive(Clone, Copy)]
pub enum Local {
    Pending,
    PrepayFailed,
    Paid(i64),
    Cancelled,
}

/// Inserts an order of `total` fen created at 10:00 of the day, then moves it.
pub async fn order(pool: &PgPool, channel: Channel, total: i64, state: Local) -> Order {
    let new = NewOrder {
        order_id: OrderId::generate(),
        user_id: "u1".into(),
        items: vec![LineItem {
            product_id: "p1".into(),
            quantity: 1,
            unit_price: fen(total),
        }],
        payment_method: channel,
        pay_timeout: chrono::Duration::minutes(30),
    };
    let mut o = Order::place(new, at(10, 0)).unwrap();
    let mut conn = pool.acquire().await.unwrap();
    assert!(store::orders::insert(&mut conn, &o).await.unwrap());
    o.payment_state = PaymentState::Prepared;
    match state {
        Local::Pending => {}
        Local::PrepayFailed => o.payment_state = PaymentState::Failed,
        Local::Paid(amount) => {
            let tx = format!("TX{}", &o.out_trade_no()[..12]);
            o.mark_paid(&tx, fen(amount), at(10, 5)).unwrap();
        }
        Local::Cancelled => o.cancel("timeout", at(10, 31)).unwrap(),
    }
    store::orders::update(&mut conn, &o, OrderStatus::PendingPayment)
        .await
        .unwrap();
    o
}

/// Records a succeeded refund of `amount` requested at 15:00 of the day.
pub async fn refund(pool: &PgPool, o: &mut Order, amount: i64) {
    let mut conn = pool.acquire().await.unwrap();
    let r = store::refunds::Refund {
        refund_id: RefundId::new_random(),
        order_id: o.order_id,
        amount: fen(amount),
        reason: "test".into(),
        status: store::refunds::RefundStatus::Succeeded,
        gateway_refund_id: Some("RF".into()),
        request_id: None,
        created_at: at(15, 0),
    };
    assert!(store::refunds::insert(&mut conn, &r).await.unwrap());
    let before = o.status;
    o.record_refund(fen(amount)).unwrap();
    store::orders::update(&mut conn, o, before).await.unwrap();
}

/// One row of a bill to write.
#[derive(Clone, Debug)]
pub struct Row {
    pub out_trade_no: String,
    pub transaction_id: String,
    pub refund: bool,
    pub amount: i64,
}

pub fn pay(otn: &str, amount: i64) -> Row {
    Row {
        out_trade_no: otn.into(),
        transaction_id: format!("42000{}", &otn[..otn.len().min(12)]),
        refund: false,
        amount,
    }
}

pub fn refund_row(otn: &str, amount: i64) -> Row {
    Row {
        refund: true,
        ..pay(otn, amount)
    }
}

/// The 0.6% fee in 10^-5 yuan: fen × 6 (exact).
fn wechat_fee(fen: i64) -> i64 {
    fen * 6
}

/// WeChat Pay's ALL trade bill (docs/gateways.md A5), written independently of the parser.
pub fn wechat_bill(rows: &[Row]) -> String {
    let mut out = String::from("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\n");
    let y = |f: i64| format_signed_yuan(f, 2);
    let (mut settle, mut refunds, mut fees) = (0, 0, 0);
    for r in rows {
        let (state, settlement, refund, fee, order, applied, refund_ids) = if r.refund {
            (
                "REFUND",
                0,
                r.amount,
                -wechat_fee(r.amount),
                0,
                r.amount,
                ("50300000001", "RF1", "ORIGINAL", "SUCCESS"),
            )
        } else {
            (
                "SUCCESS",
                r.amount,
                0,
                wechat_fee(r.amount),
                r.amount,
                0,
                ("0", "0", "", ""),
            )
        };
        settle += settlement;
        refunds += refund;
        fees += fee;
        out.push_str(&format!(
            "`2026-11-24 10:05:00,`wxd930ea5d5a258f4f,`1900000001,`0,`,`{},`{},`openid,`NATIVE,`{state},`OTHERS,`CNY,`{},`0.00,`{},`{},`{},`0.00,`{},`{},`goods,`,`{},`0.60%,`{},`{},`\n",
            r.transaction_id, r.out_trade_no, y(settlement), refund_ids.0, refund_ids.1, y(refund),
            refund_ids.2, refund_ids.3, format_signed_yuan(fee, 5), y(order), y(applied)
        ));
    }
    out.push_str("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\n");
    out.push_str(&format!(
        "`{},`{},`{},`0.00,`{},`{},`{}\n",
        rows.len(),
        y(settle),
        y(refunds),
        format_signed_yuan(fees, 5),
        y(settle),
        y(refunds)
    ));
    out
}

/// Alipay's 业务明细 (docs/gateways.md B4) as GBK bytes.
pub fn alipay_bill(rows: &[Row]) -> Vec<u8> {
    let mut out = String::from("#支付宝业务明细查询\n#账号：[20880000000000000156]\n#起始日期：[2026年11月24日 00:00:00]   终止日期：[2026年11月25日 00:00:00]\n#-----------------------------------------业务明细列表----------------------------------------\n");
    out.push_str("支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注\n");
    let (mut pays, mut refunds) = (0, 0);
    for r in rows {
        // 0.6% service fee in fen, exact for the amounts the tests use.
        let fee = r.amount * 6 / 1000;
        let (kind, amount, fee, batch) = if r.refund {
            refunds += 1;
            ("退款", -r.amount, fee, "RF001")
        } else {
            pays += 1;
            ("交易", r.amount, -fee, "")
        };
        let y = |f: i64| format_signed_yuan(f, 2);
        out.push_str(&format!(
            "{}\t,{}\t,{kind}\t,商品,2026-11-24 10:00:00,2026-11-24 10:05:00,\t,\t,\t,\t,*三(159****5620)\t,{},{},0.00,0.00,0.00,0.00,0.00,,0.00\t,0.00,{batch}\t,{},0.00,\n",
            r.transaction_id, r.out_trade_no, y(amount), y(amount), y(fee)
        ));
    }
    out.push_str("#-----------------------------------------业务明细列表结束------------------------------------\n");
    out.push_str(&format!("#交易合计：{pays}笔，商家实收共0.00元，商家优惠共0.00元\n#退款合计：{refunds}笔，商家实收退款共0.00元，商家优惠退款共0.00元\n#导出时间：[2026年11月25日 05:46:49]\n"));
    encoding_rs::GBK.encode(&out).0.into_owned()
}

/// A zip as Alipay serves it: GBK entry names without the UTF-8 flag. The
/// zip crate flags every non-ASCII name, so the entry is written under an
/// ASCII name of the same length whose bytes are then swapped for GBK.
pub fn alipay_zip(csv_gbk: &[u8]) -> Vec<u8> {
    let names = [
        "20880000000000000156_20261124_业务明细(汇总).csv",
        "20880000000000000156_20261124_业务明细.csv",
    ];
    let gbk: Vec<Vec<u8>> = names
        .iter()
        .map(|n| encoding_rs::GBK.encode(n).0.into_owned())
        .collect();
    let placeholders: Vec<String> = gbk
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{:_<width$}", format!("N{i}"), width = b.len()))
        .collect();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file(placeholders[0].as_str(), options).unwrap();
    zip.write_all(&encoding_rs::GBK.encode("门店编号,门店名称\n").0)
        .unwrap();
    zip.start_file(placeholders[1].as_str(), options).unwrap();
    zip.write_all(csv_gbk).unwrap();
    let mut bytes = zip.finish().unwrap().into_inner();
    for (ph, name) in placeholders.iter().zip(&gbk) {
        let ph = ph.as_bytes();
        let mut i = 0;
        let mut swapped = 0;
        while i + ph.len() <= bytes.len() {
            if &bytes[i..i + ph.len()] == ph {
                bytes[i..i + ph.len()].copy_from_slice(name);
                swapped += 1;
            }
            i += 1;
        }
        assert_eq!(swapped, 2, "local and central header");
    }
    bytes
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// A gateway whose query answers and bill are scripted: reconciliation's
/// only calls are the bill download and the query before a repair.
#[derive(Default)]
pub struct ScriptedGateway {
    pub channel: Option<Channel>,
    pub queries: Mutex<HashMap<String, PaymentStatus>>,
    pub queried: Mutex<Vec<String>>,
    /// File bytes and announced SHA1 for `download_bill`; None → NoBill.
    pub bill: Mutex<Option<(Vec<u8>, Option<String>)>>,
    /// When set, the download waits for a permit (a run held mid-way).
    pub hold: Option<Arc<tokio::sync::Notify>>,
}

#[async_trait]
impl Gateway for ScriptedGateway {
    fn channel(&self) -> Channel {
        self.channel.unwrap_or(Channel::WechatPay)
    }
    async fn prepay(&self, _: &PrepayRequest) -> Result<Prepared, GatewayError> {
        Err(GatewayError::Protocol("not scripted".into()))
    }
    async fn query(&self, otn: &str) -> Result<PaymentStatus, GatewayError> {
        self.queried.lock().unwrap().push(otn.to_string());
        self.queries
            .lock()
            .unwrap()
            .get(otn)
            .cloned()
            .ok_or_else(|| GatewayError::Business {
                code: "ORDER_NOT_EXIST".into(),
                message: otn.into(),
            })
    }
    async fn close(&self, _: &str) -> Result<CloseOutcome, GatewayError> {
        Err(GatewayError::Protocol("not scripted".into()))
    }
    async fn refund(&self, _: &RefundRequest) -> Result<RefundStatus, GatewayError> {
        Err(GatewayError::Protocol("not scripted".into()))
    }
    async fn query_refund(&self, _: &str, _: &str) -> Result<RefundStatus, GatewayError> {
        Err(GatewayError::Protocol("not scripted".into()))
    }
    async fn download_bill(
        &self,
        _: NaiveDate,
        dest: &Path,
    ) -> Result<DownloadedBill, GatewayError> {
        if let Some(hold) = &self.hold {
            hold.notified().await;
        }
        match self.bill.lock().unwrap().clone() {
            Some((bytes, sha1)) => {
                std::fs::write(dest, bytes).map_err(|e| GatewayError::Protocol(e.to_string()))?;
                Ok(DownloadedBill {
                    expected_sha1: sha1,
                })
            }
            None => Err(GatewayError::NoBill),
        }
    }
    fn verify_notification(
        &self,
        _: &Headers,
        _: &[u8],
        _: DateTime<Utc>,
    ) -> Result<Notification, NotificationError> {
        Err(NotificationError::Malformed("not scripted".into()))
    }
}

pub fn context(pool: &PgPool, channel: Channel, gw: Arc<ScriptedGateway>) -> ReconContext {
    let mut gateways: HashMap<Channel, Arc<dyn Gateway>> = HashMap::new();
    gateways.insert(channel, gw);
    ReconContext {
        pool: pool.clone(),
        gateways,
        business_offset: offset(),
        progress: None,
    }
}

/// Events in the outbox of one type, as JSON.
pub async fn events(pool: &PgPool, kind: &str) -> Vec<serde_json::Value> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT payload FROM outbox WHERE routing_key = $1 ORDER BY id")
            .bind(kind)
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(p,)| serde_json::from_str(&p).unwrap())
        .collect()
}
