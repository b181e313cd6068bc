//! Credentials read from files (issue 18), as container platforms mount
//! secrets: `*_file` keys name a file whose content replaces the password
//! in a URL, the API token or the APIv3 key. Read once, at load; an error
//! names the key and the path, never what the file holds.

use std::path::Path;

use super::{ConfigError, Secret, Settings};

/// Applies every `*_file` key that is set. Runs before `validate`, so the
/// values from files are checked like any other.
pub(super) fn apply(s: &mut Settings) -> Result<(), ConfigError> {
    if let Some(password) = read("database.password_file", &s.database.password_file)? {
        s.database.url = with_password("database.url", &s.database.url, &password)?;
    }
    if let Some(password) = read("amqp.password_file", &s.amqp.password_file)? {
        // Every broker of the list: they share one login, as nodes of one
        // cluster do.
        let urls = s
            .amqp
            .urls()
            .iter()
            .map(|u| with_password("amqp.url", u, &password).map(|u| u.0))
            .collect::<Result<Vec<_>, _>>()?;
        s.amqp.url = Secret(urls.join(","));
    }
    if let Some(token) = read("http.api_token_file", &s.http.api_token_file)? {
        s.http.api_token = token;
    }
    let wechat = &mut s.gateways.wechat_pay;
    if let Some(key) = read("gateways.wechat_pay.apiv3_key_file", &wechat.apiv3_key_file)? {
        wechat.apiv3_key = key;
    }
    Ok(())
}

/// The file's content without its trailing newline; None when `path` is
/// empty (the key is unused).
fn read(key: &'static str, path: &str) -> Result<Option<Secret>, ConfigError> {
    if path.is_empty() {
        return Ok(None);
    }
    let invalid = |problem: String| ConfigError::Invalid {
        key,
        message: format!("cannot read {}: {problem}", Path::new(path).display()),
    };
    let bytes = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
    // Not from_utf8's error: it would not quote the bytes, but say nothing
    // of them either way.
    let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8 text".into()))?;
    Ok(Some(Secret(
        text.trim_end_matches(['\n', '\r']).to_string(),
    )))
}

/// `url` with its password replaced; `Url` percent-encodes what a password
/// may hold that a URL may not (`@`, `:`, `/`, `%`, …).
fn with_password(
    key: &'static str,
    url: &Secret,
    password: &Secret,
) -> Result<Secret, ConfigError> {
    let invalid = |message: &str| ConfigError::Invalid {
        key,
        message: message.to_string(),
    };
    let mut parsed = url::Url::parse(url.expose()).map_err(|_| invalid("is not a URL"))?;
    parsed
        .set_password(Some(password.expose()))
        .map_err(|()| invalid("has no host to log in to"))?;
    Ok(Secret(parsed.to_string()))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    fn path(f: &tempfile::NamedTempFile) -> String {
        f.path().to_string_lossy().into_owned()
    }

    #[test]
    fn unset_keys_change_nothing() {
        let mut s = Settings::default();
        apply(&mut s).unwrap();
        assert_eq!(s.amqp.url, Settings::default().amqp.url);
        assert_eq!(s.database.url, Settings::default().database.url);
    }

    #[test]
    fn files_replace_passwords_token_and_key() {
        let db = file("DbFilePw-91\n");
        let amqp = file("p@ss:w/rd%Z\r\n");
        let token = file("TokenFromFile-1\n\n");
        let key = file("0123456789abcdef0123456789ABCDEF");
        let mut s = Settings::default();
        s.amqp.url = Secret(
            "amqp://guest:guest@127.0.0.1:5672/%2f, amqp://guest:x@127.0.0.1:5673/%2f".into(),
        );
        s.database.password_file = path(&db);
        s.amqp.password_file = path(&amqp);
        s.http.api_token_file = path(&token);
        s.gateways.wechat_pay.apiv3_key_file = path(&key);
        apply(&mut s).unwrap();
        assert_eq!(
            s.database.url.expose(),
            "postgres://postgres:DbFilePw-91@127.0.0.1:5432/payrecon"
        );
        let urls = s.amqp.urls();
        assert_eq!(urls.len(), 2);
        for (url, port) in urls.iter().zip([5672, 5673]) {
            // What the AMQP client decodes is the file's password, verbatim.
            let uri: lapin::uri::AMQPUri = url.expose().parse().unwrap();
            assert_eq!(uri.authority.userinfo.username, "guest");
            assert_eq!(uri.authority.userinfo.password, "p@ss:w/rd%Z");
            assert_eq!(uri.authority.port, port);
        }
        assert_eq!(s.http.api_token.expose(), "TokenFromFile-1");
        assert_eq!(
            s.gateways.wechat_pay.apiv3_key.expose(),
            "0123456789abcdef0123456789ABCDEF"
        );
        s.validate().unwrap();
    }

    #[test]
    fn a_missing_file_names_key_and_path_only() {
        let mut s = Settings::default();
        s.amqp.password_file = "/nonexistent/payrecon/amqp-password".into();
        let e = apply(&mut s).unwrap_err().to_string();
        assert!(e.contains("amqp.password_file"), "{e}");
        assert!(e.contains("/nonexistent/payrecon/amqp-password"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn an_unreadable_file_does_not_show_its_content() {
        let bad = file("");
        std::fs::write(bad.path(), b"SecretBytes-77\xff\xfe").unwrap();
        let mut s = Settings::default();
        s.http.api_token_file = path(&bad);
        let e = apply(&mut s).unwrap_err().to_string();
        assert!(
            e.contains("http.api_token_file") && e.contains("UTF-8"),
            "{e}"
        );
        assert!(!e.contains("SecretBytes"), "{e}");
        // A directory cannot be read as a file either.
        s.http.api_token_file = std::env::temp_dir().to_string_lossy().into_owned();
        let e = apply(&mut s).unwrap_err().to_string();
        assert!(e.contains("http.api_token_file"), "{e}");
    }

    #[test]
    fn debug_of_loaded_settings_shows_no_file_content() {
        let pw = file("FilePw-Debug-5\n");
        let mut s = Settings::default();
        s.amqp.password_file = path(&pw);
        s.database.password_file = path(&pw);
        apply(&mut s).unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("FilePw-Debug-5"), "{debug}");
    }

    #[test]
    fn load_reads_the_files_a_config_file_names() {
        let pw = file("LoadPw-3\n");
        let config = file(&format!(
            "[amqp]\nurl = \"amqp://guest:old@127.0.0.1:5672/%2f,amqp://guest:old@127.0.0.1:5673/%2f\"\npassword_file = {:?}\n",
            path(&pw)
        ));
        let s = Settings::load(Some(config.path())).unwrap();
        let urls: Vec<String> = s.amqp.urls().iter().map(|u| u.0.clone()).collect();
        assert_eq!(
            urls,
            [
                "amqp://guest:LoadPw-3@127.0.0.1:5672/%2f",
                "amqp://guest:LoadPw-3@127.0.0.1:5673/%2f"
            ]
        );
        let missing = file("[database]\npassword_file = \"/nonexistent/pg-pw\"\n");
        let e = Settings::load(Some(missing.path()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "configuration key database.password_file: cannot read /nonexistent/pg-pw: \
             No such file or directory (os error 2)"
        );
    }
}
