"""The report in a real browser: headless Chromium driven over the Chrome DevTools Protocol.

Why CDP rather than ``--dump-dom`` with a test-only script: the shipped page has no script and
a Content-Security-Policy that forbids one, and what we must check happens outside the DOM —
failed requests (Network.loadingFailed), any request at all that is not a data: URI
(Network.requestWillBeSent), console and CSP errors (Runtime/Log events), and whether every
image *decodes* (HTMLImageElement.decode(), awaited in the page). DevTools sees all of it on
the page exactly as shipped. Python's stdlib has no websocket client, so a minimal RFC 6455
client (masked text frames out, fragmented/large frames in, ping/close) lives below.

Needs Debian's ``chromium`` package (``.ci/run`` installs it); skipped, saying so, without it.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "models" / "shapes_cnn.onnx"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--window-size=1280,800")
WIDTH = 1280  # a laptop screen


def find_chromium():
    for name in (os.environ.get("ONNXVIZ_CHROMIUM"), *BROWSERS):
        path = name and shutil.which(name)
        if path:
            return path
    return None


# ---------------------------------------------------------------------------- a minimal websocket client


class WebSocket:
    """Just enough RFC 6455 for CDP: one text message at a time, client frames masked."""

    def __init__(self, url: str, timeout: float = 60):
        u = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {u.path or '/'} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode())
        self.rfile = self.sock.makefile("rb")
        status = self.rfile.readline()
        if b" 101 " not in status:
            raise ConnectionError(f"websocket upgrade refused: {status!r}")
        while self.rfile.readline() not in (b"\r\n", b""):
            pass

    def send(self, text: str, opcode: int = 0x1):
        payload = text.encode() if isinstance(text, str) else text
        n = len(payload)
        header = bytes([0x80 | opcode])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = (np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
        self.sock.sendall(header + mask + masked)

    def _exactly(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) != n:
            raise ConnectionError("websocket closed")
        return data

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._exactly(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._exactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._exactly(8))[0]
            mask = self._exactly(4) if b1 & 0x80 else None
            payload = self._exactly(n)
            if mask:
                payload = (np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if opcode == 0x9:  # ping
                self.send(payload, 0xA)
                continue
            if opcode in (0x1, 0x2, 0x0):
                parts.append(payload)
                if b0 & 0x80:
                    return b"".join(parts).decode()

    def close(self):
        try:
            self.send(b"", 0x8)
        except OSError:
            pass
        self.sock.close()


class DevTools:
    """CDP over one page's websocket: ``call`` waits for its reply and keeps the events seen meanwhile."""

    def __init__(self, ws_url: str):
        self.ws = WebSocket(ws_url)
        self.next_id = 0
        self.events: list = []

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(m["method"] == event for m in self.events):
                return
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(f"no {event} within {timeout} s")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


class Chromium:
    """A headless Chromium with its own profile; DevTools port chosen by Chromium (no race)."""

    def __init__(self, binary: str, profile: Path):
        self.profile = profile
        self.log = open(profile.parent / "chromium.log", "wb")
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                      "about:blank"], stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("Chromium did not start:\n" + self.output()[-3000:])
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])

    def page(self) -> DevTools:
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost, never a proxy
        for _ in range(100):
            targets = json.load(opener.open(f"http://127.0.0.1:{self.port}/json/list", timeout=10))
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return DevTools(pages[0]["webSocketDebuggerUrl"])
            time.sleep(0.1)
        raise RuntimeError("Chromium has no page target")

    def output(self) -> str:
        self.log.flush()
        return (self.profile.parent / "chromium.log").read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group we started: browser, zygote, renderers
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


# ---------------------------------------------------------------------------- checks


def load(tools: DevTools, path: Path) -> dict:
    """Open ``path``, wait for load and every image's decode(); return what the page reports."""
    tools.events.clear()
    tools.call("Page.navigate", url=path.resolve().as_uri())
    tools.wait_for("Page.loadEventFired")
    return tools.evaluate("""(async () => {
        const imgs = [...document.images];
        const decoded = await Promise.all(imgs.map(i => i.decode().then(() => true, () => false)));
        return {
          images: imgs.map((i, k) => ({alt: i.alt, width: i.naturalWidth, height: i.naturalHeight,
                                       decoded: decoded[k], data: i.src.startsWith('data:image/png;base64,')})),
          scripts: document.scripts.length,
          links: [...document.querySelectorAll('link[href], [src]:not(img), [style*="url("]')].length,
          overflow: document.documentElement.scrollWidth - window.innerWidth,
          height: document.documentElement.scrollHeight,
          title: document.title,
          sections: [...document.querySelectorAll('main > section')].map(s => [s.id, s.className]),
        };
    })()""")


def problems(events: list) -> list:
    """Console errors/warnings, exceptions, log errors (CSP, loads), failed and non-data requests."""
    found = []
    for m in events:
        p = m.get("params", {})
        if m["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            found.append(f"console {p['type']}: {p.get('args')}")
        elif m["method"] == "Runtime.exceptionThrown":
            found.append(f"exception: {p.get('exceptionDetails')}")
        elif m["method"] == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            found.append(f"log {p['entry']['level']}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif m["method"] == "Network.loadingFailed":
            found.append(f"failed request: {p.get('errorText')} {p.get('type')}")
        elif m["method"] == "Network.requestWillBeSent":
            url = p["request"]["url"]
            if not (url.startswith("data:") or url.startswith("file:")):
                found.append(f"network request: {url[:120]}")
    return found


def screenshot(tools: DevTools, height: int) -> bytes:
    shot = tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                      clip={"x": 0, "y": 0, "width": WIDTH, "height": min(height, 16000), "scale": 1})
    return base64.b64decode(shot["data"])


def assert_not_blank(png: bytes):
    from PIL import Image

    im = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    assert im.shape[1] == WIDTH and im.shape[0] > 800
    background = np.median(im.reshape(-1, 3), axis=0)
    differs = np.abs(im - background).sum(axis=-1) > 30
    assert differs.mean() > 0.05, f"only {differs.mean():.1%} of the screenshot differs from its background"
    colours = len(np.unique(im[::4, ::4].reshape(-1, 3), axis=0))
    assert colours > 500, f"the screenshot has only {colours} colours"


# ---------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = find_chromium()
    if binary is None:
        pytest.skip("Chromium not found, so the report cannot be checked in a browser here: .ci/run installs "
                    "Debian's package (apt-get install -y chromium) where it can; ONNXVIZ_CHROMIUM may name "
                    "another Chrome/Chromium binary")
    chrome = Chromium(binary, tmp_path_factory.mktemp("chromium") / "profile")
    try:
        tools = chrome.page()
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.call(f"{domain}.enable")
        tools.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=800, deviceScaleFactor=1, mobile=False)
        yield tools
        tools.ws.close()
    finally:
        chrome.stop()


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory):
    """The report of the bundled sample model on its images, with a generated dataset folder."""
    import onnxviz
    from onnxviz.session import open_session

    assert SAMPLE.is_file(), f"the sample model {SAMPLE} is missing (scripts/build_sample_model.py builds it)"
    root = tmp_path_factory.mktemp("report")
    images = sorted(str(p) for p in (SAMPLE.parent / "images").glob("*.png"))
    dataset = root / "dataset"
    from onnxviz.synthetic import make_shapes, save_folder

    save_folder(make_shapes(48, size=64, seed=7), dataset)
    session = open_session(str(SAMPLE), device="cpu")
    out = root / "report.html"
    r = onnxviz.report(session.model, images, out, dataset=dataset, labels=session.labels, pre=session.pre)
    return r, out


def test_report_opens_cleanly_in_chromium(browser, sample_report):
    r, path = sample_report
    page = load(browser, path)
    assert problems(browser.events) == []
    assert page["scripts"] == 0 and page["links"] == 0
    assert page["images"], "the report has no images"
    bad = [i["alt"] for i in page["images"] if not (i["decoded"] and i["width"] > 0 and i["height"] > 0)]
    assert bad == [], f"images that do not decode: {bad}"
    assert all(i["data"] for i in page["images"])
    assert page["overflow"] <= 0, "the page is wider than a 1280-px laptop screen"
    assert page["title"].startswith("onnxviz report")
    sections = dict(page["sections"])
    assert sections.pop("timings") == "card"
    assert set(sections) >= {"model", "gradcheck", "filters", "images", "dataset"}
    assert all(cls == "card ok" for cls in sections.values()), sections
    png = screenshot(browser, page["height"])
    assert_not_blank(png)
    target = Path(os.environ.get("ONNXVIZ_REPORT_SCREENSHOT") or path.with_suffix(".png"))
    target.write_bytes(png)
    print(f"screenshot: {target}", file=sys.stderr)
    pdf = base64.b64decode(browser.call("Page.printToPDF", printBackground=False)["data"])
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page") > 2  # printable, several pages


def test_failing_sections_render_cleanly(browser, tmp_path):
    """A model where CAM and gradients cannot apply still gives a clean page that says why."""
    import onnxviz
    from test_report import unsupported_model, write_images

    model = onnxviz.load(unsupported_model(tmp_path), device="cpu")
    out = tmp_path / "report.html"
    onnxviz.report(model, write_images(tmp_path, 2, 16), out)
    page = load(browser, out)
    assert problems(browser.events) == []
    assert all(i["decoded"] and i["width"] > 0 for i in page["images"])
    assert dict(page["sections"])["gradcheck"].split()[-1] == "error"
