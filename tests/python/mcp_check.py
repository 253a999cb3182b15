"""`orfeas mcp` driven by the official Python MCP SDK (PyPI `mcp`), an
independent client, over stdio and streamable HTTP (run by tests/mcp.rs).

Usage: python mcp_check.py ORFEAS_BIN NATS_URL AGENT KEY_FILE IMAGE HTTP_URL QUEUED_STDIO QUEUED_HTTP

Each check raises on failure (exit 1 with the traceback); on success it
prints one JSON object with the job ids it saw per transport, for the Rust
side to compare with the node's own records.
"""
import asyncio
import base64
import json
import sys

from mcp import Client, StdioServerParameters


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def body(result):
    check(result.structured_content is not None, f"structured content in {result}")
    return result.structured_content


async def drive(client, transport, agent, image, queued):
    seen = {}
    tools = {t.name for t in (await client.list_tools()).tools}
    for want in ("generate_3d", "upload_image", "get_job", "get_result", "cancel_job", "list_models"):
        check(want in tools, f"{transport}: {want} listed in {tools}")
    models = body(await client.call_tool("list_models", {}))
    check(any(m["name"] == "null" for m in models["models"]), f"{transport}: null model listed: {models}")

    # A waited generation with progress: the same job for the same key.
    progress = []

    async def on_progress(value, total, message):
        progress.append(value)

    key = f"py-{transport}-1"
    first = await client.call_tool("generate_3d", {"image_path": image, "model": "null", "formats": ["glb", "stl"],
                                                   "idempotency_key": key, "priority": "low"},
                                   progress_callback=on_progress)
    check(not first.is_error, f"{transport}: generate_3d failed: {first}")
    done = body(first)
    check(done["state"] == "completed", f"{transport}: completed: {done}")
    check([f["format"] for f in done["files"]] == ["glb", "stl"], f"{transport}: files {done['files']}")
    check(done["applied"]["priority_asked"] == "low" and done["applied"]["priority"] == "low",
          f"{transport}: priority echoed: {done['applied']}")
    check(done["applied"]["previews"] is True and done["applied"]["model"] == "null", f"{transport}: defaults echoed")
    check("report" in done and done["report"] is not None, f"{transport}: printability report")
    images = [c for c in first.content if c.type == "image"]
    check(len(images) == len(done["previews"]) > 0, f"{transport}: previews as images")
    check(all(base64.b64decode(i.data).startswith(b"\x89PNG") for i in images), f"{transport}: previews are PNGs")
    check(progress and progress[-1] == 100, f"{transport}: progress notifications up to 100: {progress}")
    check(all(a < b for a, b in zip(progress, progress[1:])), f"{transport}: progress only goes up: {progress}")
    seen["job"] = done["job_id"]

    with open(image, "rb") as f:
        b64 = base64.b64encode(f.read()).decode()
    again = await client.call_tool("generate_3d", {"image_base64": b64, "model": "null", "formats": ["glb", "stl"],
                                                   "idempotency_key": key, "priority": "low"})
    check(not again.is_error, f"{transport}: retry failed: {again}")
    check(body(again)["job_id"] == seen["job"], f"{transport}: the retry names the same job")

    # An upload once, then a job by reference, not waited for.
    uploaded = body(await client.call_tool("upload_image", {"image_base64": b64}))
    check(uploaded["image_ref"].startswith(f"{agent}/") and uploaded["bytes"] == len(base64.b64decode(b64)),
          f"{transport}: upload {uploaded}")
    by_ref = body(await client.call_tool("generate_3d", {"image_ref": uploaded["image_ref"], "model": "null",
                                                         "idempotency_key": f"py-{transport}-ref", "wait": False}))
    check(by_ref["applied"]["image"]["source"] == "image_ref" and by_ref["applied"]["wait"] is False,
          f"{transport}: by reference, not waited: {by_ref}")
    seen["by_ref"] = by_ref["job_id"]

    canceled = body(await client.call_tool("cancel_job", {"job_id": queued}))
    check(canceled["state"] == "canceled", f"{transport}: cancel {canceled}")

    # Bad arguments: tool errors with stable codes, and the server lives on.
    for arguments, code in [({"model": "null"}, "invalid_argument"),
                            ({"image_path": image, "priority": "urgent"}, "invalid_argument"),
                            ({"image_ref": f"{agent}/never-uploaded.png"}, "input_missing")]:
        bad = await client.call_tool("generate_3d", arguments)
        check(bad.is_error, f"{transport}: {arguments} is an error")
        error = body(bad)["error"]
        check(error["code"] == code and isinstance(error["retryable"], bool) and error["status"] >= 400,
              f"{transport}: {arguments}: {error}")
    not_ready = await client.call_tool("get_result", {"job_id": queued})
    check(not_ready.is_error and body(not_ready)["error"]["code"] == "canceled", f"{transport}: canceled job's result")
    check(body(await client.call_tool("get_job", {"job_id": seen["job"]}))["state"] == "completed",
          f"{transport}: the server lives on")
    return seen


async def main():
    orfeas, nats_url, agent, key_file, image, http_url, queued_stdio, queued_http = sys.argv[1:9]
    seen = {}
    server = StdioServerParameters(command=orfeas, args=["mcp", "--nats", nats_url, "--agent", agent, "--key", key_file])
    async with Client(server, read_timeout_seconds=120) as client:
        seen["stdio"] = await drive(client, "stdio", agent, image, queued_stdio)
    async with Client(http_url, read_timeout_seconds=120) as client:
        seen["http"] = await drive(client, "http", agent, image, queued_http)
    print(json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main())
