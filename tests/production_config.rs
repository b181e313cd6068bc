//! config/production.example.toml is what an operator copies: it must load
//! as it stands (once its files exist), say what the README says it says,
//! and appear in the README word for word. Its paths are moved into a
//! temporary folder where the test puts the secrets and CA files.

use std::fs;
use std::path::Path;

use payrecon::config::{GatewayMode, Settings};

const EXAMPLE: &str = "config/production.example.toml";
const APIV3_KEY: &str = "0123456789abcdefghijABCDEFGHIJ01";

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The files the example names, made under `root` with plausible content.
fn mount_files(root: &Path) {
    let ca = repo_file("tests/fixtures/tls/example-ca.pem");
    let files = [
        ("run/secrets/payrecon-db-password", "db-secret-1\n"),
        ("run/secrets/payrecon-amqp-password", "mq-secret-2\n"),
        ("run/secrets/payrecon-api-token", "token-secret-3\n"),
        ("run/secrets/wechat/apiv3_key", APIV3_KEY),
        ("etc/payrecon/tls/db-ca.pem", ca.as_str()),
        ("etc/payrecon/tls/mq-ca.pem", ca.as_str()),
    ];
    for (path, content) in files {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
}

#[test]
fn the_production_example_loads_with_its_files_mounted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    mount_files(dir.path());
    let text = repo_file(EXAMPLE)
        .replace("/run/secrets/", &format!("{root}/run/secrets/"))
        .replace("/etc/payrecon/", &format!("{root}/etc/payrecon/"));
    let config = dir.path().join("payrecon.toml");
    fs::write(&config, text).unwrap();

    let s = Settings::load(Some(&config)).expect("the production example loads");

    let db = s.database.url.expose();
    assert!(db.contains("sslmode=verify-full"), "{db}");
    assert!(db.contains(":db-secret-1@"), "password from its file: {db}");
    let brokers = s.amqp.urls();
    assert_eq!(brokers.len(), 3, "three cluster nodes");
    for url in &brokers {
        let url = url.expose();
        assert!(url.starts_with("amqps://payrecon:mq-secret-2@"), "{url}");
    }
    assert!(s.amqp.tls_ca_file.ends_with("etc/payrecon/tls/mq-ca.pem"));
    assert_eq!(s.http.api_token.expose(), "token-secret-3");
    assert_eq!(s.gateways.wechat_pay.apiv3_key.expose(), APIV3_KEY);
    assert_eq!(s.gateways.wechat_pay.mode, GatewayMode::Live);
    assert_eq!(s.gateways.alipay.mode, GatewayMode::Live);
}

#[test]
fn the_production_example_without_its_files_names_the_first_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("payrecon.toml");
    let text = repo_file(EXAMPLE).replace("/run/secrets/", "/nonexistent/run/secrets/");
    fs::write(&config, text).unwrap();
    let e = Settings::load(Some(&config)).unwrap_err().to_string();
    assert!(
        e.contains("database.password_file") && e.contains("/nonexistent/run/secrets/"),
        "{e}"
    );
}

#[test]
fn the_readme_shows_the_production_example_word_for_word() {
    let readme = repo_file("README.md");
    let block = format!("```toml\n{}```", repo_file(EXAMPLE));
    assert!(
        readme.contains(&block),
        "README.md must show {EXAMPLE} in a ```toml block, unchanged"
    );
}
