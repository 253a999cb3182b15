"""The installed `orfeas` package against a real node (run by tests/python_client.rs).

Usage: python client_check.py NATS_URL AGENT KEY_FILE IMAGE OUT_DIR QUEUED_JOB_ID

Each check raises on failure (exit 1 with the traceback); on success it
prints one JSON object with what it saw, for the Rust side to compare with
the node's own records.
"""
import asyncio
import hashlib
import json
import sys
import uuid
from pathlib import Path

import cbor2

import orfeas
from orfeas import JobParams


def check(condition, what):
    if not condition:
        raise AssertionError(what)


async def async_flavour(url, agent, key_file, image, out, store, seen):
    async with await orfeas.Client.connect(url, agent, key_file, timeout=30) as client:
        models = await client.list_models()
        check(any(m.name == "null" for m in models), f"null model listed: {models}")

        # A submission followed through its verified events.
        job = await client.submit(image, model="null", formats=["glb", "stl"], idempotency_key="py-mug-1",
                                  params=JobParams(size_mm=40.0, priority="low"))
        check(job.job_id == orfeas.job_id_for(agent, "py-mug-1"), "the idempotency key names the job")
        check(job.applied["params"] == {"size_mm": 40.0, "priority": "low"}, f"applied {job.applied}")
        events = [e async for e in client.events(job, timeout=120)]
        names = [e.name for e in events]
        check(names[-1] == "completed", f"ends completed: {names}")
        check("accepted" in names and "progress" in names, f"accepted and progress seen: {names}")
        check(len({e.seq for e in events}) == len(events), "each seq once")
        check(all(e.job_id == job.job_id for e in events), "all of this job")
        done = events[-1].kind
        check([r.format for r in done.results] == ["glb", "stl"], f"formats {done.results}")
        check(done.report is not None and abs(max(done.report.bbox_mm) - 40.0) < 0.5, f"size_mm applied: {done.report}")
        seen["async_job"] = str(job.job_id)
        seen["async_faces"] = done.mesh.faces

        # The same key again: the same job, answered from its record.
        again = await client.submit(image, model="null", formats=["glb", "stl"], idempotency_key="py-mug-1",
                                    params=JobParams(size_mm=40.0, priority="low"))
        check(again.job_id == job.job_id, "same key, same job")
        result = await client.wait(again, timeout=120)
        check(result.mesh.faces == done.mesh.faces, "the same result")
        status = await client.status(job.job_id)
        check(status.state == "completed" and status.lane == "low", f"status {status}")
        request = status.request or {}
        check(request.get("model") == "null" and request.get("formats") == ["glb", "stl"]
              and request.get("params", {}).get("size_mm") == 40.0, f"the admitted request: {request}")
        seen["async_lane"] = status.lane

        # Files over NATS, each checked against the signed SHA-256.
        fetched = await client.fetch(job, out / "async", previews=True)
        by_format = {Path(f.location).suffix: f for f in fetched.files}
        check(by_format[".glb"].data[:4] == b"glTF", "a GLB")
        check(by_format[".stl"].verified and by_format[".glb"].verified, "results verified")
        for result_file in fetched.completed.results:
            on_disk = (out / "async" / Path(result_file.location).name).read_bytes()
            check(hashlib.sha256(on_disk).hexdigest() == result_file.sha256, "written bytes are the signed ones")
        previews = [f for f in fetched.files if f.location.endswith(".png")]
        check(len(previews) == len(fetched.completed.previews) and all(p.data.startswith(b"\x89PNG") for p in previews),
              "previews fetched")
        check(all(p.verified and p.sha256 for p in previews), "previews verified against their signed SHA-256")
        seen["fetched"] = sorted(Path(f.location).name for f in fetched.files)

        # A preview changed at rest: the node serves it, the signed digest refuses it.
        at_rest = store / fetched.completed.previews[0].location
        png = bytearray(at_rest.read_bytes())
        png[-1] ^= 1
        at_rest.write_bytes(bytes(png))
        try:
            await client.fetch(job, previews=True)
        except orfeas.UnverifiedError as e:
            check((e.code, e.status) == ("unverified", 502) and "SHA-256" in str(e), f"tampered preview: {e}")
        else:
            raise AssertionError("a tampered preview verified")
        check(len((await client.fetch(job)).files) == len(fetched.completed.results), "the results still fetch")

        # Tampered or misdirected events are refused.
        check((await client.cancel(job.job_id)).state == "completed", "a finished job is left as it is")
        sealed = await client._fetch_request({"job_id": job.job_id.bytes, "location": None, "offset": 0, "max_bytes": 0}, None)
        envelope = sealed[1]["event"]
        good = await client.verify_event(f"orfeas.events.{agent}.{job.job_id}", envelope)
        check(good.name == "completed", "the manifest verifies on the events subject")
        for what, subject, data in [
            ("another subject", f"orfeas.events.{agent}.{uuid.uuid4()}", envelope),
            ("the reply inbox", f"orfeas.results.fetch.{agent}", envelope),
            ("a flipped signature byte", f"orfeas.events.{agent}.{job.job_id}", tamper_signature(envelope)),
        ]:
            try:
                await client.verify_event(subject, data)
            except orfeas.UnverifiedError as e:
                check((e.code, e.status) == ("unverified", 502), f"{what}: {e.code}")
            else:
                raise AssertionError(f"{what} verified")

        # Stable codes for refusals and failures.
        try:
            await client.status(uuid.uuid4())
        except orfeas.NotFoundError as e:
            check((e.code, e.status, e.retryable) == ("not_found", 404, False), str(e))
        else:
            raise AssertionError("an unknown job has a status")
        try:
            await client.submit(image, formats=["dwg"])
        except orfeas.InvalidArgumentError as e:
            check((e.code, e.status) == ("invalid_argument", 400), str(e))
        else:
            raise AssertionError("format dwg accepted")
        unknown = await client.submit(image, model="no-such-model")
        try:
            await client.wait(unknown, timeout=60)
        except orfeas.InvalidRequestError as e:
            check((e.code, e.status, e.kind) == ("unknown_model", 422, "rejected"), str(e))
        else:
            raise AssertionError("an unknown model completed")


def tamper_signature(envelope: bytes) -> bytes:
    protected, unprotected, payload, signature = cbor2.loads(envelope)
    return cbor2.dumps([protected, unprotected, payload, bytes([signature[0] ^ 1]) + signature[1:]])


def sync_flavour(url, agent, key_file, image, out, queued, seen):
    with orfeas.SyncClient.connect(url, agent, key_file) as client:
        # By reference: uploaded first, its SHA-256 and size signed.
        ref = client.upload(image, "sync-mug.png")
        check(ref.key == f"{agent}/sync-mug.png" and ref.size == len(Path(image).read_bytes()), f"upload {ref}")
        job = client.submit(ref, model="null")
        check(job.uploaded == ref.key, "submitted by reference")
        names = [e.name for e in client.events(job, timeout=120)]
        check(names[-1] == "completed", f"sync events {names}")
        fetched = client.fetch(job.job_id, out / "sync")
        check([f.name for f in fetched.files] == [Path(fetched.completed.results[0].location).name], "one GLB")
        seen["sync_job"] = str(job.job_id)

        # Cancel a queued job; waiting on it then raises the node's code.
        status = client.cancel(queued)
        check(status.state == "canceled", f"cancel {status}")
        try:
            client.wait(queued, timeout=30)
        except orfeas.CanceledError as e:
            check((e.code, e.status, e.retryable) == ("canceled", 409, False), str(e))
        else:
            raise AssertionError("a canceled job completed")
        seen["canceled"] = str(status.job_id)


def main() -> None:
    url, agent, key_file, image, out, queued, store = sys.argv[1:8]
    out, store = Path(out), Path(store)
    seen: dict = {}
    asyncio.run(async_flavour(url, agent, key_file, image, out, store, seen))
    sync_flavour(url, agent, key_file, image, out, queued, seen)
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
