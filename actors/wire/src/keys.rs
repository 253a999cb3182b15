//! Ed25519 keys of agents and nodes, their ids and their text forms.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Prefix of the one-line text form of a secret key.
const SECRET_PREFIX: &str = "orfeas-ed25519-secret-v1:";

/// Problems reading or accepting a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not the expected text form or length.
    #[error("key is not {expected}: {detail}")]
    Format {
        /// What was expected.
        expected: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A small-order public key: signatures under it prove nothing.
    #[error("public key {0} is weak (small order) and is refused")]
    Weak(String),
}

/// A signing key (agent or node). Never printed.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

/// A verifying key, 32 bytes, written as 64 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

/// Short id of a public key (first 8 bytes of its SHA-256, hex): the COSE `kid`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub String);

/// The key a node signs its events with (same type as an agent key).
pub type NodeKey = SecretKey;

impl SecretKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("operating system random source");
        Self(SigningKey::from_bytes(&seed))
    }

    /// A key from a 32-byte seed (tests and fixtures).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// Parse the one-line text form written by [`SecretKey::to_text`].
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let hex_part = text.trim().strip_prefix(SECRET_PREFIX).ok_or_else(|| KeyError::Format {
            expected: "an orfeas secret key",
            detail: format!("missing prefix {SECRET_PREFIX:?}"),
        })?;
        let seed: [u8; 32] = decode_hex32(hex_part, "an orfeas secret key")?;
        Ok(Self::from_seed(seed))
    }

    /// One line: prefix + 64 hex digits of the seed.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", hex::encode(self.0.to_bytes()))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The same key as a NATS user nkey seed (`SU…`): an agent connects to
    /// a deployment with the shipped isolation config (`nats/isolation.conf`)
    /// using the key it signs with.
    pub fn nats_seed(&self) -> String {
        let (b1, b2) = (NKEY_SEED | NKEY_USER >> 5, (NKEY_USER & 31) << 3);
        nkey_encode(&[b1, b2], &self.0.to_bytes())
    }

    /// Sign `data` (Ed25519 is deterministic: same key and data, same signature).
    pub fn sign(&self, data: &[u8]) -> [u8; 64] {
        self.0.sign(data).to_bytes()
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(kid={})", self.public().id().0)
    }
}

impl PublicKey {
    /// Parse 64 hex digits; weak (small-order) keys are refused.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let bytes = decode_hex32(text.trim(), "64 hex digits of an Ed25519 public key")?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| KeyError::Format {
            expected: "an Ed25519 public key",
            detail: e.to_string(),
        })?;
        if key.is_weak() {
            return Err(KeyError::Weak(text.trim().to_string()));
        }
        Ok(Self(key))
    }

    /// 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    /// The same key as a NATS user nkey (`U…`, public): the user name of
    /// its agent in the isolation config.
    pub fn nats_user(&self) -> String {
        nkey_encode(&[NKEY_USER], self.0.as_bytes())
    }

    /// The key's id used as COSE `kid`.
    pub fn id(&self) -> KeyId {
        let digest = Sha256::digest(self.0.to_bytes());
        KeyId(hex::encode(&digest[..8]))
    }

    /// Strict verification (rejects non-canonical signatures and small-order points).
    pub fn verify_strict(&self, data: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.0.verify_strict(data, &sig).is_ok()
    }
}

/// nkey prefix byte of a seed.
const NKEY_SEED: u8 = 18 << 3;
/// nkey prefix byte of a user.
const NKEY_USER: u8 = 20 << 3;

/// NATS nkey text: base32 (RFC 4648, no padding) of prefix + key + CRC-16
/// (XMODEM, little endian).
fn nkey_encode(prefix: &[u8], key: &[u8]) -> String {
    let mut raw = Vec::with_capacity(prefix.len() + key.len() + 2);
    raw.extend_from_slice(prefix);
    raw.extend_from_slice(key);
    let mut crc = 0u16;
    for &b in &raw {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    raw.extend_from_slice(&crc.to_le_bytes());
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(raw.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in &raw {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn decode_hex32(text: &str, expected: &'static str) -> Result<[u8; 32], KeyError> {
    let bytes = hex::decode(text).map_err(|e| KeyError::Format { expected, detail: e.to_string() })?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| KeyError::Format { expected, detail: format!("{} bytes, want 32", b.len()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_key_text_round_trips() {
        let key = SecretKey::generate();
        let again = SecretKey::from_text(&key.to_text()).unwrap();
        assert_eq!(key.public(), again.public());
        assert!(SecretKey::from_text("nope").is_err());
    }

    #[test]
    fn public_key_refuses_weak_and_bad_hex() {
        // The identity point is of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(PublicKey::from_hex(&hex::encode(identity)), Err(KeyError::Weak(_))));
        assert!(PublicKey::from_hex("abcd").is_err());
        let key = SecretKey::from_seed([7; 32]).public();
        assert_eq!(PublicKey::from_hex(&key.to_hex()).unwrap(), key);
        assert_eq!(key.id().0.len(), 16);
    }

    #[test]
    fn nats_nkeys_have_their_prefixes_and_lengths() {
        let key = SecretKey::from_seed([7; 32]);
        let user = key.public().nats_user();
        let seed = key.nats_seed();
        // 1 + 32 + 2 bytes → 56 base32 characters; 2 + 32 + 2 → 58.
        assert!(user.starts_with('U') && user.len() == 56, "{user}");
        assert!(seed.starts_with("SU") && seed.len() == 58, "{seed}");
        assert_ne!(SecretKey::from_seed([8; 32]).public().nats_user(), user);
    }

    #[test]
    fn verify_strict_rejects_tampering() {
        let key = SecretKey::from_seed([1; 32]);
        let sig = key.sign(b"hello");
        assert!(key.public().verify_strict(b"hello", &sig));
        assert!(!key.public().verify_strict(b"hellp", &sig));
        assert!(!key.public().verify_strict(b"hello", &sig[..63]));
    }
}
