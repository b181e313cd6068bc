//! `build_gateways` from settings, and the metrics every call records.

use std::path::Path;

use payrecon::config::{GatewayMode, Settings};
use payrecon::domain::Channel;
use payrecon::gateway::factory::{build_gateways, notify_url};
use payrecon::gateway::{Gateway, GatewayError};

use crate::stub::refused_base_url;
use crate::FIXTURES;

/// A keys_dir holding the simulator's key files (the fixture test keys).
fn sim_keys(dir: &Path) {
    let copy = |from: &str, to: &str| {
        std::fs::copy(format!("{FIXTURES}/{from}"), dir.join(to)).unwrap();
    };
    copy("test_rsa_private.pem", "wechat_merchant_private.pem");
    copy("test_rsa_public.pem", "wechat_platform_public.pem");
    copy("test_rsa_private.pem", "alipay_app_private.pem");
    copy("test_rsa_public.pem", "alipay_public.pem");
    std::fs::write(
        dir.join("wechat_apiv3_key"),
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
}

fn protocol_text(result: Result<impl Sized, GatewayError>) -> String {
    match result {
        Err(GatewayError::Protocol(text)) => text,
        Err(other) => panic!("expected a protocol error, got {other:?}"),
        Ok(_) => panic!("expected a protocol error, got a gateway"),
    }
}

#[test]
fn simulator_mode_uses_the_simulator_keys() {
    let dir = tempfile::tempdir().unwrap();
    sim_keys(dir.path());
    let mut settings = Settings::default();
    settings.simulator.keys_dir = dir.path().to_path_buf();
    let gateways = build_gateways(&settings, Some("http://127.0.0.1:9/")).unwrap();
    assert_eq!(gateways.len(), 2);
    for channel in Channel::ALL {
        assert_eq!(gateways[&channel].channel(), channel);
    }
    settings.gateways.alipay.enabled = false;
    let gateways = build_gateways(&settings, Some("http://127.0.0.1:9")).unwrap();
    assert!(!gateways.contains_key(&Channel::Alipay));

    // No simulator address, or a key file missing: refused, naming what.
    assert!(protocol_text(build_gateways(&settings, None)).contains("simulator"));
    std::fs::remove_file(dir.path().join("wechat_apiv3_key")).unwrap();
    assert!(
        protocol_text(build_gateways(&settings, Some("http://127.0.0.1:9")))
            .contains("wechat_apiv3_key")
    );
    std::fs::write(dir.path().join("wechat_apiv3_key"), "short").unwrap();
    assert!(
        protocol_text(build_gateways(&settings, Some("http://127.0.0.1:9")))
            .contains("wechat_apiv3_key")
    );
}

#[test]
fn live_mode_names_the_key_that_does_not_load() {
    let mut settings = Settings::default();
    settings.gateways.wechat_pay.enabled = false;
    let a = &mut settings.gateways.alipay;
    a.mode = GatewayMode::Live;
    a.base_url = "http://127.0.0.1:9/gateway.do".into();
    a.app_id = "2021000000000001".into();
    a.app_private_key = "/nonexistent/app.pem".into();
    a.alipay_public_key = format!("{FIXTURES}/test_rsa_public.pem");
    assert!(
        protocol_text(build_gateways(&settings, None)).contains("gateways.alipay.app_private_key")
    );
    // A public key where a private one belongs does not load either.
    settings.gateways.alipay.app_private_key = format!("{FIXTURES}/test_rsa_public.pem");
    assert!(
        protocol_text(build_gateways(&settings, None)).contains("gateways.alipay.app_private_key")
    );
    settings.gateways.alipay.app_private_key = format!("{FIXTURES}/test_rsa_private.pem");
    let gateways = build_gateways(&settings, None).unwrap();
    assert_eq!(gateways[&Channel::Alipay].channel(), Channel::Alipay);
    assert_eq!(
        notify_url(&settings, Channel::Alipay),
        "http://127.0.0.1:8080/notify/alipay"
    );
    assert_eq!(
        notify_url(&settings, Channel::WechatPay),
        "http://127.0.0.1:8080/notify/wechat_pay"
    );
}

#[tokio::test]
async fn every_call_is_counted_and_timed() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let gw = crate::alipay_at(
        &format!("{}/gateway.do", refused_base_url().await),
        "test_rsa_public.pem",
        std::time::Duration::from_secs(1),
    );
    assert!(matches!(
        gw.query("T1").await,
        Err(GatewayError::Transient(_))
    ));
    let text = handle.render();
    let line = |name: &str, parts: &[&str]| {
        text.lines()
            .any(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
    };
    assert!(
        line(
            "payrecon_gateway_calls_total{",
            &[
                r#"channel="alipay""#,
                r#"operation="query""#,
                r#"outcome="transient""#
            ]
        ),
        "{text}"
    );
    assert!(
        line(
            "payrecon_gateway_call_duration_seconds",
            &[r#"channel="alipay""#, r#"operation="query""#]
        ),
        "{text}"
    );
}
