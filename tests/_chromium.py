"""Headless Chromium driven over the DevTools protocol (CDP), with websocket-client alone.

    with Chromium.start(exe, workdir) as browser:
        visit = browser.visit("http://127.0.0.1:8000/index.html")
        visit.js_errors, visit.failed_requests, browser.evaluate("document.title")

Used by tests/test_book_browser.py. One page (tab), one websocket; every event the page
sends is kept, so a visit reports the JavaScript exceptions thrown, the console errors, and
the requests that failed or came back >= 400. External hosts resolve to nothing
(``--host-resolver-rules``): the site is tested offline, as it is served, on its own files.
Protocol: https://chromedevtools.github.io/devtools-protocol/
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import time
import urllib.request

EXECUTABLES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = ("apt install chromium (Debian/Ubuntu), or set MLSCALE_CHROMIUM to a "
                "Chromium or Chrome executable")


def find_chromium() -> str | None:
    """$MLSCALE_CHROMIUM, else the first of chromium, chromium-browser, google-chrome on PATH."""
    if os.environ.get("MLSCALE_CHROMIUM"):
        return shutil.which(os.environ["MLSCALE_CHROMIUM"])   # None: not an executable
    for name in EXECUTABLES:
        if shutil.which(name):
            return shutil.which(name)
    return None


class CDPError(RuntimeError):
    pass


@dataclasses.dataclass
class Visit:
    """What one page load did: its URL, the HTTP status of the document, JavaScript
    exceptions and console errors, local requests that failed (or answered >= 400), and
    requests to other hosts that could not be made (offline: expected, reported apart)."""
    url: str
    status: int | None = None
    js_errors: list[str] = dataclasses.field(default_factory=list)
    failed_requests: list[str] = dataclasses.field(default_factory=list)
    external_blocked: list[str] = dataclasses.field(default_factory=list)


class Chromium:
    def __init__(self, proc, ws, workdir, origin_host="127.0.0.1"):
        self.proc, self.ws, self.workdir = proc, ws, pathlib.Path(workdir)
        self.origin_host = origin_host
        self._id = 0
        self.events: list[dict] = []

    # -- start and stop -------------------------------------------------------------------
    @classmethod
    def start(cls, exe: str, workdir: pathlib.Path, width=1280, height=900, timeout=60.0):
        """Start ``exe`` headless with a fresh profile under ``workdir``; connect to its
        first tab. Raises CDPError naming the executable and the tail of its stderr when it
        does not come up within ``timeout`` seconds."""
        import websocket   # websocket-client

        workdir = pathlib.Path(workdir)
        profile = workdir / "profile"
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)
        log = open(workdir / "chromium.log", "wb")
        args = [exe, "--headless=new", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                "--disable-background-networking", "--disable-component-update",
                "--disable-dev-shm-usage", "--hide-scrollbars",
                "--remote-debugging-port=0", "--remote-allow-origins=*",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")   # Chromium refuses to run as root with its sandbox
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                tail = (workdir / "chromium.log").read_text(errors="replace")[-1500:]
                raise CDPError(f"{exe} did not start (exit status {proc.poll()}); its stderr ends:\n{tail}")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        targets = []
        while not targets:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = [t for t in json.load(r) if t.get("type") == "page"]
            if not targets:
                time.sleep(0.1)
        ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=timeout,
                                         suppress_origin=True, enable_multithread=False)
        self = cls(proc, ws, workdir)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        # the page's viewport is exactly width x height (the window's frame takes some of it)
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        return self

    def close(self):
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.ws.close()
        finally:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the protocol ---------------------------------------------------------------------
    def _recv(self, timeout):
        import websocket
        self.ws.settimeout(max(timeout, 0.001))
        try:
            return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            return None

    def send(self, method, timeout=60.0, **params):
        """Call a CDP method and return its result; events that arrive meanwhile are kept."""
        self._id += 1
        my = self._id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError(f"{method}: no answer from Chromium within {timeout} s")
            msg = self._recv(left)
            if msg is None:
                continue
            if msg.get("id") == my:
                if "error" in msg:
                    raise CDPError(f"{method}({params}): {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, name, timeout=30.0):
        """Wait for an event named ``name`` (one already kept counts); return it."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if ev["method"] == name:
                    return ev
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError(f"no {name} within {timeout} s")
            msg = self._recv(min(left, 0.5))
            if msg is not None and "method" in msg:
                self.events.append(msg)

    def pump(self, seconds):
        """Keep the events the page sends during ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self._recv(min(left, 0.2))
            if msg is not None and "method" in msg:
                self.events.append(msg)

    def evaluate(self, expression, await_promise=False):
        """The value of a JavaScript expression in the page (JSON-serialisable values);
        raises CDPError with the exception's text when it throws."""
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=await_promise)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise CDPError(f"{expression[:80]!r} threw: {d.get('exception', {}).get('description') or d.get('text')}")
        return r["result"].get("value")

    def wait_for(self, expression, timeout=10.0, every=0.1):
        """Poll a JavaScript expression until it is truthy; return its value (or raise)."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.evaluate(expression)
            if v:
                return v
            if time.monotonic() > deadline:
                raise CDPError(f"{expression[:120]!r} still false after {timeout} s")
            self.pump(every)

    # -- what the tests use ---------------------------------------------------------------
    def visit(self, url, settle=0.1, timeout=30.0) -> Visit:
        """Load ``url``, wait for its load event and ``settle`` seconds more, and report
        what went wrong on the way (a Visit)."""
        self.events.clear()
        r = self.send("Page.navigate", url=url)
        if r.get("errorText"):
            v = Visit(url)
            v.failed_requests.append(f"{url}: {r['errorText']}")
            return v
        self.wait_event("Page.loadEventFired", timeout=timeout)
        self.pump(settle)
        return self.report(url)

    def report(self, url) -> Visit:
        v = Visit(url)
        urls = {}
        for ev in self.events:
            m, p = ev["method"], ev["params"]
            if m == "Network.requestWillBeSent":
                urls[p["requestId"]] = p["request"]["url"]
            elif m == "Network.responseReceived":
                resp = p["response"]
                if p.get("type") == "Document" and resp["url"].split("#")[0] == url.split("#")[0]:
                    v.status = resp["status"]
                # /favicon.ico: the browser's own guess, not a link of the page
                if resp["status"] >= 400 and self._local(resp["url"]) \
                        and not resp["url"].endswith("/favicon.ico"):
                    v.failed_requests.append(f"{resp['url']}: HTTP {resp['status']}")
            elif m == "Network.loadingFailed":
                u = urls.get(p["requestId"], "?")
                if self._local(u):
                    if not p.get("canceled"):
                        v.failed_requests.append(f"{u}: {p.get('errorText')}")
                else:
                    v.external_blocked.append(u)
            elif m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                v.js_errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}"
                                   f" at {d.get('url', '?')}:{d.get('lineNumber')}")
            elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                v.js_errors.append("console.error: " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif m == "Log.entryAdded":
                e = p["entry"]
                # failed loads come as Network events above; the rest are the page's own errors
                if e["level"] == "error" and e.get("source") not in ("network",):
                    v.js_errors.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}")
        return v

    def _local(self, url):
        return url.startswith(f"http://{self.origin_host}:") or url.startswith(f"http://{self.origin_host}/")

    def screenshot(self, path, clip=None):
        """Save a PNG of the viewport (or of ``clip``: a DOMRect-like dict) to ``path``."""
        params = {"format": "png"}
        if clip:
            params["clip"] = {"x": clip["x"], "y": clip["y"], "width": clip["width"],
                              "height": clip["height"], "scale": 1}
            params["captureBeyondViewport"] = True
        data = base64.b64decode(self.send("Page.captureScreenshot", **params)["data"])
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def click(self, x, y):
        """A real left click at viewport coordinates (x, y): press and release."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=0 if kind == "mouseMoved" else 1)
