//! The official Python SDKs, unchanged, against the simulator (docs/gateways.md
//! Part C). Needs `PAYRECON_SDK_PYTHON`: a Python with tests/sdk/requirements.txt
//! installed, e.g. `python3 -m venv /work/venv-sdk && /work/venv-sdk/bin/pip
//! install -r tests/sdk/requirements.txt`. Without it the test says so and passes.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_drive_both_protocols() {
    let Ok(python) = std::env::var("PAYRECON_SDK_PYTHON") else {
        // CI must run the oracle, never skip it silently.
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but PAYRECON_SDK_PYTHON is not set"
        );
        eprintln!("skipped: PAYRECON_SDK_PYTHON is not set (see tests/sdk/requirements.txt)");
        return;
    };
    let h = Harness::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/drive_sdks.py");
    let s = &h.settings;
    let run = tokio::process::Command::new(python)
        .arg(script)
        .args(["--base-url", &h.sim.base_url()])
        .arg("--keys-dir")
        .arg(&h.keys_dir)
        .args(["--mchid", &s.wechat_mchid, "--appid", &s.wechat_appid])
        .args(["--merchant-serial", &s.wechat_merchant_serial_no])
        .args(["--platform-serial", &s.wechat_platform_serial])
        .args(["--alipay-app-id", &s.alipay_app_id])
        // Loopback only, whatever proxy the environment names.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the SDK script finishes within 3 minutes")
        .expect("the SDK python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK script failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("ALL SDK CHECKS PASSED"), "{stdout}");
}
