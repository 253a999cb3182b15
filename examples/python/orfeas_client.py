"""An orfeas agent in Python, written from md/protocol.md alone.

Depends on cbor2, PyNaCl and nats-py. Submit an image, follow the job's
signed events, ask for a job's status, cancel a job:

    python orfeas_client.py --nats nats://127.0.0.1:4222 --agent alice \
        --seed-hex <64 hex digits of the agent's Ed25519 seed> \
        submit photo.png --model inflate --format glb
    python orfeas_client.py ... submit big.png --by-reference
    python orfeas_client.py ... status <job_id>
    python orfeas_client.py ... cancel <job_id>

`--by-reference` (automatic for images over the inline cap) uploads the
image to the JetStream object store `orfeas_uploads` as `<agent>/<job_id>.<ext>`
and submits a reference with the image's signed sha256 and size.

Every line printed is one JSON object: `{"submitted": job_id}` (with
`"uploaded": key` for a reference), then each verified event of a
submission (`{"event": ...}`), or the status / cancel reply (`{"job": ...}`
or `{"error": ...}`), whose node signature (header `Orfeas-Signature`) was
verified. Exit code 0 on `completed` / a `job` reply, 2 otherwise.
"""
import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
import uuid

import cbor2
import nacl.exceptions
import nacl.signing
import nats

AAD_DOMAIN = b"orfeas.v1\x00"
ALG_EDDSA = -19
# CWT claim keys (RFC 8392).
ISS, AUD, EXP, IAT, CTI = 1, 3, 4, 6, 7
CONTENT_TYPES = {
    "submit": "application/orfeas.submit-job.v1+cbor",
    "status": "application/orfeas.status.v1+cbor",
    "cancel": "application/orfeas.cancel.v1+cbor",
    "event": "application/orfeas.event.v1+cbor",
    "reply": "application/orfeas.reply.v1+cbor",
}
# Largest inline image (8 MiB envelope cap minus 64 KiB); larger ones go by reference.
MAX_INLINE_IMAGE_BYTES = 8 * 1024 * 1024 - 64 * 1024
UPLOADS_BUCKET = "orfeas_uploads"
REPLY_SIGNATURE_HEADER = "Orfeas-Signature"


def kid(public_key: bytes) -> bytes:
    """First 8 bytes of SHA-256 of the public key, as 16 hex characters (UTF-8 bytes)."""
    return hashlib.sha256(public_key).digest()[:8].hex().encode()


def seal(key: nacl.signing.SigningKey, agent: str, audience: str, op: str, subject: str,
         payload: bytes, lifetime_s: int, events_subject: str | None = None, cti: bytes | None = None) -> bytes:
    """COSE_Sign1 [protected, {}, payload, signature], untagged."""
    now = int(time.time())
    protected = {
        1: ALG_EDDSA,
        3: CONTENT_TYPES[op],
        4: kid(bytes(key.verify_key)),
        15: {ISS: agent, AUD: audience, IAT: now, EXP: now + lifetime_s, CTI: cti or os.urandom(16)},
        "orfeas.op": op,
    }
    if events_subject is not None:
        protected["orfeas.events"] = events_subject
    protected_bytes = cbor2.dumps(protected)
    aad = AAD_DOMAIN + subject.encode()
    to_be_signed = cbor2.dumps(["Signature1", protected_bytes, aad, payload])
    signature = key.sign(to_be_signed).signature
    return cbor2.dumps([protected_bytes, {}, payload, signature])


def media_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise SystemExit("not a PNG, JPEG or WebP image")


def plain(value):
    """CBOR values as JSON: UUID byte strings as text, other bytes as hex."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return str(uuid.UUID(bytes=value)) if len(value) == 16 else value.hex()
    return value


class Agent:
    def __init__(self, nc, agent: str, key: nacl.signing.SigningKey, audience: str):
        self.nc = nc
        self.js = nc.jetstream()
        self.agent = agent
        self.key = key
        self.audience = audience
        self.node_keys = {}

    async def node_key(self, node: str) -> nacl.signing.VerifyKey:
        """The node's event key from the `orfeas_nodes` bucket (CBOR NodeRecord)."""
        if node not in self.node_keys:
            kv = await self.js.key_value("orfeas_nodes")
            record = cbor2.loads((await kv.get(node)).value)
            self.node_keys[node] = nacl.signing.VerifyKey(bytes.fromhex(record["public_key"]))
        return self.node_keys[node]

    async def verify_event(self, subject: str, data: bytes) -> dict:
        protected_bytes, unprotected, payload, signature = cbor2.loads(data)
        protected = cbor2.loads(protected_bytes)
        if protected[1] != ALG_EDDSA or protected[3] != CONTENT_TYPES["event"] or unprotected:
            raise ValueError("not an orfeas v1 event envelope")
        node = protected[15][ISS]
        key = await self.node_key(node)
        if kid(bytes(key)) != protected[4]:
            raise ValueError(f"event key id {protected[4]!r} is not node {node}'s")
        to_be_signed = cbor2.dumps(["Signature1", protected_bytes, AAD_DOMAIN + subject.encode(), payload])
        key.verify(to_be_signed, signature)
        event = cbor2.loads(payload)
        if event["node"] != node:
            raise ValueError("event names another node than its signer")
        return event

    async def upload(self, name: str, image: bytes) -> dict:
        """Put `image` into the uploads object store as `<agent>/<name>` and
        return the reference to submit (sha256 and size are signed with it)."""
        key = f"{self.agent}/{name}"
        store = await self.js.object_store(UPLOADS_BUCKET)
        await store.put(key, image)
        return {"ref": {"media_type": media_type(image), "store": "jetstream", "key": key,
                        "sha256": hashlib.sha256(image).digest(), "size": len(image)}}

    async def submit(self, image: bytes, model: str, formats: list[str], params: dict, timeout: float,
                     by_reference: bool = False) -> int:
        job_id = uuid.uuid7() if hasattr(uuid, "uuid7") else uuid.uuid4()
        subject = f"orfeas.jobs.submit.{self.agent}"
        events_subject = f"orfeas.events.{self.agent}.{job_id}"
        submitted = {"submitted": str(job_id)}
        if by_reference or len(image) > MAX_INLINE_IMAGE_BYTES:
            extension = media_type(image).split("/")[1]
            image_input = await self.upload(f"{job_id}.{extension}", image)
            submitted["uploaded"] = image_input["ref"]["key"]
        else:
            image_input = {"inline": {"media_type": media_type(image), "data": image}}
        job = {
            "job_id": job_id.bytes,
            "model": model,
            "image": image_input,
            "formats": formats,
            "params": params,
        }
        envelope = seal(self.key, self.agent, self.audience, "submit", subject, cbor2.dumps(job), 300, events_subject)
        # Subscribe before publishing so no event is missed.
        events = await self.nc.subscribe(events_subject)
        await self.js.publish(subject, envelope)
        print(json.dumps(submitted), flush=True)
        seen = set()
        accepted = False
        deadline = time.monotonic() + timeout
        while True:
            message = await events.next_msg(timeout=max(0.1, deadline - time.monotonic()))
            event = await self.verify_event(message.subject, message.data)
            if uuid.UUID(bytes=event["job_id"]) != job_id or event["seq"] in seen:
                continue
            seen.add(event["seq"])
            print(json.dumps({"event": plain(event)}), flush=True)
            kind = next(iter(event["kind"]))
            accepted = accepted or kind == "accepted"
            # After `accepted`, a `rejected` answers another copy of the
            # message (a replay, say); the job goes on.
            if kind in ("completed", "failed") or (kind == "rejected" and not accepted):
                return 0 if kind == "completed" else 2

    async def request(self, op: str, job_id: str, timeout: float) -> int:
        subject = f"orfeas.{op}.{self.agent}"
        payload = cbor2.dumps({"job_id": uuid.UUID(job_id).bytes})
        cti = os.urandom(16)
        envelope = seal(self.key, self.agent, self.audience, op, subject, payload, 60, cti=cti)
        message = await self.nc.request(subject, envelope, timeout=timeout)
        await self.verify_reply(subject, cti, message.headers or {}, message.data)
        reply = cbor2.loads(message.data)
        print(json.dumps(plain(reply)), flush=True)
        return 0 if "job" in reply else 2

    async def verify_reply(self, subject: str, cti: bytes, headers: dict, body: bytes) -> None:
        """The node's detached COSE_Sign1 over the reply body, bound to the
        request's subject and nonce (header `Orfeas-Signature`, hex)."""
        signature_hex = headers.get(REPLY_SIGNATURE_HEADER)
        if not signature_hex:
            raise ValueError("reply is not signed")
        protected_bytes, unprotected, payload, signature = cbor2.loads(bytes.fromhex(signature_hex))
        protected = cbor2.loads(protected_bytes)
        if protected[1] != ALG_EDDSA or protected[3] != CONTENT_TYPES["reply"] or unprotected or payload is not None:
            raise ValueError("not an orfeas v1 reply signature")
        claims = protected[15]
        if claims[CTI] != cti or claims[AUD] != self.audience:
            raise ValueError("reply signed for another request or deployment")
        key = await self.node_key(claims[ISS])
        if kid(bytes(key)) != protected[4]:
            raise ValueError(f"reply key id {protected[4]!r} is not node {claims[ISS]}'s")
        to_be_signed = cbor2.dumps(["Signature1", protected_bytes, AAD_DOMAIN + subject.encode(), body])
        key.verify(to_be_signed, signature)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--seed-hex", required=True, help="the agent's Ed25519 seed, 64 hex digits")
    parser.add_argument("--audience", default="orfeas")
    parser.add_argument("--timeout", type=float, default=120)
    sub = parser.add_subparsers(dest="command", required=True)
    submit = sub.add_parser("submit")
    submit.add_argument("image")
    submit.add_argument("--model", default="inflate")
    submit.add_argument("--format", action="append", default=[])
    submit.add_argument("--target-faces", type=int)
    submit.add_argument("--by-reference", action="store_true",
                        help="upload to the orfeas_uploads object store and submit by reference")
    for op in ("status", "cancel"):
        sub.add_parser(op).add_argument("job_id")
    args = parser.parse_args()
    key = nacl.signing.SigningKey(bytes.fromhex(args.seed_hex))
    nc = await nats.connect(args.nats)
    try:
        agent = Agent(nc, args.agent, key, args.audience)
        if args.command == "submit":
            params = {"target_faces": args.target_faces} if args.target_faces else {}
            with open(args.image, "rb") as f:
                image = f.read()
            return await agent.submit(image, args.model, args.format or ["glb"], params, args.timeout, args.by_reference)
        return await agent.request(args.command, args.job_id, args.timeout)
    finally:
        await nc.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
