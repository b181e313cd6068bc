//! The WeChat Pay adapter against a scripted stub: what it sends (signed,
//! canonical URL, body) and how it classifies every kind of answer.

use std::io::Write;
use std::time::Duration;

use chrono::Utc;
use payrecon::domain::Money;
use payrecon::gateway::crypto::{random_nonce, sha1_hex, RsaPrivateKey};
use payrecon::gateway::{
    CloseOutcome, Gateway, GatewayError, PrepayRequest, RefundRequest, RefundState, TradeState,
};
use serde_json::{json, Value};

use crate::stub::{refused_base_url, Answer, Request, Stub};
use crate::{private_key, public_key, vectors, wechat_at};

const SERIAL: &str = "PUB_KEY_ID_0114232134912410000000000000";

/// A 2xx answer signed the way WeChat signs (A2), by `key` with `serial`.
fn signed_by(status: u16, body: &str, key: &RsaPrivateKey, serial: &str) -> Answer {
    let ts = Utc::now().timestamp().to_string();
    let nonce = random_nonce(32);
    let sig = key
        .sign_sha256_base64(format!("{ts}\n{nonce}\n{body}\n").as_bytes())
        .unwrap();
    Answer::new(status, body.to_string())
        .header("Content-Type", "application/json")
        .header("Wechatpay-Timestamp", &ts)
        .header("Wechatpay-Nonce", &nonce)
        .header("Wechatpay-Signature", &sig)
        .header("Wechatpay-Serial", serial)
        .header("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048")
}

fn signed(status: u16, body: &str) -> Answer {
    signed_by(status, body, &private_key("test_rsa_private.pem"), SERIAL)
}

fn error(status: u16, code: &str) -> Answer {
    Answer::new(status, json!({"code": code, "message": "stub"}).to_string())
}

/// Checks the request's Authorization as WeChat would (A1): order-independent
/// fields, the five-line message over the path and query as received.
fn authorized(req: &Request) -> bool {
    let Some(auth) = req.header("authorization") else {
        return false;
    };
    let Some(fields) = auth.strip_prefix("WECHATPAY2-SHA256-RSA2048 ") else {
        return false;
    };
    let field = |name: &str| {
        fields.split(',').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.trim_matches('"').to_string())
        })
    };
    let (Some(ts), Some(nonce), Some(sig)) =
        (field("timestamp"), field("nonce_str"), field("signature"))
    else {
        return false;
    };
    let message = format!(
        "{}\n{}\n{ts}\n{nonce}\n{}\n",
        req.method,
        req.path_and_query,
        req.text()
    );
    field("mchid").as_deref() == Some("1900000001")
        && req.header("wechatpay-serial") == Some(SERIAL)
        && public_key("test_rsa_public.pem").verify_sha256_base64(message.as_bytes(), &sig)
}

/// A stub that refuses unsigned requests with 401 SIGN_ERROR, like WeChat.
async fn wechat_stub(script: impl Fn(&Request, &str) -> Answer + Send + Sync + 'static) -> Stub {
    Stub::start(move |req, base| {
        if !authorized(req) {
            return error(401, "SIGN_ERROR");
        }
        script(req, base)
    })
    .await
}

fn prepay_request() -> PrepayRequest {
    PrepayRequest {
        out_trade_no: "0b0d3ec4c2bd4c4f8f4ad1e7a5d6f111".into(),
        amount: Money::from_fen(3998).unwrap(),
        description: "Order 0b0d3ec4".into(),
        notify_url: "http://127.0.0.1:8080/notify/wechat_pay".into(),
        expires_at: "2026-11-25T12:30:00Z".parse().unwrap(),
    }
}

/// What an error must look like.
type Expect = fn(&GatewayError) -> bool;

#[tokio::test]
async fn prepay_is_signed_and_its_answer_verified() {
    let stub =
        wechat_stub(|_, _| signed(200, r#"{"code_url":"weixin://wxpay/bizpayurl?pr=abc"}"#)).await;
    let gw = wechat_at(
        &stub.base_url,
        "test_rsa_public.pem",
        Duration::from_secs(2),
    );
    let prepared = gw.prepay(&prepay_request()).await.unwrap();
    assert_eq!(
        prepared.prepay,
        json!({"code_url": "weixin://wxpay/bizpayurl?pr=abc"})
    );
    let sent = &stub.requests()[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path_and_query, "/v3/pay/transactions/native");
    let body: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(body["amount"], json!({"total": 3998, "currency": "CNY"}));
    assert_eq!(body["time_expire"], "2026-11-25T20:30:00+08:00");
    assert_eq!(body["mchid"], "1900000001");
    assert_eq!(body["appid"], vectors()["wechat"]["config"]["appid"]);
    assert_eq!(
        body["notify_url"],
        "http://127.0.0.1:8080/notify/wechat_pay"
    );
}

#[tokio::test]
async fn an_unverifiable_success_is_unknown() {
    let other = private_key("other_rsa_private.pem");
    let ok = r#"{"code_url":"weixin://x"}"#;
    for answer in [
        signed_by(200, ok, &other, SERIAL),
        signed_by(
            200,
            ok,
            &private_key("test_rsa_private.pem"),
            "PUB_KEY_ID_OTHER",
        ),
        Answer::new(200, ok),
    ] {
        let answer = std::sync::Mutex::new(Some(answer));
        let stub = wechat_stub(move |_, _| answer.lock().unwrap().take().unwrap()).await;
        let gw = wechat_at(
            &stub.base_url,
            "test_rsa_public.pem",
            Duration::from_secs(2),
        );
        let err = gw.prepay(&prepay_request()).await.unwrap_err();
        assert!(err.is_unknown_outcome(), "{err:?}");
    }
}

#[tokio::test]
async fn failures_are_classified_at_the_failure_site() {
    let cases: Vec<(Answer, Expect)> = vec![
        (error(500, "SYSTEM_ERROR"), |e| {
            matches!(e, GatewayError::Unknown(_))
        }),
        (error(503, "SYSTEM_ERROR"), |e| {
            matches!(e, GatewayError::Unknown(_))
        }),
        (error(429, "FREQUENCY_LIMITED"), |e| {
            matches!(e, GatewayError::Transient(_))
        }),
        (
            error(400, "PARAM_ERROR"),
            |e| matches!(e, GatewayError::Business { code, .. } if code == "PARAM_ERROR"),
        ),
        (signed(200, "{}").delayed(Duration::from_secs(3)), |e| {
            matches!(e, GatewayError::Unknown(_))
        }),
    ];
    for (answer, expected) in cases {
        let answer = std::sync::Mutex::new(Some(answer));
        let stub = wechat_stub(move |_, _| answer.lock().unwrap().take().unwrap()).await;
        let gw = wechat_at(
            &stub.base_url,
            "test_rsa_public.pem",
            Duration::from_millis(500),
        );
        let err = gw.prepay(&prepay_request()).await.unwrap_err();
        assert!(expected(&err), "{err:?}");
    }
    let gw = wechat_at(
        &refused_base_url().await,
        "test_rsa_public.pem",
        Duration::from_secs(1),
    );
    let err = gw.query("T1").await.unwrap_err();
    assert!(matches!(err, GatewayError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn query_and_close_settle_by_state() {
    // Close refused with a code we do not know; the query says it was paid.
    let stub = wechat_stub(|req, _| match req.method.as_str() {
        "POST" => error(400, "ORDER_PAID"),
        _ => signed(
            200,
            r#"{"trade_state":"SUCCESS","transaction_id":"42","amount":{"total":3998},"success_time":"2026-11-25T20:00:00+08:00"}"#,
        ),
    })
    .await;
    let gw = wechat_at(
        &stub.base_url,
        "test_rsa_public.pem",
        Duration::from_secs(2),
    );
    let CloseOutcome::AlreadyPaid(status) = gw.close("T1").await.unwrap() else {
        panic!("expected AlreadyPaid");
    };
    assert_eq!(status.state, TradeState::Paid);
    assert_eq!(status.transaction_id.as_deref(), Some("42"));
    let paths: Vec<_> = stub
        .requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(
        paths,
        [
            "/v3/pay/transactions/out-trade-no/T1/close",
            "/v3/pay/transactions/out-trade-no/T1?mchid=1900000001"
        ]
    );

    let stub = wechat_stub(|req, _| match req.method.as_str() {
        "POST" => signed(204, ""),
        _ => error(404, "ORDER_NOT_EXIST"),
    })
    .await;
    let gw = wechat_at(
        &stub.base_url,
        "test_rsa_public.pem",
        Duration::from_secs(2),
    );
    assert_eq!(gw.close("T2").await.unwrap(), CloseOutcome::Closed);
    assert_eq!(gw.query("T2").await.unwrap().state, TradeState::NotFound);

    // Close failed with a 5xx and the trade is still payable: the error stands.
    let stub = wechat_stub(|req, _| match req.method.as_str() {
        "POST" => error(500, "SYSTEM_ERROR"),
        _ => signed(200, r#"{"trade_state":"NOTPAY","amount":{"total":3998}}"#),
    })
    .await;
    let gw = wechat_at(
        &stub.base_url,
        "test_rsa_public.pem",
        Duration::from_secs(2),
    );
    assert!(gw.close("T3").await.unwrap_err().is_unknown_outcome());
}

#[tokio::test]
async fn refunds_and_refund_queries() {
    let stub = wechat_stub(|req, _| match req.method.as_str() {
        "POST" => signed(
            200,
            r#"{"refund_id":"503","out_refund_no":"R1","status":"PROCESSING","amount":{"refund":1000,"total":3998}}"#,
        ),
        _ if req.path_and_query.ends_with("/R1") => signed(
            200,
            r#"{"refund_id":"503","out_refund_no":"R1","status":"SUCCESS","amount":{"refund":1000,"total":3998}}"#,
        ),
        _ => error(404, "RESOURCE_NOT_EXISTS"),
    })
    .await;
    let gw = wechat_at(
        &stub.base_url,
        "test_rsa_public.pem",
        Duration::from_secs(2),
    );
    let req = RefundRequest {
        out_trade_no: "T1".into(),
        out_refund_no: "R1".into(),
        amount: Money::from_fen(1000).unwrap(),
        total: Money::from_fen(3998).unwrap(),
        reason: "退货".into(),
        notify_url: "http://127.0.0.1:8080/notify/wechat_pay".into(),
    };
    let accepted = gw.refund(&req).await.unwrap();
    assert_eq!(accepted.state, RefundState::Processing);
    assert_eq!(accepted.gateway_refund_id.as_deref(), Some("503"));
    let sent: Value = serde_json::from_slice(&stub.requests()[0].body).unwrap();
    assert_eq!(
        sent["amount"],
        json!({"refund": 1000, "total": 3998, "currency": "CNY"})
    );
    assert_eq!(sent["out_refund_no"], "R1");
    let done = gw.query_refund("T1", "R1").await.unwrap();
    assert_eq!(done.state, RefundState::Succeeded);
    assert_eq!(done.amount, Some(Money::from_fen(1000).unwrap()));
    assert_eq!(
        gw.query_refund("T1", "R2").await.unwrap().state,
        RefundState::NotFound
    );
}

#[tokio::test]
async fn bill_is_downloaded_with_its_digest() {
    let bill = "交易时间,公众账号ID\n`2024-01-01 12:00:00,`wx\n"
        .as_bytes()
        .to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&bill).unwrap();
    let gz = gz.finish().unwrap();
    let digest = sha1_hex(&bill).to_uppercase();
    let stub = wechat_stub(move |req, base| {
        if req
            .path_and_query
            .starts_with("/v3/bill/tradebill?bill_date=2024-01-01&bill_type=ALL&tar_type=GZIP")
        {
            let url = format!("{base}/v3/billdownload/file?token=t0k");
            signed(
                200,
                &json!({"hash_type":"SHA1","hash_value":digest,"download_url":url}).to_string(),
            )
        } else if req.path_and_query == "/v3/billdownload/file?token=t0k" {
            // Unsigned on purpose: WeChat does not sign bill files (A2).
            Answer::new(200, gz.clone())
        } else {
            error(400, "NO_STATEMENT_EXIST")
        }
    })
    .await;
    let gw = wechat_at(
        &stub.base_url,
        "test_rsa_public.pem",
        Duration::from_secs(2),
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("bill.gz");
    let date = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    let got = gw.download_bill(date, &dest).await.unwrap();
    let mut plain = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&dest).unwrap()),
        &mut plain,
    )
    .unwrap();
    assert_eq!(plain, bill);
    assert_eq!(got.expected_sha1, Some(sha1_hex(&bill)));
    let other = chrono::NaiveDate::from_ymd_opt(2024, 1, 2).unwrap();
    assert_eq!(
        gw.download_bill(other, &dest).await,
        Err(GatewayError::NoBill)
    );
}
