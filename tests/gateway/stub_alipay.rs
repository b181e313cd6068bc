//! The Alipay adapter against a scripted stub: the signed form it sends, the
//! node signature it checks, and how each answer code is classified.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use payrecon::domain::Money;
use payrecon::gateway::alipay::sign as ali_sign;
use payrecon::gateway::{
    CloseOutcome, Gateway, GatewayError, PrepayRequest, RefundRequest, RefundState, TradeState,
};
use serde_json::{json, Value};

use crate::alipay_at;
use crate::stub::{Answer, Request, Stub};
use crate::{private_key, public_key};

/// The request's parameters, after checking its RSA2 signature as Alipay would.
fn verified_params(req: &Request) -> Option<BTreeMap<String, String>> {
    let params: BTreeMap<String, String> = url::form_urlencoded::parse(&req.body)
        .into_owned()
        .collect();
    let sign = params.get("sign")?;
    let content = ali_sign::sign_content(
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &["sign"],
    );
    public_key("test_rsa_public.pem")
        .verify_sha256_base64(content.as_bytes(), sign)
        .then_some(params)
}

/// `{"<node>":{…},"sign":"…"}` signed over the node text as written.
fn answer(method: &str, node: Value) -> Answer {
    let node_name = ali_sign::response_node_name(method);
    let text = node.to_string();
    let sign = private_key("test_rsa_private.pem")
        .sign_sha256_base64(text.as_bytes())
        .unwrap();
    Answer::new(200, format!(r#"{{"{node_name}":{text},"sign":"{sign}"}}"#))
}

fn fail(method: &str, sub_code: &str) -> Answer {
    answer(
        method,
        json!({"code":"40004","msg":"Business Failed","sub_code":sub_code,"sub_msg":"stub"}),
    )
}

/// Answers by method after verifying the request; an unsigned request gets
/// Alipay's unsigned `error_response`.
async fn alipay_stub(
    script: impl Fn(&str, &Value, &BTreeMap<String, String>, &str) -> Answer + Send + Sync + 'static,
) -> Stub {
    Stub::start(move |req, base| {
        let Some(params) = verified_params(req) else {
            return Answer::new(
                200,
                r#"{"error_response":{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-signature"}}"#,
            );
        };
        let biz: Value = serde_json::from_str(&params["biz_content"]).unwrap();
        script(&params["method"], &biz, &params, base)
    })
    .await
}

fn gateway(stub: &Stub) -> payrecon::gateway::alipay::Alipay {
    alipay_at(
        &format!("{}/gateway.do", stub.base_url),
        "test_rsa_public.pem",
        Duration::from_millis(800),
    )
}

/// What an error must look like.
type Expect = fn(&GatewayError) -> bool;

#[tokio::test]
async fn precreate_sends_a_signed_form_in_yuan() {
    let stub = alipay_stub(|method, _, _, _| {
        answer(method, json!({"code":"10000","msg":"Success","out_trade_no":"T1","qr_code":"https://qr.alipay.com/bax01"}))
    })
    .await;
    let gw = gateway(&stub);
    let prepared = gw
        .prepay(&PrepayRequest {
            out_trade_no: "T1".into(),
            amount: Money::from_fen(3998).unwrap(),
            description: "Order T1".into(),
            notify_url: "http://127.0.0.1:8080/notify/alipay".into(),
            expires_at: "2026-11-25T12:30:00Z".parse().unwrap(),
        })
        .await
        .unwrap();
    assert_eq!(
        prepared.prepay,
        json!({"qr_code": "https://qr.alipay.com/bax01"})
    );
    let params = verified_params(&stub.requests()[0]).unwrap();
    assert_eq!(params["method"], "alipay.trade.precreate");
    assert_eq!(params["app_id"], "2021000000000001");
    assert_eq!(params["sign_type"], "RSA2");
    assert_eq!(params["charset"], "utf-8");
    assert_eq!(params["version"], "1.0");
    assert_eq!(params["notify_url"], "http://127.0.0.1:8080/notify/alipay");
    assert!(
        chrono::NaiveDateTime::parse_from_str(&params["timestamp"], "%Y-%m-%d %H:%M:%S").is_ok()
    );
    let biz: Value = serde_json::from_str(&params["biz_content"]).unwrap();
    assert_eq!(biz["total_amount"], "39.98");
    assert_eq!(biz["time_expire"], "2026-11-25 20:30:00");
}

#[tokio::test]
async fn untrusted_and_failed_answers_are_classified() {
    let cases: Vec<(&str, Expect)> = vec![
        ("unsigned", |e| matches!(e, GatewayError::Unknown(_))),
        ("forged", |e| matches!(e, GatewayError::Unknown(_))),
        ("20000", |e| matches!(e, GatewayError::Unknown(_))),
        ("system", |e| matches!(e, GatewayError::Unknown(_))),
        ("40005", |e| matches!(e, GatewayError::Transient(_))),
        ("500", |e| matches!(e, GatewayError::Unknown(_))),
        ("hang", |e| matches!(e, GatewayError::Unknown(_))),
        ("bad_amount", |e| matches!(e, GatewayError::Protocol(_))),
        (
            "closed",
            |e| matches!(e, GatewayError::Business { code, .. } if code == "ACQ.TRADE_HAS_CLOSE"),
        ),
    ];
    for (case, expected) in cases {
        let stub = alipay_stub(move |method, _, _, _| match case {
            "unsigned" => Answer::new(200, r#"{"alipay_trade_query_response":{"code":"10000","trade_status":"TRADE_SUCCESS"}}"#),
            "forged" => {
                let mut a = answer(method, json!({"code":"10000","trade_status":"TRADE_SUCCESS","total_amount":"1.00"}));
                a.body = String::from_utf8(a.body).unwrap().replace("1.00", "9.00").into_bytes();
                a
            }
            "20000" => answer(method, json!({"code":"20000","msg":"Service Currently Unavailable","sub_code":"isp.unknow-error"})),
            "system" => fail(method, "ACQ.SYSTEM_ERROR"),
            "40005" => answer(method, json!({"code":"40005","msg":"Call Limited"})),
            "500" => Answer::new(500, "busy"),
            "hang" => answer(method, json!({"code":"10000"})).delayed(Duration::from_secs(3)),
            "bad_amount" => answer(method, json!({"code":"10000","trade_status":"TRADE_SUCCESS","total_amount":"1.5"})),
            _ => fail(method, "ACQ.TRADE_HAS_CLOSE"),
        })
        .await;
        let err = gateway(&stub).query("T1").await.unwrap_err();
        assert!(expected(&err), "{case}: {err:?}");
    }
}

#[tokio::test]
async fn query_close_and_refunds() {
    let stub = alipay_stub(|method, biz, _, _| match (method, biz["out_trade_no"].as_str()) {
        ("alipay.trade.query", Some("NEW")) => fail(method, "ACQ.TRADE_NOT_EXIST"),
        ("alipay.trade.query", Some("REFUNDED")) => answer(method, json!({"code":"10000","trade_no":"A2","trade_status":"TRADE_CLOSED","total_amount":"10.00","send_pay_date":"2026-11-25 20:00:00"})),
        ("alipay.trade.query", _) => answer(method, json!({"code":"10000","trade_no":"A1","trade_status":"TRADE_SUCCESS","total_amount":"39.98","send_pay_date":"2026-11-25 20:00:00"})),
        ("alipay.trade.close", Some("NEW")) => fail(method, "ACQ.TRADE_NOT_EXIST"),
        ("alipay.trade.close", _) => fail(method, "ACQ.TRADE_STATUS_ERROR"),
        ("alipay.trade.refund", _) => answer(method, json!({"code":"10000","trade_no":"A1","fund_change":"Y","refund_fee":"10.00"})),
        ("alipay.trade.fastpay.refund.query", _) if biz["out_request_no"] == "R1" => answer(method, json!({"code":"10000","out_request_no":"R1","refund_status":"REFUND_SUCCESS","refund_amount":"10.00","total_amount":"39.98"})),
        ("alipay.trade.fastpay.refund.query", _) => answer(method, json!({"code":"10000","out_request_no":"R9"})),
        _ => fail(method, "ACQ.INVALID_PARAMETER"),
    })
    .await;
    let gw = gateway(&stub);
    assert_eq!(gw.query("NEW").await.unwrap().state, TradeState::NotFound);
    let paid = gw.query("T1").await.unwrap();
    assert_eq!(paid.state, TradeState::Paid);
    assert_eq!(paid.amount, Some(Money::from_fen(3998).unwrap()));
    assert_eq!(
        paid.paid_at.unwrap().to_rfc3339(),
        "2026-11-25T12:00:00+00:00"
    );
    assert_eq!(
        gw.query("REFUNDED").await.unwrap().state,
        TradeState::Refunded
    );
    assert_eq!(gw.close("NEW").await.unwrap(), CloseOutcome::Closed);
    assert!(
        matches!(gw.close("T1").await.unwrap(), CloseOutcome::AlreadyPaid(s) if s.transaction_id.as_deref() == Some("A1"))
    );

    let refund = gw
        .refund(&RefundRequest {
            out_trade_no: "T1".into(),
            out_refund_no: "R1".into(),
            amount: Money::from_fen(1000).unwrap(),
            total: Money::from_fen(3998).unwrap(),
            reason: String::new(),
            notify_url: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(refund.state, RefundState::Succeeded);
    let sent = stub
        .requests()
        .into_iter()
        .filter_map(|r| verified_params(&r))
        .find(|p| p["method"] == "alipay.trade.refund")
        .unwrap();
    let biz: Value = serde_json::from_str(&sent["biz_content"]).unwrap();
    assert_eq!(
        (
            biz["refund_amount"].as_str(),
            biz["out_request_no"].as_str()
        ),
        (Some("10.00"), Some("R1"))
    );
    assert!(!sent.contains_key("notify_url"));
    let done = gw.query_refund("T1", "R1").await.unwrap();
    assert_eq!(
        (done.state, done.amount),
        (RefundState::Succeeded, Some(Money::from_fen(1000).unwrap()))
    );
    assert_eq!(
        gw.query_refund("T1", "R9").await.unwrap().state,
        RefundState::NotFound
    );
}

#[tokio::test]
async fn bills_are_fetched_or_absent() {
    let mut zip_bytes = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut zip_bytes);
        zip.start_file(
            "2088_20240101_detail.csv",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        zip.write_all(b"#bill\n").unwrap();
        zip.finish().unwrap();
    }
    let zip_bytes = zip_bytes.into_inner();
    let served = zip_bytes.clone();
    let stub = Stub::start(move |req, base| {
        // The zip itself is a plain GET of the announced URL, outside gateway.do.
        if req.method == "GET" {
            return Answer::new(200, served.clone());
        }
        let params = verified_params(req).unwrap();
        let method = params["method"].as_str();
        let biz: Value = serde_json::from_str(&params["biz_content"]).unwrap();
        match biz["bill_date"].as_str() {
            Some("2024-01-01") => answer(
                method,
                json!({"code":"10000","bill_download_url":format!("{base}/bill.zip?token=1")}),
            ),
            Some("2024-01-02") => answer(
                method,
                json!({"code":"10000","bill_file_code":"EMPTY_DATA_WITH_BILL_FILE"}),
            ),
            _ => fail(method, "isp.bill_not_exist"),
        }
    })
    .await;
    let gw = gateway(&stub);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("bill.zip");
    let day = |d| chrono::NaiveDate::from_ymd_opt(2024, 1, d).unwrap();
    let got = gw.download_bill(day(1), &dest).await.unwrap();
    assert_eq!(got.expected_sha1, None);
    assert_eq!(std::fs::read(&dest).unwrap(), zip_bytes);
    assert_eq!(
        gw.download_bill(day(2), &dest).await,
        Err(GatewayError::NoBill)
    );
    assert_eq!(
        gw.download_bill(day(3), &dest).await,
        Err(GatewayError::NoBill)
    );
}
