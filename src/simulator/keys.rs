//! The simulator's key files (docs/contract.md §1). They are the interface between the
//! simulator and its clients: the daemon in simulator mode reads the merchant /
//! app private keys and the platform / Alipay public keys from the same folder.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::gateway::crypto::{random_nonce, RsaPrivateKey, RsaPublicKey};

use super::SimError;

pub const WECHAT_MERCHANT_PRIVATE: &str = "wechat_merchant_private.pem";
pub const WECHAT_MERCHANT_PUBLIC: &str = "wechat_merchant_public.pem";
pub const WECHAT_PLATFORM_PRIVATE: &str = "wechat_platform_private.pem";
pub const WECHAT_PLATFORM_PUBLIC: &str = "wechat_platform_public.pem";
pub const WECHAT_APIV3_KEY: &str = "wechat_apiv3_key";
pub const ALIPAY_APP_PRIVATE: &str = "alipay_app_private.pem";
pub const ALIPAY_APP_PUBLIC: &str = "alipay_app_public.pem";
pub const ALIPAY_PRIVATE: &str = "alipay_private.pem";
pub const ALIPAY_PUBLIC: &str = "alipay_public.pem";

/// Every key both sides of both protocols use. The simulator itself needs only
/// the merchant/app public keys (to verify requests) and the platform/Alipay
/// private keys (to sign); the rest is here so tests can play the client.
#[derive(Debug)]
pub struct SimKeys {
    pub wechat_merchant_private: RsaPrivateKey,
    pub wechat_merchant_public: RsaPublicKey,
    pub wechat_platform_private: RsaPrivateKey,
    pub wechat_platform_public: RsaPublicKey,
    pub wechat_apiv3_key: String,
    pub alipay_app_private: RsaPrivateKey,
    pub alipay_app_public: RsaPublicKey,
    pub alipay_private: RsaPrivateKey,
    pub alipay_public: RsaPublicKey,
}

impl SimKeys {
    /// Uses the files that exist as they are and creates the missing ones. A
    /// public key alone (without its private key) is refused rather than paired
    /// with a fresh, unrelated private key; a pair that does not match is refused.
    pub fn load_or_create(dir: &Path) -> Result<SimKeys, SimError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let (wechat_merchant_private, wechat_merchant_public) =
            pair(dir, WECHAT_MERCHANT_PRIVATE, WECHAT_MERCHANT_PUBLIC)?;
        let (wechat_platform_private, wechat_platform_public) =
            pair(dir, WECHAT_PLATFORM_PRIVATE, WECHAT_PLATFORM_PUBLIC)?;
        let (alipay_app_private, alipay_app_public) =
            pair(dir, ALIPAY_APP_PRIVATE, ALIPAY_APP_PUBLIC)?;
        let (alipay_private, alipay_public) = pair(dir, ALIPAY_PRIVATE, ALIPAY_PUBLIC)?;
        let wechat_apiv3_key = apiv3_key(dir)?;
        Ok(SimKeys {
            wechat_merchant_private,
            wechat_merchant_public,
            wechat_platform_private,
            wechat_platform_public,
            wechat_apiv3_key,
            alipay_app_private,
            alipay_app_public,
            alipay_private,
            alipay_public,
        })
    }
}

fn io_err(path: &Path, e: std::io::Error) -> SimError {
    SimError::Keys(format!("{}: {e}", path.display()))
}

fn pair(
    dir: &Path,
    private_name: &str,
    public_name: &str,
) -> Result<(RsaPrivateKey, RsaPublicKey), SimError> {
    let private_path = dir.join(private_name);
    let public_path = dir.join(public_name);
    let private = match read_optional(&private_path)? {
        Some(text) => RsaPrivateKey::from_pem(&text)
            .map_err(|e| SimError::Keys(format!("{}: {e}", private_path.display())))?,
        None => {
            if public_path.exists() {
                return Err(SimError::Keys(format!(
                    "{} exists without {}: bring both or neither",
                    public_path.display(),
                    private_path.display()
                )));
            }
            let key = RsaPrivateKey::generate_2048().map_err(|e| SimError::Keys(e.to_string()))?;
            let pem = key
                .to_pkcs8_pem()
                .map_err(|e| SimError::Keys(e.to_string()))?;
            // Another process may have created it meanwhile: theirs wins, so
            // both processes end up with the same key.
            match write_new(&private_path, pem.as_bytes(), true)? {
                true => key,
                false => RsaPrivateKey::from_pem_file(&private_path)
                    .map_err(|e| SimError::Keys(e.to_string()))?,
            }
        }
    };
    let derived = private
        .public_key()
        .map_err(|e| SimError::Keys(e.to_string()))?;
    let public = match read_optional(&public_path)? {
        Some(text) => RsaPublicKey::from_pem(&text)
            .map_err(|e| SimError::Keys(format!("{}: {e}", public_path.display())))?,
        None => {
            write_new(&public_path, derived.to_pem().as_bytes(), false)?;
            RsaPublicKey::from_pem_file(&public_path).map_err(|e| SimError::Keys(e.to_string()))?
        }
    };
    if public != derived {
        return Err(SimError::Keys(format!(
            "{} is not the public half of {}",
            public_path.display(),
            private_path.display()
        )));
    }
    Ok((private, public))
}

fn apiv3_key(dir: &Path) -> Result<String, SimError> {
    let path = dir.join(WECHAT_APIV3_KEY);
    let text = match read_optional(&path)? {
        Some(text) => text,
        None => {
            let fresh = random_nonce(32);
            write_new(&path, fresh.as_bytes(), true)?;
            std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?
        }
    };
    // An editor's trailing newline is not part of the key.
    let key = text.trim_end_matches(['\r', '\n']).to_string();
    if key.len() != 32 || !key.is_ascii() {
        return Err(SimError::Keys(format!(
            "{}: the APIv3 key must be 32 ASCII characters",
            path.display()
        )));
    }
    Ok(key)
}

fn read_optional(path: &Path) -> Result<Option<String>, SimError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Writes `bytes` to `path` only if it does not exist yet, atomically: a
/// reader never sees a half-written key. `false` when someone else won.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<bool, SimError> {
    let tmp = PathBuf::from(format!("{}.tmp-{}", path.display(), random_nonce(8)));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = secret;
        let mut file = options.open(&tmp).map_err(|e| io_err(&tmp, e))?;
        file.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
        file.sync_all().map_err(|e| io_err(&tmp, e))?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reuses_and_refuses_orphan_public_keys() {
        let dir = tempfile::tempdir().unwrap();
        let first = SimKeys::load_or_create(dir.path()).unwrap();
        let again = SimKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(first.wechat_platform_public, again.wechat_platform_public);
        assert_eq!(first.wechat_apiv3_key, again.wechat_apiv3_key);
        let raw = std::fs::read(dir.path().join(WECHAT_APIV3_KEY)).unwrap();
        assert_eq!(raw.len(), 32);

        std::fs::remove_file(dir.path().join(ALIPAY_PUBLIC)).unwrap();
        let derived = SimKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(derived.alipay_public, first.alipay_public);

        std::fs::remove_file(dir.path().join(ALIPAY_PRIVATE)).unwrap();
        assert!(SimKeys::load_or_create(dir.path()).is_err());
    }

    #[test]
    fn refuses_a_mismatched_pair() {
        let dir = tempfile::tempdir().unwrap();
        SimKeys::load_or_create(dir.path()).unwrap();
        let other = RsaPrivateKey::generate_2048().unwrap();
        std::fs::write(
            dir.path().join(WECHAT_MERCHANT_PUBLIC),
            other.public_key().unwrap().to_pem(),
        )
        .unwrap();
        let err = SimKeys::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not the public half"), "{err}");
    }
}
