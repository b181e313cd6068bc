//! Round trips against the gateway simulator: the adapters built by the
//! factory in `simulator` mode, the simulator's signed answers, its signed
//! notifications (received by a stub and verified by the adapter), its bills
//! and its injected faults.

use std::time::Duration;

use chrono::Utc;
use payrecon::domain::{Channel, Money};
use payrecon::gateway::{CloseOutcome, GatewayError, Notification, RefundState, TradeState};
use serde_json::json;

use crate::sim_harness::{business_day, otn, refund_request, start};

#[tokio::test]
async fn wechat_pay_round_trip() {
    let sim = start().await;
    let gw = sim.gw(Channel::WechatPay);
    let no = otn();
    let prepared = gw
        .prepay(&sim.prepay_request(Channel::WechatPay, &no, 3998))
        .await
        .unwrap();
    assert!(prepared.prepay["code_url"]
        .as_str()
        .unwrap()
        .starts_with("weixin://"));
    // The same out_trade_no again is the same payment (a retried prepay).
    gw.prepay(&sim.prepay_request(Channel::WechatPay, &no, 3998))
        .await
        .unwrap();
    assert_eq!(gw.query(&no).await.unwrap().state, TradeState::NotPaid);
    assert_eq!(gw.query(&otn()).await.unwrap().state, TradeState::NotFound);

    let transaction_id = sim.pay(Channel::WechatPay, &no).await;
    let paid = gw.query(&no).await.unwrap();
    assert_eq!(paid.state, TradeState::Paid);
    assert_eq!(
        paid.transaction_id.as_deref(),
        Some(transaction_id.as_str())
    );
    assert_eq!(paid.amount, Some(Money::from_fen(3998).unwrap()));
    assert!(paid.paid_at.is_some());
    let Notification::Payment {
        out_trade_no,
        transaction_id: notified_id,
        amount,
        ..
    } = sim.notification(Channel::WechatPay, 0).await
    else {
        panic!("expected a payment notification");
    };
    assert_eq!(
        (out_trade_no, notified_id, amount),
        (no.clone(), transaction_id, Money::from_fen(3998).unwrap())
    );

    // A partial refund, then the rest.
    let mut partial = refund_request(&no, &otn(), 1000, 3998);
    partial.notify_url = format!("{}/notify/wechat_pay", sim.receiver.base_url);
    let accepted = gw.refund(&partial).await.unwrap();
    assert!(matches!(
        accepted.state,
        RefundState::Succeeded | RefundState::Processing
    ));
    assert_eq!(accepted.amount, Some(Money::from_fen(1000).unwrap()));
    let refund_id = accepted.gateway_refund_id.clone().unwrap();
    let queried = gw.query_refund(&no, &partial.out_refund_no).await.unwrap();
    assert_eq!(queried.gateway_refund_id, Some(refund_id));
    assert!(matches!(
        queried.state,
        RefundState::Succeeded | RefundState::Processing
    ));
    assert_eq!(
        gw.query_refund(&no, &otn()).await.unwrap().state,
        RefundState::NotFound
    );
    let Notification::Refund {
        out_refund_no,
        amount,
        ..
    } = sim.notification(Channel::WechatPay, 1).await
    else {
        panic!("expected a refund notification");
    };
    assert_eq!(out_refund_no, partial.out_refund_no);
    assert_eq!(amount, Some(Money::from_fen(1000).unwrap()));
    gw.refund(&refund_request(&no, &otn(), 2998, 3998))
        .await
        .unwrap();
    // More than what is left is a final business answer.
    let too_much = gw.refund(&refund_request(&no, &otn(), 1, 3998)).await;
    assert!(
        matches!(too_much, Err(GatewayError::Business { .. })),
        "{too_much:?}"
    );
    assert_eq!(gw.query(&no).await.unwrap().state, TradeState::Refunded);

    // Today's bill: gzip, with the digest WeChat announced over its content.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("wechat.csv.gz");
    let bill = gw.download_bill(business_day(), &dest).await.unwrap();
    let mut plain = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&dest).unwrap()),
        &mut plain,
    )
    .unwrap();
    assert_eq!(
        bill.expected_sha1,
        Some(payrecon::gateway::crypto::sha1_hex(&plain))
    );
    assert!(String::from_utf8(plain).unwrap().contains(&no));
    let tomorrow = business_day() + chrono::Duration::days(1);
    assert_eq!(
        gw.download_bill(tomorrow, &dest).await,
        Err(GatewayError::NoBill)
    );
}

#[tokio::test]
async fn closing_settles_on_the_trade_state() {
    let sim = start().await;
    for channel in Channel::ALL {
        let gw = sim.gw(channel);
        let unpaid = otn();
        gw.prepay(&sim.prepay_request(channel, &unpaid, 500))
            .await
            .unwrap();
        assert_eq!(
            gw.close(&unpaid).await.unwrap(),
            CloseOutcome::Closed,
            "{channel}"
        );
        let paid = otn();
        gw.prepay(&sim.prepay_request(channel, &paid, 500))
            .await
            .unwrap();
        let transaction_id = sim.pay(channel, &paid).await;
        let CloseOutcome::AlreadyPaid(status) = gw.close(&paid).await.unwrap() else {
            panic!("{channel}: a paid trade must not close");
        };
        assert_eq!(status.state, TradeState::Paid);
        assert_eq!(status.transaction_id, Some(transaction_id));
        assert_eq!(status.amount, Some(Money::from_fen(500).unwrap()));
        // Closing a payment that never existed is closed too.
        assert_eq!(
            gw.close(&otn()).await.unwrap(),
            CloseOutcome::Closed,
            "{channel}"
        );
    }
    // WeChat closes for real; Alipay's unscanned precreate has no trade yet.
    let gw = sim.gw(Channel::WechatPay);
    let no = otn();
    gw.prepay(&sim.prepay_request(Channel::WechatPay, &no, 500))
        .await
        .unwrap();
    gw.close(&no).await.unwrap();
    assert_eq!(gw.query(&no).await.unwrap().state, TradeState::Closed);
}

#[tokio::test]
async fn alipay_round_trip() {
    let sim = start().await;
    let gw = sim.gw(Channel::Alipay);
    let no = otn();
    let prepared = gw
        .prepay(&sim.prepay_request(Channel::Alipay, &no, 8888))
        .await
        .unwrap();
    assert!(prepared.prepay["qr_code"].as_str().is_some());
    // No trade exists until the buyer scans.
    assert_eq!(gw.query(&no).await.unwrap().state, TradeState::NotFound);
    sim.control(
        "/sim/scan",
        json!({"channel": "alipay", "out_trade_no": no}),
    )
    .await;
    assert_eq!(gw.query(&no).await.unwrap().state, TradeState::NotPaid);

    let trade_no = sim.pay(Channel::Alipay, &no).await;
    let paid = gw.query(&no).await.unwrap();
    assert_eq!(paid.state, TradeState::Paid);
    assert_eq!(paid.transaction_id.as_deref(), Some(trade_no.as_str()));
    assert_eq!(paid.amount, Some(Money::from_fen(8888).unwrap()));
    assert_eq!(
        sim.notification(Channel::Alipay, 0).await,
        Notification::Payment {
            out_trade_no: no.clone(),
            transaction_id: trade_no,
            amount: Money::from_fen(8888).unwrap(),
            paid_at: paid.paid_at.unwrap(),
        }
    );

    let partial = refund_request(&no, &otn(), 1000, 8888);
    let done = gw.refund(&partial).await.unwrap();
    assert_eq!(done.state, RefundState::Succeeded);
    assert_eq!(done.amount, Some(Money::from_fen(1000).unwrap()));
    // The same out_request_no again moves no money: learn the result by query.
    let again = gw.refund(&partial).await.unwrap();
    assert!(matches!(
        again.state,
        RefundState::Succeeded | RefundState::Processing
    ));
    let queried = gw.query_refund(&no, &partial.out_refund_no).await.unwrap();
    assert_eq!(
        (queried.state, queried.amount),
        (RefundState::Succeeded, Some(Money::from_fen(1000).unwrap()))
    );
    assert_eq!(
        gw.query_refund(&no, &otn()).await.unwrap().state,
        RefundState::NotFound
    );
    gw.refund(&refund_request(&no, &otn(), 7888, 8888))
        .await
        .unwrap();
    assert_eq!(gw.query(&no).await.unwrap().state, TradeState::Refunded);

    // Today's bill: a zip whose entries hold our trade.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("alipay.zip");
    let bill = gw.download_bill(business_day(), &dest).await.unwrap();
    assert_eq!(bill.expected_sha1, None);
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&dest).unwrap()).unwrap();
    let mut found = false;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        found |= String::from_utf8_lossy(&bytes).contains(&no);
    }
    assert!(found, "the bill does not mention {no}");
    let tomorrow = business_day() + chrono::Duration::days(1);
    assert_eq!(
        gw.download_bill(tomorrow, &dest).await,
        Err(GatewayError::NoBill)
    );
}

#[tokio::test]
async fn injected_faults_are_unknown_outcomes() {
    let sim = start().await;
    for channel in Channel::ALL {
        let gw = sim.gw(channel);
        sim.faults(json!({"channel": channel, "error_rate": 1.0}))
            .await;
        let err = gw.query(&otn()).await.unwrap_err();
        assert!(err.is_unknown_outcome(), "{channel}: {err:?}");
        sim.faults(json!({})).await;

        sim.faults(json!({"channel": channel, "fail_next": 1}))
            .await;
        let no = otn();
        let err = gw
            .prepay(&sim.prepay_request(channel, &no, 100))
            .await
            .unwrap_err();
        assert!(err.is_unknown_outcome(), "{channel}: {err:?}");
        // fail_next answered without taking effect; the retry goes through.
        gw.prepay(&sim.prepay_request(channel, &no, 100))
            .await
            .unwrap();
    }
    // A hang past the client timeout: unknown, although the call took effect.
    sim.faults(json!({"channel": "wechat_pay", "timeout_rate": 1.0}))
        .await;
    let gw = sim.gw(Channel::WechatPay);
    let no = otn();
    let started = std::time::Instant::now();
    let err = gw
        .prepay(&sim.prepay_request(Channel::WechatPay, &no, 100))
        .await
        .unwrap_err();
    assert!(err.is_unknown_outcome(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(7));
    sim.faults(json!({})).await;
    assert_eq!(gw.query(&no).await.unwrap().state, TradeState::NotPaid);
}

/// The simulator's deliberate forgeries (WeChat's `WECHATPAY/SIGNTEST/`
/// probe, a forged Alipay `sign`) are refused, and a tampered amount is
/// reported exactly as paid, for the worker to compare with the order.
#[tokio::test]
async fn probes_are_refused_and_tampered_amounts_reported() {
    let sim = start().await;
    for (i, channel) in Channel::ALL.into_iter().enumerate() {
        let url = format!("{}/notify/{channel}", sim.receiver.base_url);
        sim.control("/sim/probe", json!({"channel": channel, "url": url}))
            .await;
        let probe = sim.receiver.requests()[2 * i].clone();
        let headers = probe
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let verdict = sim
            .gw(channel)
            .verify_notification(&headers, &probe.body, Utc::now());
        assert!(
            matches!(
                verdict,
                Err(payrecon::gateway::NotificationError::BadSignature(_))
            ),
            "{channel}: {verdict:?}"
        );

        let no = otn();
        sim.gw(channel)
            .prepay(&sim.prepay_request(channel, &no, 3998))
            .await
            .unwrap();
        sim.control(
            "/sim/pay",
            json!({"channel": channel, "out_trade_no": no, "amount": 1}),
        )
        .await;
        let Notification::Payment { amount, .. } = sim.notification(channel, 2 * i + 1).await
        else {
            panic!("{channel}: expected a payment notification");
        };
        assert_eq!(amount, Money::from_fen(1).unwrap(), "{channel}");
        let status = sim.gw(channel).query(&no).await.unwrap();
        assert_eq!(status.amount.map(Money::fen), Some(1), "{channel}");
    }
}
