//! The signed envelope: COSE_Sign1 (RFC 9052) with Ed25519.
//!
//! Protected header: `alg` = Ed25519 (-19), a content type naming the message
//! kind and version, `kid`, CWT claims (label 15: `iss`, `aud`, `iat`, `exp`,
//! `cti`), the operation and the events subject. External AAD = a domain
//! string + the NATS subject, so a signature is bound to where it was sent.
//! Verification runs over the bytes received (coset keeps the original
//! protected-header bytes), never over a re-encoding.

use coset::{
    cwt::{ClaimsSetBuilder, Timestamp},
    iana, AsCborValue, CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, Label,
};

use crate::{
    codes::ErrorCode,
    keys::{KeyId, PublicKey, SecretKey},
};

/// Domain separation prefix of the external AAD.
const AAD_DOMAIN: &[u8] = b"orfeas.v1\0";
/// COSE header label of CWT claims (RFC 9597).
const CWT_CLAIMS_LABEL: i64 = 15;
/// Private header label: the operation.
const OP_LABEL: &str = "orfeas.op";
/// Private header label: the subject the sender expects events on.
const EVENTS_LABEL: &str = "orfeas.events";

/// Which message the payload is; part of the signed content type so a signed
/// event can never be accepted as a submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentKind {
    /// [`crate::v1::SubmitJob`] from an agent.
    SubmitJob,
    /// [`crate::v1::Event`] from a node.
    Event,
    /// [`crate::v1::FetchRequest`] from an agent.
    FetchRequest,
    /// [`crate::v1::StatusRequest`] from an agent.
    StatusRequest,
    /// [`crate::v1::CancelRequest`] from an agent.
    CancelRequest,
    /// [`crate::v1::SubmitBatch`] from an agent.
    SubmitBatch,
    /// A node's signature over its reply to a status or cancel request
    /// (detached: the reply's CBOR is the payload, see [`crate::v1::seal_reply`]).
    Reply,
}

impl ContentKind {
    /// The content type string in the protected header.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::SubmitJob => "application/orfeas.submit-job.v1+cbor",
            Self::Event => "application/orfeas.event.v1+cbor",
            Self::FetchRequest => "application/orfeas.fetch.v1+cbor",
            Self::StatusRequest => "application/orfeas.status.v1+cbor",
            Self::CancelRequest => "application/orfeas.cancel.v1+cbor",
            Self::SubmitBatch => "application/orfeas.submit-batch.v1+cbor",
            Self::Reply => "application/orfeas.reply.v1+cbor",
        }
    }

    fn from_content_type(text: &str) -> Option<Self> {
        [Self::SubmitJob, Self::Event, Self::FetchRequest, Self::StatusRequest, Self::CancelRequest, Self::SubmitBatch, Self::Reply].into_iter().find(|k| k.content_type() == text)
    }
}

/// Length of the `cti` nonce, bytes: 16 random bytes (128 bits), so two
/// honest messages never share one; any other length is `malformed`.
pub const NONCE_LEN: usize = 16;

/// The CWT claims every envelope carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Issuer: the agent's name (or the node id for events).
    pub iss: String,
    /// Audience: the deployment name.
    pub aud: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// Random nonce, 16 bytes.
    pub cti: Vec<u8>,
}

impl Claims {
    /// Claims valid from `now_s` for `lifetime_s`, with a fresh random nonce.
    pub fn new(iss: &str, aud: &str, now_s: u64, lifetime_s: u64) -> Self {
        let mut cti = vec![0u8; NONCE_LEN];
        getrandom::fill(&mut cti).expect("operating system random source");
        Self { iss: iss.to_string(), aud: aud.to_string(), iat: now_s, exp: now_s + lifetime_s, cti }
    }
}

/// Why an envelope was refused. Each maps onto a stable [`ErrorCode`].
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Larger than the cap.
    #[error("message of {len} bytes exceeds the cap of {cap} bytes")]
    TooLarge {
        /// Bytes received.
        len: usize,
        /// The cap.
        cap: usize,
    },
    /// Not a well-formed envelope of ours.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// Valid envelope of another kind than expected.
    #[error("content type {got:?} where {want:?} was expected")]
    WrongKind {
        /// What arrived.
        got: String,
        /// What was expected.
        want: &'static str,
    },
    /// Signature failed.
    #[error("signature does not verify for key {0}")]
    BadSignature(String),
    /// Outside the validity window.
    #[error("message valid from {iat} to {exp}, server time is {now}")]
    Stale {
        /// Claimed issue time.
        iat: u64,
        /// Claimed expiry.
        exp: u64,
        /// Server time, seconds.
        now: u64,
    },
    /// Audience is not this deployment.
    #[error("audience {got:?} is not this deployment ({want:?})")]
    WrongAudience {
        /// Claimed.
        got: String,
        /// Ours.
        want: String,
    },
}

impl EnvelopeError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::Malformed(_) | Self::WrongKind { .. } => ErrorCode::Malformed,
            Self::BadSignature(_) => ErrorCode::BadSignature,
            Self::Stale { .. } => ErrorCode::Stale,
            Self::WrongAudience { .. } => ErrorCode::Forbidden,
        }
    }
}

/// Build the external AAD for a subject.
fn external_aad(subject: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_DOMAIN.len() + subject.len());
    aad.extend_from_slice(AAD_DOMAIN);
    aad.extend_from_slice(subject.as_bytes());
    aad
}

/// What to put in the protected header besides the claims.
#[derive(Clone, Debug)]
pub struct Seal<'a> {
    /// Message kind.
    pub kind: ContentKind,
    /// Claims.
    pub claims: &'a Claims,
    /// Operation name (`submit`, `event`, …).
    pub op: &'a str,
    /// The subject the sender expects events on, if any.
    pub events_subject: Option<&'a str>,
}

/// Sign `payload` for publication on `subject`.
pub fn seal(header: &Seal<'_>, payload: Vec<u8>, subject: &str, key: &SecretKey) -> Vec<u8> {
    CoseSign1Builder::new()
        .protected(protected_header(header, key))
        .payload(payload)
        .create_signature(&external_aad(subject), |data| key.sign(data).to_vec())
        .build()
        .to_vec()
        .expect("cose encode")
}

/// Sign `payload` bound to `subject` with a detached payload: the COSE_Sign1
/// carries `nil` where the payload would be, and the verifier supplies the
/// bytes it received beside it ([`open_detached`]).
pub fn seal_detached(header: &Seal<'_>, payload: &[u8], subject: &str, key: &SecretKey) -> Vec<u8> {
    CoseSign1Builder::new()
        .protected(protected_header(header, key))
        .create_detached_signature(payload, &external_aad(subject), |data| key.sign(data).to_vec())
        .build()
        .to_vec()
        .expect("cose encode")
}

fn protected_header(header: &Seal<'_>, key: &SecretKey) -> coset::Header {
    let claims = ClaimsSetBuilder::new()
        .issuer(header.claims.iss.clone())
        .audience(header.claims.aud.clone())
        .issued_at(Timestamp::WholeSeconds(header.claims.iat as i64))
        .expiration_time(Timestamp::WholeSeconds(header.claims.exp as i64))
        .cwt_id(header.claims.cti.clone())
        .build()
        .to_cbor_value()
        .expect("claims encode");
    let mut protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::Ed25519)
        .content_type(header.kind.content_type().to_string())
        .key_id(key.public().id().0.into_bytes())
        .value(CWT_CLAIMS_LABEL, claims)
        .text_value(OP_LABEL.to_string(), header.op.into());
    if let Some(events) = header.events_subject {
        protected = protected.text_value(EVENTS_LABEL.to_string(), events.into());
    }
    protected.build()
}

/// A decoded but not yet verified envelope. Nothing in it may be trusted
/// until [`Opened::verify`] succeeded.
#[derive(Clone, Debug)]
pub struct Opened {
    /// Message kind from the protected content type.
    pub kind: ContentKind,
    /// Claims from the protected header.
    pub claims: Claims,
    /// Key id from the protected header.
    pub kid: KeyId,
    /// Operation from the protected header.
    pub op: String,
    /// Events subject from the protected header.
    pub events_subject: Option<String>,
    /// The payload bytes as received.
    pub payload: Vec<u8>,
    sign1: CoseSign1,
}

/// Decode an envelope of `want` kind, at most `cap` bytes. Only reads; the
/// caller looks up the key by `claims.iss` and `kid`, then calls `verify`.
pub fn open(bytes: &[u8], cap: usize, want: ContentKind) -> Result<Opened, EnvelopeError> {
    open_one_of(bytes, cap, &[want])
}

/// [`open`] accepting any of the kinds in `wants` (the submit subject takes
/// single jobs and batches).
pub fn open_one_of(bytes: &[u8], cap: usize, wants: &[ContentKind]) -> Result<Opened, EnvelopeError> {
    if bytes.len() > cap {
        return Err(EnvelopeError::TooLarge { len: bytes.len(), cap });
    }
    let sign1 = CoseSign1::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(format!("cose: {e:?}")))?;
    parse(sign1, wants)
}

/// Decode a detached-payload envelope of `want` kind (at most `cap` bytes)
/// whose payload is `payload`, received beside it; then [`Opened::verify`]
/// as for any envelope.
pub fn open_detached(bytes: &[u8], payload: &[u8], cap: usize, want: ContentKind) -> Result<Opened, EnvelopeError> {
    if bytes.len() > cap {
        return Err(EnvelopeError::TooLarge { len: bytes.len(), cap });
    }
    let mut sign1 = CoseSign1::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(format!("cose: {e:?}")))?;
    if sign1.payload.is_some() {
        return Err(EnvelopeError::Malformed("a detached signature carries a payload".into()));
    }
    sign1.payload = Some(payload.to_vec());
    parse(sign1, &[want])
}

fn parse(sign1: CoseSign1, wants: &[ContentKind]) -> Result<Opened, EnvelopeError> {
    let header = &sign1.protected.header;
    // Nothing unsigned is read, so nothing unsigned may be sent: an
    // unprotected header could only mislead another reader.
    if !sign1.unprotected.is_empty() {
        return Err(EnvelopeError::Malformed("the unprotected header must be empty".into()));
    }
    // alg and kid must be protected: an unprotected one could be swapped.
    if header.alg != Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::Ed25519)) {
        return Err(EnvelopeError::Malformed("protected alg is not Ed25519 (-19)".into()));
    }
    let content_type = match &header.content_type {
        Some(coset::ContentType::Text(text)) => text.clone(),
        _ => return Err(EnvelopeError::Malformed("protected content type missing".into())),
    };
    let kind = ContentKind::from_content_type(&content_type)
        .ok_or_else(|| EnvelopeError::Malformed(format!("unknown content type {content_type:?}")))?;
    if !wants.contains(&kind) {
        return Err(EnvelopeError::WrongKind { got: content_type, want: wants[0].content_type() });
    }
    let kid = String::from_utf8(header.key_id.clone())
        .ok()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| EnvelopeError::Malformed("protected kid missing".into()))?;
    let mut claims = None;
    let mut op = None;
    let mut events_subject = None;
    for (label, value) in &header.rest {
        match label {
            Label::Int(CWT_CLAIMS_LABEL) => claims = Some(decode_claims(value.clone())?),
            Label::Text(t) if t == OP_LABEL => op = value.as_text().map(str::to_string),
            Label::Text(t) if t == EVENTS_LABEL => events_subject = value.as_text().map(str::to_string),
            _ => {}
        }
    }
    let claims = claims.ok_or_else(|| EnvelopeError::Malformed("protected CWT claims missing".into()))?;
    let op = op.ok_or_else(|| EnvelopeError::Malformed("protected operation missing".into()))?;
    let payload = sign1.payload.clone().ok_or_else(|| EnvelopeError::Malformed("payload missing".into()))?;
    Ok(Opened { kind, claims, kid: KeyId(kid), op, events_subject, payload, sign1 })
}

fn decode_claims(value: ciborium::Value) -> Result<Claims, EnvelopeError> {
    use coset::AsCborValue;
    let set = coset::cwt::ClaimsSet::from_cbor_value(value)
        .map_err(|e| EnvelopeError::Malformed(format!("claims: {e:?}")))?;
    let seconds = |t: Option<Timestamp>, name: &str| match t {
        Some(Timestamp::WholeSeconds(s)) if s >= 0 => Ok(s as u64),
        _ => Err(EnvelopeError::Malformed(format!("claim {name} missing or not whole seconds"))),
    };
    Ok(Claims {
        iss: set.issuer.ok_or_else(|| EnvelopeError::Malformed("claim iss missing".into()))?,
        aud: set.audience.ok_or_else(|| EnvelopeError::Malformed("claim aud missing".into()))?,
        iat: seconds(set.issued_at, "iat")?,
        exp: seconds(set.expiration_time, "exp")?,
        cti: match set.cwt_id {
            Some(cti) if cti.len() == NONCE_LEN => cti,
            Some(cti) if !cti.is_empty() => return Err(EnvelopeError::Malformed(format!("claim cti is {} bytes, a nonce is {NONCE_LEN}", cti.len()))),
            _ => return Err(EnvelopeError::Malformed("claim cti missing".into())),
        },
    })
}

impl Opened {
    /// Verify the signature over the received bytes, bound to `subject`.
    pub fn verify(&self, key: &PublicKey, subject: &str) -> Result<(), EnvelopeError> {
        self.sign1
            .verify_signature(&external_aad(subject), |sig, data| {
                if key.verify_strict(data, sig) {
                    Ok(())
                } else {
                    Err(())
                }
            })
            .map_err(|()| EnvelopeError::BadSignature(key.id().0))
    }

    /// Check audience and validity window: `iat - skew ≤ now ≤ exp + skew`
    /// and a lifetime no longer than `max_lifetime_s`.
    pub fn check_claims(&self, aud: &str, now_s: u64, skew_s: u64, max_lifetime_s: u64) -> Result<(), EnvelopeError> {
        let c = &self.claims;
        if c.aud != aud {
            return Err(EnvelopeError::WrongAudience { got: c.aud.clone(), want: aud.to_string() });
        }
        let too_early = c.iat > now_s + skew_s;
        let expired = now_s > c.exp + skew_s;
        let too_long = c.exp < c.iat || c.exp - c.iat > max_lifetime_s;
        if too_early || expired || too_long {
            return Err(EnvelopeError::Stale { iat: c.iat, exp: c.exp, now: now_s });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(kind: ContentKind, subject: &str, key: &SecretKey) -> Vec<u8> {
        let claims = Claims::new("alice", "orfeas", 1_000, 300);
        let header = Seal { kind, claims: &claims, op: "submit", events_subject: Some("orfeas.events.alice.x") };
        seal(&header, b"payload".to_vec(), subject, key)
    }

    #[test]
    fn sealed_message_opens_and_verifies() {
        let key = SecretKey::from_seed([3; 32]);
        let bytes = sealed(ContentKind::SubmitJob, "orfeas.jobs.submit.alice", &key);
        let opened = open(&bytes, 1 << 20, ContentKind::SubmitJob).unwrap();
        assert_eq!(opened.claims.iss, "alice");
        assert_eq!(opened.op, "submit");
        assert_eq!(opened.events_subject.as_deref(), Some("orfeas.events.alice.x"));
        assert_eq!(opened.kid, key.public().id());
        assert_eq!(opened.payload, b"payload");
        opened.verify(&key.public(), "orfeas.jobs.submit.alice").unwrap();
        opened.check_claims("orfeas", 1_100, 60, 600).unwrap();
    }

    #[test]
    fn signature_is_bound_to_subject_key_and_bytes() {
        let key = SecretKey::from_seed([3; 32]);
        let other = SecretKey::from_seed([4; 32]);
        let bytes = sealed(ContentKind::SubmitJob, "orfeas.jobs.submit.alice", &key);
        let opened = open(&bytes, 1 << 20, ContentKind::SubmitJob).unwrap();
        assert_eq!(opened.verify(&key.public(), "orfeas.jobs.submit.bob").unwrap_err().code(), ErrorCode::BadSignature);
        assert_eq!(opened.verify(&other.public(), "orfeas.jobs.submit.alice").unwrap_err().code(), ErrorCode::BadSignature);
        // Flip one payload byte: still decodes, no longer verifies.
        let at = bytes.windows(7).position(|w| w == b"payload").unwrap();
        let mut tampered = bytes.clone();
        tampered[at] ^= 1;
        let opened = open(&tampered, 1 << 20, ContentKind::SubmitJob).unwrap();
        assert_eq!(opened.verify(&key.public(), "orfeas.jobs.submit.alice").unwrap_err().code(), ErrorCode::BadSignature);
    }

    #[test]
    fn detached_signature_verifies_only_with_its_payload_and_subject() {
        let key = SecretKey::from_seed([5; 32]);
        let claims = Claims::new("node-a", "orfeas", 1_000, 60);
        let header = Seal { kind: ContentKind::Reply, claims: &claims, op: "status", events_subject: None };
        let sig = seal_detached(&header, b"reply", "orfeas.status.alice", &key);
        let opened = open_detached(&sig, b"reply", 4096, ContentKind::Reply).unwrap();
        assert_eq!((opened.claims.iss.as_str(), opened.op.as_str(), opened.payload.as_slice()), ("node-a", "status", &b"reply"[..]));
        opened.verify(&key.public(), "orfeas.status.alice").unwrap();
        assert!(opened.verify(&key.public(), "orfeas.status.bob").is_err());
        let other = open_detached(&sig, b"replY", 4096, ContentKind::Reply).unwrap();
        assert_eq!(other.verify(&key.public(), "orfeas.status.alice").unwrap_err().code(), ErrorCode::BadSignature);
        // A reply signature never opens as a request, and an attached envelope is not detached.
        assert!(open_detached(&sig, b"reply", 4096, ContentKind::StatusRequest).is_err());
        let attached = seal(&header, b"reply".to_vec(), "orfeas.status.alice", &key);
        assert!(open_detached(&attached, b"reply", 4096, ContentKind::Reply).is_err());
    }

    #[test]
    fn event_never_opens_as_submission() {
        let key = SecretKey::from_seed([3; 32]);
        let bytes = sealed(ContentKind::Event, "orfeas.jobs.submit.alice", &key);
        let err = open(&bytes, 1 << 20, ContentKind::SubmitJob).unwrap_err();
        assert!(matches!(err, EnvelopeError::WrongKind { .. }));
    }

    #[test]
    fn caps_garbage_and_time_window() {
        let key = SecretKey::from_seed([3; 32]);
        let bytes = sealed(ContentKind::SubmitJob, "s", &key);
        assert_eq!(open(&bytes, 10, ContentKind::SubmitJob).unwrap_err().code(), ErrorCode::TooLarge);
        assert_eq!(open(b"\xff\x00garbage", 1 << 20, ContentKind::SubmitJob).unwrap_err().code(), ErrorCode::Malformed);
        let opened = open(&bytes, 1 << 20, ContentKind::SubmitJob).unwrap();
        assert_eq!(opened.check_claims("orfeas", 5_000, 60, 600).unwrap_err().code(), ErrorCode::Stale);
        assert_eq!(opened.check_claims("orfeas", 800, 60, 600).unwrap_err().code(), ErrorCode::Stale);
        assert_eq!(opened.check_claims("other", 1_000, 60, 600).unwrap_err().code(), ErrorCode::Forbidden);
        assert_eq!(opened.check_claims("orfeas", 1_000, 60, 100).unwrap_err().code(), ErrorCode::Stale);
    }

    #[test]
    fn unprotected_alg_is_refused() {
        let key = SecretKey::from_seed([3; 32]);
        let mut sign1 = CoseSign1::from_slice(&sealed(ContentKind::SubmitJob, "s", &key)).unwrap();
        // Move alg from the protected to the unprotected header.
        sign1.protected.header.alg = None;
        sign1.protected.original_data = None;
        sign1.unprotected.alg = Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::Ed25519));
        let bytes = sign1.to_vec().unwrap();
        assert_eq!(open(&bytes, 1 << 20, ContentKind::SubmitJob).unwrap_err().code(), ErrorCode::Malformed);
        // Anything at all in the unprotected header is refused, even beside a
        // complete protected one.
        let mut sign1 = CoseSign1::from_slice(&sealed(ContentKind::SubmitJob, "s", &key)).unwrap();
        sign1.unprotected.key_id = b"0011223344556677".to_vec();
        let err = open(&sign1.to_vec().unwrap(), 1 << 20, ContentKind::SubmitJob).unwrap_err();
        assert!(err.to_string().contains("unprotected header must be empty"), "{err}");
    }
}
