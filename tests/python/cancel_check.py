"""Cancel a job the real node is running, from Python (run by
tests/python_client.rs and tests/mcp.rs with a node whose every forward
pass is slow, so the job is surely on the device when canceled).

Usage: python cancel_check.py client NATS_URL AGENT KEY_FILE IMAGE
       python cancel_check.py mcp HTTP_URL IMAGE

Raises on failure; on success prints one JSON object with the canceled job
ids, for the Rust side to count their terminal events in the stream.
"""
import asyncio
import json
import sys
import time

import orfeas

DEADLINE_S = 120


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def poll(what, probe):
    """Poll `probe` until it returns a value (not a fixed sleep: a deadline)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = probe()
        if value is not None:
            return value
        check(time.monotonic() < deadline, f"timed out waiting for {what}")
        time.sleep(0.05)


async def apoll(what, probe):
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = await probe()
        if value is not None:
            return value
        check(time.monotonic() < deadline, f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def running(status):
    """The status once the node runs the job; None while it waits (a job not
    admitted yet has no record: `not_found` until `accepted`)."""
    if status is None:
        return None
    check(status.state not in ("completed", "failed", "canceled"), f"the job ended before the cancel: {status}")
    return status if status.state == "running" else None


def recorded(status_of):
    """`status_of()`, or None while the node has not recorded the job yet."""
    try:
        return status_of()
    except orfeas.NotFoundError:
        return None


async def arecorded(status_of):
    try:
        return await status_of()
    except orfeas.NotFoundError:
        return None


async def client_async(url, agent, key_file, image):
    async with await orfeas.Client.connect(url, agent, key_file, timeout=30) as client:
        job = await client.submit(image, model="null", idempotency_key="py-cancel-async")

        async def probe():
            return running(await arecorded(lambda: client.status(job)))

        await apoll("the node runs the async job", probe)
        status = await client.cancel(job)
        check(status.state == "canceled" or status.cancel_requested, f"cancel of a running job: {status}")
        try:
            await client.wait(job, timeout=DEADLINE_S)
        except orfeas.CanceledError as e:
            check((e.code, e.status, e.retryable) == ("canceled", 409, False), str(e))
        else:
            raise AssertionError("a canceled running job completed")
        check((await client.status(job)).state == "canceled", "the record says canceled")
        return str(job.job_id)


def client_sync(url, agent, key_file, image):
    with orfeas.SyncClient.connect(url, agent, key_file) as client:
        job = client.submit(image, model="null", idempotency_key="py-cancel-sync")
        poll("the node runs the sync job", lambda: running(recorded(lambda: client.status(job))))
        status = client.cancel(job)
        check(status.state == "canceled" or status.cancel_requested, f"cancel of a running job: {status}")
        try:
            client.wait(job, timeout=DEADLINE_S)
        except orfeas.CanceledError as e:
            check(e.code == "canceled", str(e))
        else:
            raise AssertionError("a canceled running job completed")
        check(client.status(job).state == "canceled", "the record says canceled")
        return str(job.job_id)


async def mcp_http(http_url, image):
    from mcp import Client

    async with Client(http_url, read_timeout_seconds=120) as client:
        submitted = await client.call_tool("generate_3d", {"image_path": image, "model": "null",
                                                           "idempotency_key": "py-mcp-cancel", "wait": False})
        check(not submitted.is_error, f"generate_3d: {submitted}")
        job_id = submitted.structured_content["job_id"]

        async def state():
            return (await client.call_tool("get_job", {"job_id": job_id})).structured_content

        async def probe():
            s = await state()
            check(s["state"] not in ("completed", "failed", "canceled"), f"the job ended before the cancel: {s}")
            return s if s["state"] == "running" else None

        await apoll("the node runs the MCP job", probe)
        canceled = (await client.call_tool("cancel_job", {"job_id": job_id})).structured_content
        check(canceled["state"] == "canceled" or canceled["cancel_requested"], f"cancel_job: {canceled}")

        async def ended():
            s = await state()
            return s if s["state"] == "canceled" else None

        await apoll("the MCP job canceled", ended)
        result = await client.call_tool("get_result", {"job_id": job_id})
        check(result.is_error and result.structured_content["error"]["code"] == "canceled", f"get_result: {result}")
        return job_id


def main() -> None:
    mode = sys.argv[1]
    if mode == "client":
        url, agent, key_file, image = sys.argv[2:6]
        seen = {"async": asyncio.run(client_async(url, agent, key_file, image)),
                "sync": client_sync(url, agent, key_file, image)}
    elif mode == "mcp":
        http_url, image = sys.argv[2:4]
        seen = {"mcp": asyncio.run(mcp_http(http_url, image))}
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
