//! A notify_url for the simulator's notifications.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::any;
use axum::Router;
use payrecon::gateway::crypto::RsaPublicKey;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// Collects notifications. Paths under `/alipay` are acknowledged with
/// `success`, others with 204; the first `fail_first` deliveries get a 500.
/// Paths under `/verify` check the WeChat Pay signature with `verify_with`
/// first and answer 401 when it fails, as a careful merchant does.
pub struct Receiver {
    pub base: String,
    pub fail_first: Arc<AtomicU32>,
    rx: Mutex<mpsc::UnboundedReceiver<Received>>,
    shutdown: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Clone)]
struct ReceiverState {
    tx: mpsc::UnboundedSender<Received>,
    fail_first: Arc<AtomicU32>,
    verify_with: Option<RsaPublicKey>,
}

fn wechat_signature_ok(key: &RsaPublicKey, headers: &HeaderMap, body: &[u8]) -> bool {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut message =
        format!("{}\n{}\n", h("wechatpay-timestamp"), h("wechatpay-nonce")).into_bytes();
    message.extend_from_slice(body);
    message.push(b'\n');
    key.verify_sha256_base64(&message, h("wechatpay-signature"))
}

async fn receive(
    State(s): State<ReceiverState>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    let path = uri.path().to_string();
    let _ = s.tx.send(Received {
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.to_vec(),
    });
    if path.starts_with("/verify") {
        let ok = s
            .verify_with
            .as_ref()
            .is_some_and(|k| wechat_signature_ok(k, &headers, &body));
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                r#"{"code":"FAIL","message":"签名错误"}"#.into(),
            );
        }
    }
    let failing = s
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    match (failing, path.starts_with("/alipay")) {
        (true, true) => (StatusCode::OK, "fail".into()),
        (true, false) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"code":"FAIL","message":"失败"}"#.into(),
        ),
        (false, true) => (StatusCode::OK, "success".into()),
        (false, false) => (StatusCode::NO_CONTENT, String::new()),
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_verifying(None).await
    }

    pub async fn start_verifying(verify_with: Option<RsaPublicKey>) -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let fail_first = Arc::new(AtomicU32::new(0));
        let state = ReceiverState {
            tx,
            fail_first: fail_first.clone(),
            verify_with,
        };
        let app = Router::new()
            .route("/{*path}", any(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Receiver {
            base,
            fail_first,
            rx: Mutex::new(rx),
            shutdown,
        }
    }

    pub async fn next(&self) -> Received {
        tokio::time::timeout(Duration::from_secs(10), self.rx.lock().await.recv())
            .await
            .expect("a notification within 10 s")
            .expect("receiver open")
    }
}
