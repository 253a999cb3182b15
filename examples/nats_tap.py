"""Count the NATS messages of a run by kind of subject, per job.

Subscribes to every subject (`>`) of a server and groups what it sees:
publishes (events, queue, audit, KV writes, JetStream API requests) by their
subject, replies and JetStream deliveries under `_INBOX` (a delivery shows
its original subject too, so `orfeas.jobs.submit` / `queue` count twice per
job: the publish and its delivery). Used for the per-job round-trip counts in
md/benchmarks.md:

    nats-server -js -sd /tmp/js -p 14222 &
    orfeas serve --nats nats://127.0.0.1:14222 &
    python examples/nats_tap.py nats://127.0.0.1:14222 20 500 &
    orfeas bench --nats nats://127.0.0.1:14222 --jobs 500 --warmup 0 --concurrency 64 --no-previews

Prints messages per job (the third argument) for each kind, most first.
Needs `nats-py` (in the venv deploy/setup.sh makes).
"""

import asyncio
import collections
import re
import sys

import nats

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def kind(subject: str) -> str:
    """The subject with ids and per-agent / per-node tokens folded away."""
    parts = UUID.sub("ID", subject).split(".")
    if parts[0].startswith("_INBOX"):
        return "_INBOX (replies, deliveries)"
    if subject.startswith("$JS.ACK."):
        return "$JS.ACK." + parts[2]
    if subject.startswith("$JS.API.DIRECT.GET."):
        return ".".join(parts[:5])
    if subject.startswith("$JS.API."):
        return ".".join(parts[:4])
    if subject.startswith("$KV."):
        return ".".join(parts[:2])
    if subject.startswith("orfeas.events."):
        return "orfeas.events"
    return ".".join(parts[:3])


async def main(url: str, seconds: float, jobs: int) -> None:
    nc = await nats.connect(url)
    counts: collections.Counter = collections.Counter()

    async def seen(msg):
        counts[kind(msg.subject)] += 1

    await nc.subscribe(">", cb=seen)
    await asyncio.sleep(seconds)
    await nc.close()
    for name, n in counts.most_common():
        print(f"{n / jobs:8.2f}  {name}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
