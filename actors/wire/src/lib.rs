//! orfeas protocol v1: what agents and nodes say to each other over NATS.
//!
//! Every message is CBOR inside a COSE_Sign1 envelope signed with Ed25519
//! ([`envelope`]). The payload types live in [`v1`]; subjects in
//! [`subjects`]; the stable error codes every rejection and failure carries
//! in [`codes`]. This crate has no async runtime and no libtorch so an agent's
//! client can depend on it alone.
#![warn(missing_docs)]

#[cfg(feature = "client")]
pub mod client;
pub mod codes;
pub mod envelope;
pub mod keys;
pub mod subjects;
pub mod v1;

pub use codes::ErrorCode;
pub use envelope::{Claims, ContentKind, EnvelopeError, Opened};
pub use keys::{KeyId, NodeKey, PublicKey, SecretKey};

/// Encode a value as CBOR.
pub fn to_cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    // Writing into a Vec cannot fail except for types serde cannot represent,
    // which none of ours are.
    ciborium::into_writer(value, &mut out).expect("cbor encoding into a Vec");
    out
}

/// Decode a value from CBOR, refusing trailing bytes.
pub fn from_cbor<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut reader = bytes;
    // A small recursion limit: none of our messages nest deeper than a few levels.
    let value = ciborium::de::from_reader_with_recursion_limit(&mut reader, 16)
        .map_err(|e| format!("cbor: {e}"))?;
    if !reader.is_empty() {
        return Err(format!("cbor: {} trailing bytes", reader.len()));
    }
    Ok(value)
}
