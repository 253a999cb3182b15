"""COSE_Sign1 envelopes of protocol v1 (md/protocol.md, "Envelope"), with
cbor2 and PyNaCl only.

Sealing builds `[protected, {}, payload, signature]` untagged; opening
checks everything the protocol fixes before any signature is trusted: four
elements, nothing after them, nesting within 16 levels, an empty
unprotected header, `alg` -19 in the protected header, the expected content
type, a 16-character `kid`, complete CWT claims with a 16-byte `cti`, and an
attached payload (or, for a reply signature, a detached one).
"""
from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

import cbor2
import nacl.exceptions
import nacl.signing

from .errors import UnverifiedError

AAD_DOMAIN = b"orfeas.v1\x00"
ALG_EDDSA = -19
# Length of the `cti` nonce: any other length is `malformed`.
NONCE_LEN = 16
# Longest lifetime (exp - iat) a message may have.
MAX_LIFETIME_S = 600
MAX_DEPTH = 16
# CWT claim keys (RFC 8392).
ISS, AUD, EXP, IAT, CTI = 1, 3, 4, 6, 7
CONTENT_TYPES = {
    "submit": "application/orfeas.submit-job.v1+cbor",
    "submit_batch": "application/orfeas.submit-batch.v1+cbor",
    "status": "application/orfeas.status.v1+cbor",
    "cancel": "application/orfeas.cancel.v1+cbor",
    "fetch": "application/orfeas.fetch.v1+cbor",
    "event": "application/orfeas.event.v1+cbor",
    "reply": "application/orfeas.reply.v1+cbor",
}


def key_id(public_key: bytes) -> bytes:
    """First 8 bytes of SHA-256 of the public key, as 16 hex characters (UTF-8 bytes)."""
    return hashlib.sha256(public_key).digest()[:8].hex().encode()


def external_aad(subject: str) -> bytes:
    return AAD_DOMAIN + subject.encode()


def to_be_signed(protected_bytes: bytes, subject: str, payload: bytes) -> bytes:
    """RFC 9052 §4.4 Sig_structure over the received protected bytes."""
    return cbor2.dumps(["Signature1", protected_bytes, external_aad(subject), payload])


def seal(key: nacl.signing.SigningKey, issuer: str, audience: str, op: str, subject: str, payload: bytes,
         lifetime_s: int, *, events_subject: Optional[str] = None, cti: Optional[bytes] = None,
         now_s: Optional[int] = None) -> bytes:
    """Sign `payload` for publication on `subject`: an untagged COSE_Sign1."""
    now = int(time.time()) if now_s is None else now_s
    protected: dict[Any, Any] = {
        1: ALG_EDDSA,
        3: CONTENT_TYPES[op],
        4: key_id(bytes(key.verify_key)),
        15: {ISS: issuer, AUD: audience, IAT: now, EXP: now + lifetime_s, CTI: cti or os.urandom(NONCE_LEN)},
        "orfeas.op": op,
    }
    if events_subject is not None:
        protected["orfeas.events"] = events_subject
    protected_bytes = cbor2.dumps(protected)
    signature = key.sign(to_be_signed(protected_bytes, subject, payload)).signature
    return cbor2.dumps([protected_bytes, {}, payload, signature])


def decode_strict(data: bytes) -> Any:
    """One CBOR item, nothing after it, at most 16 levels deep."""
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, EOFError) as e:
        raise UnverifiedError(f"not CBOR: {e}") from e
    if stream.tell() != len(data):
        raise UnverifiedError(f"{len(data) - stream.tell()} trailing bytes after the CBOR item")
    if _depth(value) > MAX_DEPTH:
        raise UnverifiedError(f"nested deeper than {MAX_DEPTH} levels")
    return value


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max([level] + [_depth(v, level + 1) for v in value.values()])
    if isinstance(value, (list, tuple)):
        return max([level] + [_depth(v, level + 1) for v in value])
    return level


@dataclass(frozen=True)
class Claims:
    iss: str
    aud: str
    iat: int
    exp: int
    cti: bytes


@dataclass(frozen=True)
class Opened:
    """A structurally valid envelope whose signature is not yet checked."""

    protected_bytes: bytes
    kid: bytes
    claims: Claims
    op: str
    events_subject: Optional[str]
    payload: Optional[bytes]
    signature: bytes

    def verify(self, key: nacl.signing.VerifyKey, subject: str, detached: Optional[bytes] = None) -> None:
        """Ed25519 over the received protected bytes, bound to `subject`."""
        if key_id(bytes(key)) != self.kid:
            raise UnverifiedError(f"key id {self.kid.decode(errors='replace')} is not {self.claims.iss}'s key")
        payload = self.payload if detached is None else detached
        assert payload is not None
        try:
            key.verify(to_be_signed(self.protected_bytes, subject, payload), self.signature)
        except nacl.exceptions.BadSignatureError as e:
            raise UnverifiedError(f"signature by {self.claims.iss} does not verify on {subject}") from e


def open_envelope(data: bytes, op: str, *, detached: bool = False) -> Opened:
    """Check the envelope's shape and headers (md/protocol.md) for content type `CONTENT_TYPES[op]`."""
    message = decode_strict(data)
    if isinstance(message, cbor2.CBORTag):
        raise UnverifiedError("tagged COSE_Sign1: v1 envelopes are untagged")
    if not isinstance(message, list) or len(message) != 4:
        raise UnverifiedError("not a COSE_Sign1 array of four")
    protected_bytes, unprotected, payload, signature = message
    if not isinstance(protected_bytes, bytes) or not isinstance(signature, bytes) or len(signature) != 64:
        raise UnverifiedError("protected header or signature is not a byte string of the right size")
    if unprotected != {}:
        raise UnverifiedError("the unprotected header must be the empty map")
    if detached:
        if payload is not None:
            raise UnverifiedError("a reply signature has a detached (nil) payload")
    elif not isinstance(payload, bytes):
        raise UnverifiedError("payload is not an attached byte string")
    protected = decode_strict(protected_bytes)
    if not isinstance(protected, dict):
        raise UnverifiedError("protected header is not a map")
    if protected.get(1) != ALG_EDDSA:
        raise UnverifiedError(f"alg {protected.get(1)!r} is not Ed25519 (-19)")
    if protected.get(3) != CONTENT_TYPES[op]:
        raise UnverifiedError(f"content type {protected.get(3)!r} is not {CONTENT_TYPES[op]}")
    kid = protected.get(4)
    if not isinstance(kid, bytes) or len(kid) != 16:
        raise UnverifiedError("kid is not 16 hex characters")
    raw = protected.get(15)
    if not isinstance(raw, dict):
        raise UnverifiedError("CWT claims missing")
    cti = raw.get(CTI)
    if not isinstance(cti, bytes) or len(cti) != NONCE_LEN:
        raise UnverifiedError(f"claim cti is not {NONCE_LEN} bytes")
    iss, aud, iat, exp = raw.get(ISS), raw.get(AUD), raw.get(IAT), raw.get(EXP)
    if not isinstance(iss, str) or not isinstance(aud, str) or not isinstance(iat, int) or not isinstance(exp, int):
        raise UnverifiedError("claims iss, aud, iat, exp missing or mistyped")
    if exp < iat or exp - iat > MAX_LIFETIME_S:
        raise UnverifiedError(f"lifetime {exp - iat} s is outside 0..={MAX_LIFETIME_S}")
    op_header = protected.get("orfeas.op")
    if not isinstance(op_header, str):
        raise UnverifiedError("orfeas.op missing")
    events = protected.get("orfeas.events")
    return Opened(protected_bytes, kid, Claims(iss, aud, iat, exp, cti), op_header,
                  events if isinstance(events, str) else None, payload, signature)
