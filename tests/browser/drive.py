#!/usr/bin/env python3
"""Drive the orfeas studio page in headless Chromium over the DevTools
protocol (stdlib only: a minimal WebSocket client, a minimal PNG decoder).

    drive.py --url http://127.0.0.1:PORT/ --scenario happy|errors|cancel|shared
             [--image PATH] [--model NAME] [--shots DIR] [--timeout S]

Prints one JSON object with what it saw; the Rust test (tests/studio.rs)
asserts on it. Exit status 0 unless the browser could not be driven.
"""
import argparse, base64, json, os, shutil, socket, struct, subprocess, sys, tempfile, time, urllib.request, zlib

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # WebGL on the CPU: the viewer must draw without a GPU.
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--window-size=1440,1100", "--remote-debugging-port=0",
]
BACKGROUND = (0x20, 0x24, 0x2C)  # the viewer's clear colour


class WebSocket:
    """Just enough RFC 6455 for CDP: text frames, client masking, no extensions."""

    def __init__(self, url):
        assert url.startswith("ws://"), url
        host_port, _, path = url[5:].partition("/")
        host, _, port = host_port.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise RuntimeError("websocket handshake closed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"websocket handshake refused: {head!r}")

    def send(self, text):
        data = text.encode()
        header = bytes([0x81])
        n = len(data)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise RuntimeError("websocket closed")
            buf += chunk
        return bytes(buf)

    def recv(self):
        message = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload = self._exact(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise RuntimeError("websocket closed by the browser")
            if opcode == 0x9:  # ping: answer, keep reading
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()


class Browser:
    def __init__(self, chromium):
        self.profile = tempfile.mkdtemp(prefix="orfeas-chromium-")
        self.proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.time() + 60
        while not (os.path.exists(port_file) and open(port_file).read().count("\n") >= 1):
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            if time.time() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(open(port_file).read().split("\n")[0])
        while True:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                break
            if time.time() > deadline:
                raise RuntimeError("chromium has no page target")
            time.sleep(0.05)
        self.ws = WebSocket(pages[0]["webSocketDebuggerUrl"])
        self.next_id = 0
        self.events = []
        self.console = []
        for domain in ("Page", "Runtime", "DOM"):
            self.call(f"{domain}.enable")
        # The viewport itself, not the window around it, is 1440 × 1100: screenshots show the whole page.
        self.call("Emulation.setDeviceMetricsOverride", width=1440, height=1100, deviceScaleFactor=1, mobile=False)

    def call(self, method, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == my_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if message.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in message["params"]["args"]))
            elif message.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(message["params"]["exceptionDetails"])[:500])

    def js(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error in {expression[:80]!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, what, expression, timeout):
        deadline = time.time() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.time() > deadline:
                raise TimeoutError(f"{what} not seen within {timeout} s (console: {self.console[-5:]})")
            time.sleep(0.05)

    def screenshot(self, path=None, clip=None):
        params = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        data = base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "wb").write(data)
        return data

    def set_files(self, selector, paths):
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=paths)

    def close(self):
        try:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def png_pixels(data):
    """Decode an 8-bit RGB/RGBA non-interlaced PNG: (width, height, rows of (r, g, b))."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    bpp = 3 if colour == 2 else 4
    stride = w * bpp
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(h):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x:x + 3]) for x in range(0, stride, bpp)])
        prev = line
    return w, h, rows


def foreground_fraction(png):
    w, h, rows = png_pixels(png)
    differ = sum(1 for row in rows for p in row if sum(abs(p[k] - BACKGROUND[k]) for k in range(3)) > 30)
    return differ / float(w * h)


def viewer_clip(b):
    return b.js("(() => { const r = document.getElementById('viewer').getBoundingClientRect(); return {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}; })()")


def open_page(b, url, timeout):
    b.call("Page.navigate", url=url)
    b.wait("the page", "document.body && document.body.dataset.ready === '1' && document.body.dataset.sse === 'open'", timeout)


PREVIEWS_JS = "(() => { const imgs = [...document.querySelectorAll('#previews img')]; return imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.map(i => i.alt) : null; })()"

DOWNLOADS_JS = """(async () => {
  const out = [];
  for (const a of document.querySelectorAll('#downloads a')) {
    const r = await fetch(a.href);
    const buf = await r.arrayBuffer();
    const digest = await crypto.subtle.digest('SHA-256', buf);
    out.push({format: a.dataset.format, name: a.getAttribute('download'), href: a.getAttribute('href'), status: r.status,
              disposition: r.headers.get('content-disposition'), listed_sha256: a.dataset.sha256, bytes: buf.byteLength,
              sha256: [...new Uint8Array(digest)].map(x => x.toString(16).padStart(2, '0')).join('')});
  }
  return out;
})()"""


def scenario_happy(b, args, out):
    open_page(b, args.url, args.timeout)
    out["csp"] = b.js("fetch('/').then(r => r.headers.get('content-security-policy'))")
    # A face budget the page passes to the node (and a wireframe a person can read).
    b.js(f"document.getElementById('model').value = {json.dumps(args.model)}; document.querySelector('input[value=\"3mf\"]').checked = true; document.getElementById('faces').value = '{args.faces}'; true")
    b.set_files("#files", [os.path.abspath(args.image)])
    job_id = b.wait("a job card", "document.querySelector('.job') && document.querySelector('.job').dataset.jobId", args.timeout)
    out["job_id"] = job_id
    # Poll the card while the job runs: every state and percent the page showed.
    seen_states, seen_percent, stages = [], [], ""
    deadline = time.time() + args.timeout
    while True:
        card = b.js("(() => { const c = document.querySelector('.job'); return {state: c.dataset.state, percent: +c.dataset.percent, stages: c.dataset.stages, text: c.querySelector('.stage').textContent}; })()")
        if not seen_states or seen_states[-1] != card["state"]:
            seen_states.append(card["state"])
        if not seen_percent or seen_percent[-1] != card["percent"]:
            seen_percent.append(card["percent"])
        stages = card["stages"]
        if card["state"] in ("completed", "failed", "canceled"):
            break
        if time.time() > deadline:
            raise TimeoutError(f"job not done: {card}")
        time.sleep(0.02)
    out.update(states=seen_states, percents=seen_percent, stages=stages.split(","), final=card)
    out["triangles"] = int(b.wait("the mesh in the viewer", "+document.getElementById('viewer').dataset.triangles", args.timeout))
    clip = viewer_clip(b)
    fraction, deadline = 0.0, time.time() + 20
    while fraction < 0.01 and time.time() < deadline:
        fraction = foreground_fraction(b.screenshot(clip=clip))
    out["viewer_foreground"] = fraction
    out["report"] = b.js("[...document.querySelectorAll('#report li')].map(li => ({level: li.className, text: li.textContent}))")
    out["previews"] = b.wait("previews", PREVIEWS_JS, args.timeout)
    out["downloads"] = b.js(DOWNLOADS_JS)
    if args.shots:
        b.screenshot(os.path.join(args.shots, "studio-done.png"))
    b.js("document.getElementById('wireframe').click(); true")
    out["wireframe_foreground"] = foreground_fraction(b.screenshot(clip=clip))
    if args.shots:
        b.screenshot(os.path.join(args.shots, "studio-wireframe.png"), clip=clip)
    b.js("document.getElementById('wireframe').click(); document.getElementById('show-colour').click(); true")
    out["uncoloured_foreground"] = foreground_fraction(b.screenshot(clip=clip))
    # The history survives a reload: it is the server's session.
    open_page(b, args.url, args.timeout)
    out["history_after_reload"] = b.wait("the history", "[...document.querySelectorAll('.job')].map(c => c.dataset.jobId)", args.timeout)


DROP_JS = """((files) => {
  const dt = new DataTransfer();
  for (const [name, type, b64] of files) dt.items.add(new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], name, {type}));
  const drop = document.getElementById('drop');
  drop.dispatchEvent(new DragEvent('dragenter', {bubbles: true, cancelable: true, dataTransfer: dt}));
  drop.dispatchEvent(new DragEvent('drop', {bubbles: true, cancelable: true, dataTransfer: dt}));
  return true;
})"""


def drop(b, name, kind, data):
    drop_many(b, [(name, kind, data)])


def drop_many(b, files):
    """Drop several files at once, as a person dragging a selection."""
    spec = [[name, kind, base64.b64encode(data).decode()] for name, kind, data in files]
    b.js(f"{DROP_JS}({json.dumps(spec)})")


DETAIL_JS = "(() => { const d = document.getElementById('detail'); return !d.hidden && document.getElementById('detail-title').textContent; })()"


def errors(b):
    return b.js("[...document.querySelectorAll('#errors li')].map(li => ({code: li.dataset.code, text: li.textContent}))")


def scenario_errors(b, args, out):
    open_page(b, args.url, args.timeout)
    drop(b, "notes.png", "image/png", b"this is text, not a picture\n")
    b.wait("the type error", "!!document.querySelector('#errors li[data-code=unsupported_type]')", args.timeout)
    limit = b.js("fetch('/api/config').then(r => r.json()).then(c => c.max_upload_bytes)")
    drop(b, "huge.png", "image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * (limit + 1))
    b.wait("the size error", "!!document.querySelector('#errors li[data-code=too_large]')", args.timeout)
    b.js("document.getElementById('faces').value = '10'; true")
    drop(b, "mug.png", "image/png", open(args.image, "rb").read())
    b.wait("the faces error", "!!document.querySelector('#errors li[data-code=invalid_argument]')", args.timeout)
    out["jobs_after_bad_uploads"] = b.js("document.querySelectorAll('.job').length")
    # A good drop: drag and drop makes a job like the file picker does.
    b.js("document.getElementById('faces').value = ''; true")
    drop(b, "dropped.png", "image/png", open(args.image, "rb").read())
    out["dropped_job"] = b.wait("the dropped job", "(() => { const c = document.querySelector('.job[data-state=completed]'); return c && {id: c.dataset.jobId, name: c.querySelector('.name').textContent}; })()", args.timeout)
    out["dropped_triangles"] = int(b.wait("the dropped mesh in the viewer", "+document.getElementById('viewer').dataset.triangles", args.timeout))
    b.wait("previews", PREVIEWS_JS, args.timeout)
    out["errors"] = errors(b)
    if args.shots:
        b.screenshot(os.path.join(args.shots, "studio-errors.png"))
    # The panel follows the newest drop: its first file's job, then the next drop's.
    mug = open(args.image, "rb").read()
    drop_many(b, [("first.png", "image/png", mug), ("second.png", "image/png", mug)])
    out["detail_after_two"] = b.wait("the first file's job in the panel", f"(() => {{ const t = {DETAIL_JS}; return t && t !== 'dropped.png' && t; }})()", args.timeout)
    b.wait("both jobs listed", "document.querySelectorAll('.job').length === 3", args.timeout)
    drop(b, "third.png", "image/png", mug)
    out["detail_after_third"] = b.wait("the next drop's job in the panel", f"(() => {{ const t = {DETAIL_JS}; return t === 'third.png' && t; }})()", args.timeout)
    # A card the person picks stays in the panel while jobs finish.
    b.js("[...document.querySelectorAll('.job')].find(c => c.querySelector('.name').textContent === 'first.png').click(); true")
    b.wait("all done", "[...document.querySelectorAll('.job')].every(c => c.dataset.state === 'completed')", args.timeout)
    out["detail_after_pick"] = b.js(DETAIL_JS)
    # A POST from script without the page's token is refused.
    out["tokenless_post"] = b.js("fetch('/api/jobs?name=x.png', {method: 'POST', body: 'x'}).then(async r => ({status: r.status, body: await r.json()}))")


def scenario_cancel(b, args, out):
    open_page(b, args.url, args.timeout)
    b.js(f"document.getElementById('model').value = {json.dumps(args.model)}; true")
    b.set_files("#files", [os.path.abspath(args.image)])
    out["before_cancel"] = b.wait("a running job", "(() => { const c = document.querySelector('.job'); return c && ['queued', 'running'].includes(c.dataset.state) && c.querySelector('button.cancel') ? c.dataset.state : null; })()", args.timeout)
    out["job_id"] = b.js("document.querySelector('.job').dataset.jobId")
    # What the card says while the job waits or runs: its stage and the ETA (page's clock).
    out["running_card"] = b.js("(() => { const c = document.querySelector('.job'); return {stage: c.querySelector('.stage').textContent, eta: c.querySelector('.eta').textContent}; })()")
    out["viewer_note"] = b.wait("the viewer's note", "(() => { const n = document.getElementById('viewer-note'); return !n.hidden && n.textContent; })()", args.timeout)
    if args.shots:
        b.screenshot(os.path.join(args.shots, "studio-running.png"))
    b.js("document.querySelector('.job button.cancel').click(); true")
    out["after_cancel"] = b.wait("the canceled job", "(() => { const c = document.querySelector('.job'); return c.dataset.state === 'canceled' ? {state: c.dataset.state, error: c.querySelector('.error') && c.querySelector('.error').dataset.code, button: !!c.querySelector('button.cancel')} : null; })()", args.timeout)


def scenario_shared(b, args, out):
    """The page opened on a shared studio's link: the key becomes a cookie and the page works."""
    open_page(b, args.url, args.timeout)
    out["address"] = b.js("location.href")
    b.js(f"document.getElementById('model').value = {json.dumps(args.model)}; true")
    b.set_files("#files", [os.path.abspath(args.image)])
    out["final"] = b.wait("the job done", "(() => { const c = document.querySelector('.job'); return c && ['completed', 'failed', 'canceled'].includes(c.dataset.state) && c.dataset.state; })()", args.timeout)
    b.wait("downloads", "document.querySelectorAll('#downloads a').length > 0", args.timeout)
    out["downloads"] = b.js(DOWNLOADS_JS)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--scenario", required=True, choices=["happy", "errors", "cancel", "shared"])
    parser.add_argument("--image")
    parser.add_argument("--model", default="null")
    parser.add_argument("--faces", type=int, default=8000, help="the face budget of the happy scenario")
    parser.add_argument("--shots")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    args = parser.parse_args()
    b = Browser(args.chromium)
    out = {"scenario": args.scenario}
    try:
        {"happy": scenario_happy, "errors": scenario_errors, "cancel": scenario_cancel, "shared": scenario_shared}[args.scenario](b, args, out)
        out["ok"] = True
    except Exception as e:
        out["ok"] = False
        out["error"] = f"{type(e).__name__}: {e}"
        try:
            if args.shots:
                b.screenshot(os.path.join(args.shots, f"failed-{args.scenario}.png"))
        except Exception:
            pass
    out["console"] = b.console[-20:]
    b.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
