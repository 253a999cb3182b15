"""Verify an orfeas v1 COSE_Sign1 message with independent libraries
(cbor2 + PyNaCl), following md/protocol.md only.

Usage: python cose_verify.py FILE SUBJECT PUBLIC_KEY_HEX
Prints JSON: content_type, kid, claims, op, events subject, payload keys.
Exits non-zero when the signature does not verify.
"""
import json
import sys

import cbor2
import nacl.exceptions
import nacl.signing


def main() -> None:
    path, subject, public_hex = sys.argv[1:4]
    message = cbor2.loads(open(path, "rb").read())
    if isinstance(message, cbor2.CBORTag):
        message = message.value
    protected_bytes, _unprotected, payload, signature = message
    protected = cbor2.loads(protected_bytes)
    assert protected[1] == -19, f"alg {protected[1]} is not Ed25519 (-19)"
    aad = b"orfeas.v1\x00" + subject.encode()
    to_be_signed = cbor2.dumps(["Signature1", protected_bytes, aad, payload])
    key = nacl.signing.VerifyKey(bytes.fromhex(public_hex))
    try:
        key.verify(to_be_signed, signature)
    except nacl.exceptions.BadSignatureError:
        print(json.dumps({"verified": False}))
        sys.exit(1)
    claims = protected[15]
    body = cbor2.loads(payload)
    print(json.dumps({
        "verified": True,
        "content_type": protected[3],
        "kid": protected[4].decode(),
        "claims": {"iss": claims[1], "aud": claims[3], "exp": claims[4], "iat": claims[6], "cti": claims[7].hex()},
        "op": protected["orfeas.op"],
        "events": protected.get("orfeas.events"),
        "payload_keys": sorted(body.keys()),
        "model": body.get("model"),
        "image": {kind: {k: (v.hex() if isinstance(v, bytes) else v) for k, v in fields.items()}
                  for kind, fields in body.get("image", {}).items()},
    }))


if __name__ == "__main__":
    main()
