//! A simulator on 127.0.0.1:0 with its own keys folder, clients that sign like
//! the real merchants do.

pub use crate::receiver::{Received, Receiver};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use axum::http::HeaderMap;
use payrecon::config::{Settings, SimulatorSettings};
use payrecon::gateway::crypto::{random_nonce, RsaPublicKey};
use payrecon::simulator::{SimKeys, SimOptions, Simulator};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// RSA key generation is slow-ish; generate one set per test binary and copy it.
fn shared_keys() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        SimKeys::load_or_create(dir.path()).expect("keys");
        dir
    })
    .path()
}

pub fn copy_keys_to(dest: &Path) {
    for entry in std::fs::read_dir(shared_keys()).expect("read keys") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dest.join(entry.file_name())).expect("copy key");
    }
}

pub struct Harness {
    pub sim: Simulator,
    pub http: reqwest::Client,
    pub settings: SimulatorSettings,
    pub keys_dir: PathBuf,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn fast_options(settings: SimulatorSettings) -> SimOptions {
    let mut opts = SimOptions::new(settings);
    opts.wechat_notify_retry = vec![Duration::from_millis(50); 4];
    opts.alipay_notify_retry = vec![Duration::from_millis(50); 4];
    opts.hang_for = Duration::from_secs(2);
    opts
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    /// `prepare` may put its own key files in the folder before start.
    pub async fn start_with(prepare: impl FnOnce(&Path)) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_keys_to(dir.path());
        prepare(dir.path());
        let mut settings = Settings::default().simulator;
        settings.keys_dir = dir.path().to_path_buf();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let shutdown = CancellationToken::new();
        let sim = Simulator::start(fast_options(settings.clone()), listener, shutdown.clone())
            .await
            .expect("simulator starts");
        Harness {
            sim,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
            keys_dir: dir.path().to_path_buf(),
            settings,
            shutdown,
            _dir: dir,
        }
    }

    pub fn keys(&self) -> &SimKeys {
        self.sim.keys()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    /// A control call; returns status and JSON (Null when the body is not JSON).
    pub async fn control(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("control call");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("get");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls `/sim/payments/…` until `check` holds (notification deliveries
    /// happen in the background).
    pub async fn wait_payment(&self, otn: &str, check: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..100 {
            let (_, v) = self.get_json(&format!("/sim/payments/{otn}")).await;
            if check(&v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("payment {otn} never reached the expected state");
    }
}

/// One WeChat Pay API v3 response.
pub struct WxResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl WxResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Checks the platform signature over `ts\nnonce\nbody\n`.
    pub fn verifies_with(&self, key: &RsaPublicKey) -> bool {
        let mut message = format!(
            "{}\n{}\n",
            self.header("wechatpay-timestamp"),
            self.header("wechatpay-nonce")
        )
        .into_bytes();
        message.extend_from_slice(&self.body);
        message.push(b'\n');
        key.verify_sha256_base64(&message, self.header("wechatpay-signature"))
    }
}

pub fn wx_authorization(h: &Harness, method: &str, uri: &str, body: &str, ts: i64) -> String {
    let nonce = random_nonce(32);
    let message = format!("{method}\n{uri}\n{ts}\n{nonce}\n{body}\n");
    let signature = h
        .keys()
        .wechat_merchant_private
        .sign_sha256_base64(message.as_bytes())
        .expect("sign");
    format!(
        r#"WECHATPAY2-SHA256-RSA2048 mchid="{}",nonce_str="{nonce}",signature="{signature}",timestamp="{ts}",serial_no="{}""#,
        h.settings.wechat_mchid, h.settings.wechat_merchant_serial_no
    )
}

/// A request signed with the merchant key, as the SDKs send it.
pub async fn wx(h: &Harness, method: &str, uri: &str, body: Option<&Value>) -> WxResponse {
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = wx_authorization(h, method, uri, &body, chrono::Utc::now().timestamp());
    wx_raw(h, method, uri, &body, &auth).await
}

pub async fn wx_raw(h: &Harness, method: &str, uri: &str, body: &str, auth: &str) -> WxResponse {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = h
        .http
        .request(method, h.url(uri))
        .header("accept", "application/json")
        .header("authorization", auth);
    if !body.is_empty() {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let r = req.send().await.expect("wechat call");
    WxResponse {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.bytes().await.expect("body").to_vec(),
    }
}

/// Alipay request parameters signed with the app key (RSA2).
pub fn ali_params(h: &Harness, method: &str, biz: &Value) -> BTreeMap<String, String> {
    let mut p = BTreeMap::new();
    for (k, v) in [
        ("app_id", h.settings.alipay_app_id.as_str()),
        ("method", method),
        ("charset", "utf-8"),
        ("sign_type", "RSA2"),
        ("version", "1.0"),
        ("notify_url", ""),
    ] {
        p.insert(k.to_string(), v.to_string());
    }
    p.insert(
        "timestamp".into(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string(),
    );
    p.insert("biz_content".into(), biz.to_string());
    p
}

pub fn ali_sign(h: &Harness, p: &mut BTreeMap<String, String>) {
    let content = p
        .iter()
        .filter(|(k, v)| !v.is_empty() && k.as_str() != "sign")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let sign = h
        .keys()
        .alipay_app_private
        .sign_sha256_base64(content.as_bytes())
        .expect("sign");
    p.insert("sign".into(), sign);
}

/// GETs `/gateway.do` with the (already signed) parameters; returns the raw
/// body and the node after checking its signature with the Alipay public key.
pub async fn ali_send(h: &Harness, p: &BTreeMap<String, String>) -> (String, Value) {
    let query = serde_urlencoded::to_string(p).expect("encode");
    let raw = h
        .http
        .get(format!("{}?{query}", h.url("/gateway.do")))
        .send()
        .await
        .expect("alipay call")
        .text()
        .await
        .expect("text");
    let node = ali_verified_node(h, &raw);
    (raw, node)
}

pub async fn ali(h: &Harness, method: &str, biz: Value, notify_url: Option<&str>) -> Value {
    let mut p = ali_params(h, method, &biz);
    if let Some(url) = notify_url {
        p.insert("notify_url".into(), url.to_string());
    }
    ali_sign(h, &mut p);
    ali_send(h, &p).await.1
}

/// Extracts the node text as python-alipay-sdk does (first `{` after the
/// node name, naive brace matching) and verifies it.
pub fn ali_verified_node(h: &Harness, raw: &str) -> Value {
    let doc: Value = serde_json::from_str(raw).expect("JSON answer");
    let obj = doc.as_object().expect("object");
    let name = obj
        .keys()
        .find(|k| k.ends_with("_response"))
        .expect("a *_response node")
        .clone();
    let start = raw.find(&name).expect("name")
        + raw[raw.find(&name).expect("name")..].find('{').expect("{");
    let mut depth = 0;
    let mut end = start;
    for (i, c) in raw[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    end = start + i + 1;
                    break;
                }
            }
            _ => {}
        }
    }
    let node_text = &raw[start..end];
    let sign = doc["sign"].as_str().expect("signed answer");
    assert!(
        h.keys()
            .alipay_public
            .verify_sha256_base64(node_text.as_bytes(), sign),
        "node signature does not verify: {raw}"
    );
    serde_json::from_str(node_text).expect("node JSON")
}

pub fn today_cn() -> chrono::NaiveDate {
    let cn = chrono::FixedOffset::east_opt(8 * 3600).expect("offset");
    chrono::Utc::now().with_timezone(&cn).date_naive()
}
