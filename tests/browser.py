"""A small Chrome DevTools Protocol driver for the report's browser test and its screenshots.

Starts Debian's chromium headless with the network off (every request goes to a dead proxy, nothing is
bypassed but the loopback), opens one page target over a websocket (``websocket-client``), collects console
errors and uncaught exceptions, navigates, evaluates expressions and captures PNG screenshots. The browser's
process group is killed on ``close`` (and on leaving the ``with`` block), whatever happened.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0", "--no-first-run",
         "--disable-extensions", "--disable-sync", "--disable-background-networking",
         "--disable-component-update", "--disable-default-apps", "--mute-audio",
         "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--hide-scrollbars")


def find_chromium() -> str | None:
    """The chromium executable on PATH (or /usr/bin/chromium), else None."""
    for name in CHROMIUM:
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


class Browser:
    """One headless chromium and one page. ``errors``: console errors, exceptions and error log entries."""

    def __init__(self, executable: str | None = None, width: int = 1200, height: int = 900, timeout: float = 20.0):
        import websocket

        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="thresher-chromium-")
        exe = executable or find_chromium()
        if exe is None:
            raise FileNotFoundError("chromium is not installed")
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={self.profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port = self._port()
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5).read())
            page = next(t for t in targets if t.get("type") == "page")
            self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout,
                                                  suppress_origin=True)
        except BaseException:
            self.close()
            raise
        self._id, self.errors, self.events = 0, [], []
        for method in ("Runtime.enable", "Log.enable", "Page.enable"):
            self.send(method)
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _port(self) -> int:
        """The debugging port chromium chose, from the profile's DevToolsActivePort."""
        path, deadline = Path(self.profile) / "DevToolsActivePort", time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return int(path.read_text().splitlines()[0])
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self.proc.returncode} before it listened")
            time.sleep(0.05)
        raise TimeoutError("chromium did not write DevToolsActivePort")

    def send(self, method: str, **params) -> dict:
        """Call ``method`` and wait for its result; events that arrive meanwhile are recorded."""
        self._id += 1
        my = self._id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)
        raise TimeoutError(f"{method}: no answer in {self.timeout} s")

    def _event(self, msg: dict) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        self.events.append(method)
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.errors.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            self.errors.append("log: " + p["entry"].get("text", ""))

    def open(self, path) -> None:
        """Navigate to the local file ``path`` and wait for its load event."""
        self.events.clear()
        self.send("Page.navigate", url=Path(path).resolve().as_uri())
        deadline = time.monotonic() + self.timeout
        while "Page.loadEventFired" not in self.events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not load in {self.timeout} s")
            self.ws.settimeout(max(deadline - time.monotonic(), 0.1))
            self._event(json.loads(self.ws.recv()))
        self.ws.settimeout(self.timeout)

    def eval(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-serialisable results)."""
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression!r}: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def screenshot(self, out, *, full_page: bool = False) -> Path:
        """A PNG of the viewport (or with ``full_page`` of the whole page) written to ``out``."""
        params = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        out = Path(out)
        out.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", **params)["data"]))
        return out

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
