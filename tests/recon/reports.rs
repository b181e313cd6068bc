//! The reports: over HTTP (JSON, CSV, HTML, 404s) and the HTML page as a
//! headless Chromium renders it.

use payrecon::domain::Channel;
use payrecon::http::recon::{router, ReconHttpState};
use payrecon::jobs::reconcile::{run_reconciliation, BillSource, RunOutcome};
use payrecon::jobs::report;

use crate::runs::{bill_bytes, every_category};
use crate::support::*;

#[tokio::test]
async fn http_serves_json_csv_html() {
    let s = every_category(Channel::Alipay).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "bill.zip",
        &bill_bytes(Channel::Alipay, &s.rows),
    );
    let ctx = context(&s.db.pool, Channel::Alipay, s.gw.clone());
    let RunOutcome::Completed(r) =
        run_reconciliation(&ctx, Channel::Alipay, day(), BillSource::File(path), "test")
            .await
            .unwrap()
    else {
        panic!("skipped")
    };
    let id = r.run.run_id;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(ReconHttpState {
        pool: s.db.pool.clone(),
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();

    let list: serde_json::Value = http
        .get(format!("{base}/recon/runs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["run_id"], id.to_string());
    assert_eq!(list[0]["status"], "completed");

    let resp = http
        .get(format!("{base}/recon/runs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json, report::report_json(&r));
    assert_eq!(json["channel"], "alipay");
    assert_eq!(json["date"], "2026-11-24");
    assert_eq!(json["bill_source"], "file");
    assert_eq!(json["summary"]["average_amount"], 4182);
    assert_eq!(json["discrepancies"].as_array().unwrap().len(), 9);
    let first = &json["discrepancies"][0];
    assert_eq!(first["category"], "amount_mismatch");
    assert_eq!(first["order_id"], s.orders["B"].order_id.to_string());
    assert_eq!(first["local_amount"], 2000);
    assert_eq!(first["gateway_amount"], 2500);
    assert_eq!(first["local_status"], "paid");
    assert_eq!(first["gateway_status"], "交易");
    assert_eq!(first["resolution"], "open");
    let missing_local = json["discrepancies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["category"] == "missing_local")
        .unwrap();
    assert!(missing_local["order_id"].is_null() && missing_local["local_amount"].is_null());

    let resp = http
        .get(format!("{base}/recon/runs/{id}.csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = resp.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "category,out_trade_no,order_id,local_amount,gateway_amount,local_status,gateway_status,gateway_transaction_id,resolution");
    assert_eq!(lines.len(), 10);
    assert!(lines[1].starts_with(&format!(
        "amount_mismatch,{},{},2000,2500,paid,交易,",
        s.orders["B"].out_trade_no(),
        s.orders["B"].order_id
    )));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("status_mismatch,") && l.ends_with(",auto_repaired")));

    let resp = http
        .get(format!("{base}/recon/runs/{id}.html"))
        .send()
        .await
        .unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = resp.text().await.unwrap();
    assert!(html.contains("41.82") && !html.contains("<script"));

    for missing in [
        format!("{}", uuid::Uuid::new_v4()),
        format!("{id}.pdf"),
        "not-a-run".to_string(),
    ] {
        let resp = http
            .get(format!("{base}/recon/runs/{missing}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{missing}");
    }
    server.abort();
    s.db.drop_db().await;
}

/// The page finance opens, as Chromium renders it: the summary figures are there.
#[tokio::test]
async fn html_report_in_headless_chromium() {
    let chromium = std::path::Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        println!("skipped: no chromium");
        return;
    }
    let s = every_category(Channel::WechatPay).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "bill.gz",
        &bill_bytes(Channel::WechatPay, &s.rows),
    );
    let ctx = context(&s.db.pool, Channel::WechatPay, s.gw.clone());
    let RunOutcome::Completed(r) = run_reconciliation(
        &ctx,
        Channel::WechatPay,
        day(),
        BillSource::File(path),
        "test",
    )
    .await
    .unwrap() else {
        panic!("skipped")
    };
    let html_path = write_file(
        dir.path(),
        "report.html",
        report::render_html(&r).as_bytes(),
    );
    // For a person to look at: PAYRECON_KEEP_HTML=/some/path.html keeps the page.
    if let Ok(keep) = std::env::var("PAYRECON_KEEP_HTML") {
        std::fs::copy(&html_path, keep).unwrap();
    }
    let out = std::process::Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("file://{}", html_path.display()))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    let row = |id: &str| {
        let start = dom
            .find(&format!("<tr id=\"{id}\">"))
            .unwrap_or_else(|| panic!("{id} row missing"));
        let end = start + dom[start..].find("</tr>").unwrap();
        dom[start..end].to_string()
    };
    for (id, value) in [
        ("order_count", "11"),
        ("total_amount", "460.00"),
        ("average_amount", "41.82"),
        ("paid_count", "7"),
        ("failed_count", "2"),
        ("pending_count", "2"),
        ("success_rate", "63.64%"),
        ("bill_count", "11"),
        ("bill_amount", "460.00"),
        ("bill_refund_amount", "35.00"),
        ("bill_fee", "2.55"),
        ("matched_count", "4"),
        ("matched_amount", "125.00"),
        ("discrepancy_count", "9"),
    ] {
        assert!(row(id).contains(&format!(">{value}<")), "{id}: {}", row(id));
    }
    for category in [
        "amount_mismatch",
        "missing_local",
        "missing_gateway",
        "status_mismatch",
        "paid_after_cancel",
        "refund_mismatch",
        "duplicate",
    ] {
        assert!(
            dom.contains(&format!("<h3 id=\"{category}\">")),
            "{category}"
        );
    }
    // At a glance: every category with its count, and a chart with one bar
    // for the matched amount and one per category.
    for (category, count) in [
        ("amount_mismatch", 1),
        ("missing_local", 1),
        ("missing_gateway", 1),
        ("status_mismatch", 3),
        ("paid_after_cancel", 1),
        ("refund_mismatch", 1),
        ("duplicate", 1),
    ] {
        let id = format!("overview-{category}");
        let start = dom.find(&format!("<tr id=\"{id}\"")).expect(&id);
        let end = start + dom[start..].find("</tr>").unwrap();
        assert!(
            dom[start..end].contains(&format!("<td class=\"num\">{count}</td>")),
            "{id}: {}",
            &dom[start..end]
        );
    }
    assert_eq!(dom.matches("<rect data-category=").count(), 8);
    assert!(dom.contains("data-category=\"matched\""));
    // Printed, it is A4 (595 × 842 points).
    let pdf_path = dir.path().join("report.pdf");
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-pdf-header-footer",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile-pdf").display()
        ))
        .arg(format!("--print-to-pdf={}", pdf_path.display()))
        .arg(format!("file://{}", html_path.display()))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pdf = std::fs::read(&pdf_path).expect("the PDF");
    let pdf = String::from_utf8_lossy(&pdf);
    assert!(
        pdf.contains("/MediaBox [0 0 594.95996 841.91998]")
            || pdf.contains("/MediaBox [0 0 595 842]"),
        "not A4: {:?}",
        pdf.find("/MediaBox")
            .map(|i| &pdf[i..(i + 40).min(pdf.len())])
    );
    s.db.drop_db().await;
}

#[test]
fn table_and_csv_render_without_a_database() {
    use payrecon::domain::recon::*;
    let run = ReconRun {
        run_id: uuid::Uuid::nil(),
        channel: Channel::WechatPay,
        date: day(),
        status: RunStatus::Completed,
        trigger: "test".into(),
        bill_source: BillSourceKind::File,
        started_at: at(10, 0),
        finished_at: Some(at(10, 1)),
        summary: Some(summarize(&[], &BillTotals::default(), 0, 0, &[])),
        error: None,
    };
    let d = Discrepancy {
        category: Category::MissingLocal,
        out_trade_no: "=HYPERLINK(\"x\")".into(),
        order_id: None,
        local_amount: None,
        gateway_amount: Some(fen(123)),
        local_status: None,
        gateway_status: Some("<b>SUCCESS</b>".into()),
        gateway_transaction_id: None,
        resolution: Resolution::Open,
    };
    let report = Report {
        run,
        discrepancies: vec![d],
    };
    let csv = report::render_csv(&report);
    assert!(
        csv.contains("missing_local,\"'=HYPERLINK(\"\"x\"\")\",,,123,,<b>SUCCESS</b>,,open"),
        "{csv}"
    );
    let html = report::render_html(&report);
    assert!(html.contains("&lt;b&gt;SUCCESS&lt;/b&gt;") && !html.contains("<b>SUCCESS"));
    assert!(html.contains(">1.23<"));
    let table = report::render_table(&report);
    assert!(
        table.contains("missing_local") && table.contains("1.23"),
        "{table}"
    );
}
