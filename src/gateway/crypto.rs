//! The cryptography both protocols share, on aws-lc-rs (not the `rsa` crate:
//! RUSTSEC-2023-0071 makes its private-key operations leak timing).
//!
//! - SHA256withRSA (RSASSA-PKCS1-v1_5) signatures, Base64: WeChat Pay's
//!   Authorization and response signatures, Alipay's RSA2.
//! - AEAD_AES_256_GCM: WeChat Pay's notification `resource`.
//! - RSA-2048 key generation and PEM files: the simulator's keys on first start.

use std::fmt;
use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{self, KeyPair as _, UnparsedPublicKey};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("key: {0}")]
    Key(String),
    #[error("signing failed")]
    Sign,
    #[error("AEAD: {0}")]
    Aead(&'static str),
}

/// An RSA private key for signing. Its Debug never prints key material.
pub struct RsaPrivateKey {
    pair: KeyPair,
}

impl fmt::Debug for RsaPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RsaPrivateKey(..)")
    }
}

impl RsaPrivateKey {
    pub fn generate_2048() -> Result<Self, CryptoError> {
        let pair =
            KeyPair::generate(KeySize::Rsa2048).map_err(|e| CryptoError::Key(e.to_string()))?;
        Ok(Self { pair })
    }

    /// Accepts PKCS#8 (`BEGIN PRIVATE KEY`) and PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    pub fn from_pem(text: &str) -> Result<Self, CryptoError> {
        let block = pem::parse(text.trim()).map_err(|e| CryptoError::Key(e.to_string()))?;
        let pair = match block.tag() {
            "PRIVATE KEY" => KeyPair::from_pkcs8(block.contents()),
            "RSA PRIVATE KEY" => KeyPair::from_der(block.contents()),
            other => return Err(CryptoError::Key(format!("unexpected PEM block {other:?}"))),
        }
        .map_err(|e| CryptoError::Key(e.to_string()))?;
        Ok(Self { pair })
    }

    pub fn from_pem_file(path: &Path) -> Result<Self, CryptoError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CryptoError::Key(format!("{}: {e}", path.display())))?;
        Self::from_pem(&text)
    }

    pub fn to_pkcs8_pem(&self) -> Result<String, CryptoError> {
        let der =
            AsDer::<Pkcs8V1Der>::as_der(&self.pair).map_err(|e| CryptoError::Key(e.to_string()))?;
        Ok(pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            der.as_ref().to_vec(),
        )))
    }

    pub fn public_key(&self) -> Result<RsaPublicKey, CryptoError> {
        let der = AsDer::<PublicKeyX509Der>::as_der(self.pair.public_key())
            .map_err(|e| CryptoError::Key(e.to_string()))?;
        Ok(RsaPublicKey {
            spki: der.as_ref().to_vec(),
        })
    }

    /// SHA256withRSA over `message`, Base64 (standard alphabet, padded).
    pub fn sign_sha256_base64(&self, message: &[u8]) -> Result<String, CryptoError> {
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut sig,
            )
            .map_err(|_| CryptoError::Sign)?;
        Ok(B64.encode(sig))
    }
}

/// An RSA public key (X.509 SubjectPublicKeyInfo DER) for verifying.
#[derive(Clone, PartialEq, Eq)]
pub struct RsaPublicKey {
    spki: Vec<u8>,
}

impl fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaPublicKey({} bytes)", self.spki.len())
    }
}

impl RsaPublicKey {
    /// Accepts SPKI (`BEGIN PUBLIC KEY`), the form both gateways hand out.
    pub fn from_pem(text: &str) -> Result<Self, CryptoError> {
        let block = pem::parse(text.trim()).map_err(|e| CryptoError::Key(e.to_string()))?;
        if block.tag() != "PUBLIC KEY" {
            return Err(CryptoError::Key(format!(
                "expected a PUBLIC KEY PEM, got {:?}",
                block.tag()
            )));
        }
        let key = Self {
            spki: block.contents().to_vec(),
        };
        // Parse once now so a bad key fails at startup, not at the first notification.
        signature::ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &key.spki)
            .map_err(|e| CryptoError::Key(e.to_string()))?;
        Ok(key)
    }

    pub fn from_pem_file(path: &Path) -> Result<Self, CryptoError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CryptoError::Key(format!("{}: {e}", path.display())))?;
        Self::from_pem(&text)
    }

    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki.clone()))
    }

    /// `sha256:` and the lower-case hex SHA-256 of the SPKI DER: names the key
    /// without carrying it (the simulator's identity compares these).
    pub fn sha256_fingerprint(&self) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.spki);
        format!("sha256:{}", hex::encode(digest))
    }

    /// Verifies a Base64 SHA256withRSA signature. Any malformed input is simply `false`.
    pub fn verify_sha256_base64(&self, message: &[u8], signature_b64: &str) -> bool {
        let Ok(sig) = B64.decode(signature_b64.trim()) else {
            return false;
        };
        UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &self.spki)
            .verify(message, &sig)
            .is_ok()
    }
}

/// WeChat Pay's AEAD_AES_256_GCM: key = the 32-byte APIv3 key, IV = the
/// 12-byte nonce string, ciphertext = Base64(ciphertext ‖ 16-byte tag).
pub fn aes_256_gcm_decrypt(
    key: &[u8],
    nonce: &[u8],
    associated_data: &[u8],
    ciphertext_b64: &str,
) -> Result<Vec<u8>, CryptoError> {
    let mut data = B64
        .decode(ciphertext_b64.trim())
        .map_err(|_| CryptoError::Aead("ciphertext is not Base64"))?;
    let key = less_safe_key(key)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce)
        .map_err(|_| CryptoError::Aead("nonce must be 12 bytes"))?;
    let plain = key
        .open_in_place(nonce, Aad::from(associated_data), &mut data)
        .map_err(|_| CryptoError::Aead("authentication failed"))?;
    Ok(plain.to_vec())
}

/// The inverse of [`aes_256_gcm_decrypt`] (the simulator encrypts notifications).
pub fn aes_256_gcm_encrypt(
    key: &[u8],
    nonce: &[u8],
    associated_data: &[u8],
    plaintext: &[u8],
) -> Result<String, CryptoError> {
    let key = less_safe_key(key)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce)
        .map_err(|_| CryptoError::Aead("nonce must be 12 bytes"))?;
    let mut data = plaintext.to_vec();
    key.seal_in_place_append_tag(nonce, Aad::from(associated_data), &mut data)
        .map_err(|_| CryptoError::Aead("seal failed"))?;
    Ok(B64.encode(data))
}

fn less_safe_key(key: &[u8]) -> Result<LessSafeKey, CryptoError> {
    let unbound = UnboundKey::new(&AES_256_GCM, key)
        .map_err(|_| CryptoError::Aead("key must be 32 bytes"))?;
    Ok(LessSafeKey::new(unbound))
}

/// SHA-1 of `data`, lower-case hex (WeChat Pay's bill `hash_value`).
pub fn sha1_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        data,
    ))
}

/// A random string of `len` characters from `[0-9A-Z]`, for nonces.
pub fn random_nonce(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/gateways.md A3's vector, computed with Python `cryptography` and
    /// cross-checked with `wechatpayv3.utils.aes_decrypt`.
    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const CIPHERTEXT: &str = "XB6AYUjndFbh+NAj34vT6jX9mbJcV0bdIxf2VusbB7eArrnvM1kld01s1LR+IT/ueVRLPXc5XQjYtdiQlWGCNWtt2WsOe+49F3r/m1P4mw4Rag==";
    const PLAINTEXT: &str = r#"{"out_trade_no":"T1","trade_state":"SUCCESS","amount":{"total":1}}"#;

    #[test]
    fn aead_matches_the_independent_vector() {
        let plain = aes_256_gcm_decrypt(KEY, b"a1b2c3d4e5f6", b"transaction", CIPHERTEXT).unwrap();
        assert_eq!(plain, PLAINTEXT.as_bytes());
        let sealed =
            aes_256_gcm_encrypt(KEY, b"a1b2c3d4e5f6", b"transaction", PLAINTEXT.as_bytes())
                .unwrap();
        assert_eq!(sealed, CIPHERTEXT);
    }

    #[test]
    fn aead_rejects_tampering() {
        assert!(aes_256_gcm_decrypt(KEY, b"a1b2c3d4e5f6", b"refund", CIPHERTEXT).is_err());
        assert!(aes_256_gcm_decrypt(KEY, b"a1b2c3d4e5f7", b"transaction", CIPHERTEXT).is_err());
        let mut bytes = B64.decode(CIPHERTEXT).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(
            aes_256_gcm_decrypt(KEY, b"a1b2c3d4e5f6", b"transaction", &B64.encode(bytes)).is_err()
        );
        assert!(aes_256_gcm_decrypt(
            b"0123456789abcdef0123456789abcdeX",
            b"a1b2c3d4e5f6",
            b"transaction",
            CIPHERTEXT
        )
        .is_err());
    }

    #[test]
    fn rsa_sign_verify_round_trip_through_pem() {
        let key = RsaPrivateKey::generate_2048().unwrap();
        let key = RsaPrivateKey::from_pem(&key.to_pkcs8_pem().unwrap()).unwrap();
        let public = RsaPublicKey::from_pem(&key.public_key().unwrap().to_pem()).unwrap();
        let sig = key.sign_sha256_base64(b"hello").unwrap();
        assert!(public.verify_sha256_base64(b"hello", &sig));
        assert!(!public.verify_sha256_base64(b"hellO", &sig));
        assert!(!public.verify_sha256_base64(b"hello", "not base64!"));
        let other = RsaPrivateKey::generate_2048()
            .unwrap()
            .public_key()
            .unwrap();
        assert!(!other.verify_sha256_base64(b"hello", &sig));
    }

    #[test]
    /// Expected value from `printf abc | sha1sum`.
    fn sha1_of_known_input() {
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
