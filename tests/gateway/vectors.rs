//! Our signatures and verifications against the independent vectors.

use std::collections::HashMap;

use chrono::{TimeZone, Utc};
use payrecon::domain::Money;
use payrecon::gateway::alipay::sign as ali_sign;
use payrecon::gateway::wechat_pay::sign as wx_sign;
use payrecon::gateway::{Gateway, Notification, NotificationError, RefundState};
use serde_json::Value;

use crate::{
    alipay, private_key, public_key, str_of, vectors, verify_wechat, wechat, wechat_notification,
    wechat_vector_time,
};

#[test]
fn wechat_authorization_matches_openssl() {
    let key = private_key("test_rsa_private.pem");
    for name in ["request_get", "request_post"] {
        let v = &vectors()["wechat"][name];
        let header = wx_sign::build_authorization(
            "1900000001",
            "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
            &key,
            str_of(v, "method"),
            str_of(v, "url"),
            v["timestamp"].as_i64().unwrap(),
            str_of(v, "nonce"),
            str_of(v, "body"),
        )
        .unwrap();
        // PKCS#1 v1.5 is deterministic: the same key and message give the same bytes.
        let expected = format!("signature=\"{}\"", str_of(v, "signature"));
        assert!(header.starts_with("WECHATPAY2-SHA256-RSA2048 mchid=\"1900000001\","));
        assert!(header.ends_with(&expected), "{name}: {header}");
        assert!(header.contains("timestamp=\"1554208460\""));
    }
}

#[test]
fn wechat_notifications_verify_and_decode() {
    let now = wechat_vector_time() + chrono::Duration::seconds(10);
    let payment = verify_wechat("notify_payment", now, "test_rsa_public.pem").unwrap();
    assert_eq!(
        payment,
        Notification::Payment {
            out_trade_no: "0b0d3ec4c2bd4c4f8f4ad1e7a5d6f111".into(),
            transaction_id: "4200001234202401011234567890".into(),
            amount: Money::from_fen(3998).unwrap(),
            paid_at: Utc.with_ymd_and_hms(2023, 11, 14, 22, 13, 15).unwrap(),
        }
    );
    let refund = verify_wechat("notify_refund_empty_aad", now, "test_rsa_public.pem").unwrap();
    assert_eq!(
        refund,
        Notification::Refund {
            out_trade_no: "0b0d3ec4c2bd4c4f8f4ad1e7a5d6f111".into(),
            out_refund_no: "2f0c6f1e9a5b4d1c8e7f6a5b4c3d2e1f".into(),
            gateway_refund_id: Some("50300001234202401010000000001".into()),
            amount: Some(Money::from_fen(1000).unwrap()),
            state: RefundState::Succeeded,
        }
    );
    // Lower-cased header names (our own ingress) work the same.
    let (headers, body) = wechat_notification("notify_payment");
    let lower = headers
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    assert!(wechat("test_rsa_public.pem")
        .verify_notification(&lower, &body, now)
        .is_ok());
}

#[test]
fn wechat_notifications_are_rejected_for_the_right_reason() {
    let t0 = wechat_vector_time();
    let ok_now = t0 + chrono::Duration::seconds(299);
    let bad_sig = |r| matches!(r, Err(NotificationError::BadSignature(_)));

    assert!(bad_sig(verify_wechat(
        "notify_other_key",
        ok_now,
        "test_rsa_public.pem"
    )));
    assert!(bad_sig(verify_wechat(
        "notify_payment",
        ok_now,
        "other_rsa_public.pem"
    )));
    assert!(bad_sig(verify_wechat(
        "notify_signtest",
        ok_now,
        "test_rsa_public.pem"
    )));
    for stale in [
        t0 + chrono::Duration::seconds(300),
        t0 - chrono::Duration::seconds(300),
        t0 + chrono::Duration::hours(1),
    ] {
        assert_eq!(
            verify_wechat("notify_payment", stale, "test_rsa_public.pem"),
            Err(NotificationError::StaleTimestamp)
        );
    }
    assert_eq!(
        verify_wechat("notify_bad_tag", ok_now, "test_rsa_public.pem"),
        Err(NotificationError::Decryption)
    );
    assert!(matches!(
        verify_wechat("notify_wrong_mchid", ok_now, "test_rsa_public.pem"),
        Err(NotificationError::WrongMerchant(_))
    ));
    assert!(matches!(
        verify_wechat("notify_wrong_appid", ok_now, "test_rsa_public.pem"),
        Err(NotificationError::WrongMerchant(_))
    ));

    // One changed byte of the body, a signature header for another body, an
    // unknown serial, a missing header: all refused before decryption.
    let gw = wechat("test_rsa_public.pem");
    let (headers, body) = wechat_notification("notify_payment");
    let mut tampered = body.clone();
    let at = tampered.len() - 3;
    tampered[at] ^= 1;
    assert!(bad_sig(gw.verify_notification(&headers, &tampered, ok_now)));
    let mut other_serial = headers.clone();
    other_serial.insert("Wechatpay-Serial".into(), "PUB_KEY_ID_OTHER".into());
    assert!(bad_sig(gw.verify_notification(
        &other_serial,
        &body,
        ok_now
    )));
    let mut missing = headers.clone();
    missing.remove("Wechatpay-Nonce");
    assert!(bad_sig(gw.verify_notification(&missing, &body, ok_now)));
}

#[test]
fn alipay_request_signature_matches_openssl() {
    let v = &vectors()["alipay"]["request"];
    let params: Vec<(&str, &str)> = v["params"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        .chain([("sign", "ignored")])
        .collect();
    assert_eq!(
        ali_sign::sign_content(params.iter().copied(), &["sign"]),
        str_of(v, "content")
    );
    let sign = ali_sign::sign_request(params, &private_key("test_rsa_private.pem")).unwrap();
    assert_eq!(sign, str_of(v, "sign"));
}

#[test]
fn alipay_response_node_verifies_exactly_or_unescaped() {
    let key = public_key("test_rsa_public.pem");
    let other = public_key("other_rsa_public.pem");
    for name in ["response_exact", "response_unescaped"] {
        let v = &vectors()["alipay"][name];
        let body = str_of(v, "body");
        let node = ali_sign::extract_node(body, "alipay_trade_query_response").unwrap();
        assert_eq!(node, str_of(v, "node"));
        let top: Value = serde_json::from_str(body).unwrap();
        let sign = top["sign"].as_str().unwrap();
        assert!(ali_sign::verify_response_node(node, sign, &key), "{name}");
        assert!(
            !ali_sign::verify_response_node(node, sign, &other),
            "{name}"
        );
        let altered = node.replace("88.88", "88.89");
        assert!(
            !ali_sign::verify_response_node(&altered, sign, &key),
            "{name}"
        );
    }
}

fn verify_alipay(name: &str, key: &str) -> Result<Notification, NotificationError> {
    let body = str_of(&vectors()["alipay"][name], "body").to_string();
    alipay(key).verify_notification(&HashMap::new(), body.as_bytes(), Utc::now())
}

#[test]
fn alipay_notifications_verify_and_decode() {
    let key = "test_rsa_public.pem";
    assert_eq!(
        verify_alipay("notify_payment", key).unwrap(),
        Notification::Payment {
            out_trade_no: "ORDER1".into(),
            transaction_id: "2024010122001400000000000001".into(),
            amount: Money::from_fen(8888).unwrap(),
            paid_at: Utc.with_ymd_and_hms(2024, 1, 1, 4, 0, 5).unwrap(),
        }
    );
    for (name, out_refund_no) in [
        ("notify_refund", "RF001"),
        ("notify_full_refund_closed", "RF002"),
    ] {
        assert_eq!(
            verify_alipay(name, key).unwrap(),
            Notification::Refund {
                out_trade_no: "ORDER1".into(),
                out_refund_no: out_refund_no.into(),
                gateway_refund_id: None,
                amount: None,
                state: RefundState::Succeeded,
            },
            "{name}"
        );
    }
    assert!(matches!(
        verify_alipay("notify_wait", key),
        Ok(Notification::Ignored(_))
    ));
}

#[test]
fn alipay_notifications_are_rejected_for_the_right_reason() {
    let key = "test_rsa_public.pem";
    assert!(matches!(
        verify_alipay("notify_other_key", key),
        Err(NotificationError::BadSignature(_))
    ));
    assert!(matches!(
        verify_alipay("notify_payment", "other_rsa_public.pem"),
        Err(NotificationError::BadSignature(_))
    ));
    assert!(matches!(
        verify_alipay("notify_wrong_app", key),
        Err(NotificationError::WrongMerchant(_))
    ));
    assert!(matches!(
        verify_alipay("notify_bad_amount", key),
        Err(NotificationError::Malformed(_))
    ));
    let gw = alipay(key);
    let body = str_of(&vectors()["alipay"]["notify_payment"], "body").to_string();
    let now = Utc::now();
    let tampered = body.replace("total_amount=88.88", "total_amount=0.01");
    assert!(matches!(
        gw.verify_notification(&HashMap::new(), tampered.as_bytes(), now),
        Err(NotificationError::BadSignature(_))
    ));
    // A second total_amount must not slip past the signature of the first.
    let doubled = format!("{body}&total_amount=0.01");
    assert!(gw
        .verify_notification(&HashMap::new(), doubled.as_bytes(), now)
        .is_err());
    let unsigned: String = body
        .split('&')
        .filter(|kv| !kv.starts_with("sign="))
        .collect::<Vec<_>>()
        .join("&");
    assert!(matches!(
        gw.verify_notification(&HashMap::new(), unsigned.as_bytes(), now),
        Err(NotificationError::BadSignature(_))
    ));
}
