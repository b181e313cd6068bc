//! Our crypto against vectors made independently (openssl, Python
//! `cryptography`) by tests/fixtures/sim/make_vectors.py.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{TimeZone, Utc};
use payrecon::gateway::crypto::{
    aes_256_gcm_decrypt, aes_256_gcm_encrypt, RsaPrivateKey, RsaPublicKey,
};
use payrecon::simulator::{verify_request, AuthError, Merchant};
use serde_json::Value;

use crate::helpers::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sim");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).expect("fixture")
}

fn vectors() -> Value {
    serde_json::from_str(&fixture("vectors.json")).expect("vectors.json")
}

fn public(name: &str) -> RsaPublicKey {
    RsaPublicKey::from_pem(&fixture(name)).expect("public key")
}

/// Flips one Base64 character of the signature inside a header or string.
fn tamper(signature: &str) -> String {
    let bytes = B64.decode(signature).expect("base64");
    let mut bytes = bytes;
    bytes[10] ^= 0x01;
    B64.encode(bytes)
}

#[test]
fn wechat_authorization_from_openssl() {
    let v = &vectors()["wechat_request"];
    let s = |k: &str| v[k].as_str().expect(k).to_string();
    let ts = v["timestamp"].as_i64().expect("ts");
    let at = |offset: i64| Utc.timestamp_opt(ts + offset, 0).single().expect("time");
    let key = public("test_key_public.pem");
    let check = |header: &str, body: &str, key: &RsaPublicKey, offset: i64| {
        verify_request(
            Some(header),
            &s("method"),
            &s("uri"),
            body.as_bytes(),
            &Merchant {
                mchid: &s("mchid"),
                serial_no: &s("serial_no"),
                key,
            },
            at(offset),
        )
    };
    let header = s("authorization");
    let body = s("body");
    let ok = check(&header, &body, &key, 10).expect("openssl's signature verifies");
    assert_eq!(ok.nonce_str, s("nonce"));
    assert!(check(&header, &body, &key, 299).is_ok());
    assert!(check(&header, &body, &key, -299).is_ok());
    assert_eq!(check(&header, &body, &key, 300), Err(AuthError::Stale));
    assert_eq!(check(&header, &body, &key, -300), Err(AuthError::Stale));
    assert_eq!(
        check(&header, &body, &public("other_key_public.pem"), 0),
        Err(AuthError::BadSignature),
        "wrong key"
    );
    assert_eq!(
        check(&header, &body.replace("100", "101"), &key, 0),
        Err(AuthError::BadSignature),
        "body changed"
    );
    let sig = header
        .split("signature=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("sig");
    let forged = header.replace(sig, &tamper(sig));
    assert_eq!(check(&forged, &body, &key, 0), Err(AuthError::BadSignature));
    let other_merchant = header.replace("mchid=\"1900000001\"", "mchid=\"1900000002\"");
    assert_eq!(
        check(&other_merchant, &body, &key, 0),
        Err(AuthError::WrongMerchant)
    );
}

#[test]
fn our_signatures_equal_openssl_ones() {
    // PKCS#1 v1.5 is deterministic: the same key and message give the same bytes.
    let v = &vectors()["wechat_answer"];
    let key = RsaPrivateKey::from_pem(&fixture("test_key_private.pem")).expect("key");
    for (m, s) in [
        ("message", "signature"),
        ("empty_message", "empty_signature"),
    ] {
        let message = v[m].as_str().expect("message");
        let ours = key.sign_sha256_base64(message.as_bytes()).expect("sign");
        assert_eq!(ours, v[s].as_str().expect("signature"));
        let right = public("test_key_public.pem");
        assert!(right.verify_sha256_base64(message.as_bytes(), &ours));
        assert!(!right.verify_sha256_base64(message.as_bytes(), &tamper(&ours)));
        assert!(!public("other_key_public.pem").verify_sha256_base64(message.as_bytes(), &ours));
    }
}

#[test]
fn aead_from_python_cryptography() {
    let v = &vectors()["aead"];
    let s = |k: &str| v[k].as_str().expect(k);
    let plain = aes_256_gcm_decrypt(
        s("key").as_bytes(),
        s("nonce").as_bytes(),
        s("associated_data").as_bytes(),
        s("ciphertext"),
    )
    .expect("decrypts");
    assert_eq!(plain, s("plaintext").as_bytes());
    let sealed = aes_256_gcm_encrypt(
        s("key").as_bytes(),
        s("nonce").as_bytes(),
        s("associated_data").as_bytes(),
        s("plaintext").as_bytes(),
    )
    .expect("encrypts");
    assert_eq!(sealed, s("ciphertext"));
    let mut bytes = B64.decode(s("ciphertext")).expect("base64");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    let wrong_tag = B64.encode(&bytes);
    assert!(aes_256_gcm_decrypt(
        s("key").as_bytes(),
        s("nonce").as_bytes(),
        s("associated_data").as_bytes(),
        &wrong_tag
    )
    .is_err());
    assert!(aes_256_gcm_decrypt(
        s("key").as_bytes(),
        s("nonce").as_bytes(),
        b"refund",
        s("ciphertext")
    )
    .is_err());
}

/// The openssl-signed request, sent to a simulator that uses the fixture key
/// as the app key: accepted (the trade simply does not exist); tampered: refused.
#[tokio::test]
async fn alipay_request_from_openssl_end_to_end() {
    let h = Harness::start_with(|dir| {
        std::fs::copy(
            format!("{FIXTURES}/test_key_private.pem"),
            dir.join("alipay_app_private.pem"),
        )
        .expect("copy");
        std::fs::copy(
            format!("{FIXTURES}/test_key_public.pem"),
            dir.join("alipay_app_public.pem"),
        )
        .expect("copy");
    })
    .await;
    let v = &vectors()["alipay_request"];
    let params: BTreeMap<String, String> =
        serde_json::from_value(v["params"].clone()).expect("params");
    let (_, node) = ali_send(&h, &params).await;
    assert_eq!(
        (node["code"].as_str(), node["sub_code"].as_str()),
        (Some("40004"), Some("ACQ.TRADE_NOT_EXIST")),
        "{node}"
    );

    let mut forged = params.clone();
    let sign = forged["sign"].clone();
    forged.insert("sign".into(), tamper(&sign));
    assert_eq!(
        ali_send(&h, &forged).await.1["sub_code"],
        "isv.invalid-signature"
    );
    let mut changed = params.clone();
    changed.insert("timestamp".into(), "2026-11-25 19:33:21".into());
    assert_eq!(
        ali_send(&h, &changed).await.1["sub_code"],
        "isv.invalid-signature"
    );
}
