"""An orfeas agent at the command line: a thin use of the `orfeas` Python
package (clients/python; `pip install ./clients/python`), which does the
signing, the verifying and the uploads. Submit an image and follow the
job's signed events, ask for a job's status, cancel a job:

    python orfeas_client.py --nats nats://127.0.0.1:4222 --agent alice \
        --seed-hex <64 hex digits of the agent's Ed25519 seed, or --key alice.key> \
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
or `{"error": ...}`), whose node signature was verified. Exit code 0 on
`completed` / a `job` reply, 2 otherwise (1 is a crash).
"""
import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path

# From a checkout, the package beside this example (the version it was
# written with); elsewhere, the installed one.
_checkout = Path(__file__).resolve().parents[2] / "clients" / "python" / "src"
if (_checkout / "orfeas" / "__init__.py").is_file():
    sys.path.insert(0, str(_checkout))
import orfeas  # noqa: E402


def plain(value):
    """CBOR values as JSON: UUID byte strings as text, other bytes as hex."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return str(uuid.UUID(bytes=value)) if len(value) == 16 else value.hex()
    return value


def say(line: dict) -> None:
    print(json.dumps(line), flush=True)


async def submit(client: orfeas.Client, args) -> int:
    params = orfeas.JobParams(target_faces=args.target_faces)
    job = await client.submit(args.image, model=args.model, formats=args.format or ["glb"], params=params,
                              by_reference=True if args.by_reference else None)
    say({"submitted": str(job.job_id), **({"uploaded": job.uploaded} if job.uploaded else {})})
    last = None
    async for event in client.events(job, timeout=args.timeout):
        say({"event": plain(event.raw)})
        last = event
    return 0 if last is not None and last.name == "completed" else 2


async def request(client: orfeas.Client, op: str, job_id: str) -> int:
    try:
        status = await (client.status(job_id) if op == "status" else client.cancel(job_id))
    except orfeas.NodeError as e:
        say({"error": plain(e.failure.raw)})
        return 2
    say({"job": plain(status.raw)})
    return 0


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--agent", required=True)
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--seed-hex", help="the agent's Ed25519 seed, 64 hex digits")
    key.add_argument("--key", help="the agent's key file (orfeas keys new)")
    parser.add_argument("--audience", default="orfeas")
    parser.add_argument("--timeout", type=float, default=120)
    sub = parser.add_subparsers(dest="command", required=True)
    sub_submit = sub.add_parser("submit")
    sub_submit.add_argument("image")
    sub_submit.add_argument("--model", default="inflate")
    sub_submit.add_argument("--format", action="append", default=[])
    sub_submit.add_argument("--target-faces", type=int)
    sub_submit.add_argument("--by-reference", action="store_true",
                            help="upload to the orfeas_uploads object store and submit by reference")
    for op in ("status", "cancel"):
        sub.add_parser(op).add_argument("job_id")
    args = parser.parse_args()
    async with await orfeas.Client.connect(args.nats, args.agent, args.seed_hex or args.key, audience=args.audience,
                                           timeout=args.timeout) as client:
        if args.command == "submit":
            return await submit(client, args)
        return await request(client, args.command, args.job_id)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
