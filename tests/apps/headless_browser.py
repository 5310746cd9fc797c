"""A page loaded in headless Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
NUL-separated JSON on file descriptors 3 and 4), with nothing beyond the standard library: the
console errors, uncaught exceptions and failed loads it reported, a JavaScript value, a screenshot."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> Optional[str]:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class Page:
    """``Page(url)`` loads ``url``; ``errors`` lists what the console and the log reported as errors."""

    def __init__(self, url: str, browser: Optional[str] = None, timeout: float = 60.0, width: int = 1280) -> None:
        exe = browser or find_browser()
        if exe is None:
            raise FileNotFoundError("no Chromium / Chrome installed")
        self._timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="cdp-profile-")
        cmd_r, cmd_w = os.pipe()  # the browser reads commands on its fd 3
        out_r, out_w = os.pipe()  # and writes replies and events on its fd 4

        def child_fds() -> None:
            a, b = os.dup(cmd_r), os.dup(out_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._proc = subprocess.Popen(
            [exe, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", f"--user-data-dir={self._profile}", f"--window-size={width},900", "about:blank"],
            preexec_fn=child_fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(out_w)
        self._w = os.fdopen(cmd_w, "wb", buffering=0)
        self._r = os.fdopen(out_r, "rb", buffering=0)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        self.errors: list[str] = []
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Page.navigate", {"url": url})
        self._wait_event("Page.loadEventFired")

    # -- protocol --------------------------------------------------------------------------------
    def _send(self, msg: dict) -> int:
        self._id += 1
        msg["id"] = self._id
        self._w.write(json.dumps(msg).encode() + b"\0")
        return self._id

    def _read(self) -> dict:
        deadline = time.monotonic() + self._timeout
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("the browser did not answer")
            chunk = self._r.read(1 << 16)
            if not chunk:
                raise RuntimeError("the browser closed the pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg = json.loads(raw)
        if "method" in msg:
            self._note(msg)
        return msg

    def _note(self, ev: dict) -> None:
        self.events.append(ev)
        p = ev.get("params", {})
        if ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif ev["method"] == "Runtime.exceptionThrown":
            self.errors.append("exception: " + p["exceptionDetails"].get("text", ""))
        elif ev["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
            self.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")

    def _call(self, method: str, params: Optional[dict] = None, session: Optional[str] = None) -> dict:
        msg: dict[str, Any] = {"method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        i = self._send(msg)
        while True:
            reply = self._read()
            if reply.get("id") == i:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def call(self, method: str, params: Optional[dict] = None) -> dict:
        return self._call(method, params, self._session)

    def _wait_event(self, method: str) -> dict:
        for ev in self.events:
            if ev["method"] == method:
                return ev
        while True:
            msg = self._read()
            if msg.get("method") == method:
                return msg

    # -- what a test asks ------------------------------------------------------------------------
    def evaluate(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        try:
            self._call("Browser.close")
        except Exception:  # noqa: BLE001 - the browser may already be gone
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._w.close()
        self._r.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Page":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
