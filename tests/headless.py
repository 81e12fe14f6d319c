"""Open a page in headless Chromium and report what happened: console errors, exceptions, requests.

Chromium is driven over the DevTools protocol through ``--remote-debugging-pipe`` (JSON
messages separated by NUL bytes on file descriptors 3 and 4), so no port, websocket library or
network is involved. Every host name resolves to nothing (``--host-resolver-rules``), so a page
that tried to fetch something would also fail visibly. Used by ``tests/test_report_browser.py``;
also a script for a look at a report::

    python tests/headless.py results/quickstart/report.html --screenshot report.png
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> Optional[str]:
    return next((p for n in CHROMIUM_NAMES if (p := shutil.which(n))), None)


@dataclass
class PageLoad:
    url: str
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, its own included
    console_errors: list[str] = field(default_factory=list)  # console.error/assert, log errors, exceptions
    svg_count: int = 0
    title: str = ""
    page_width: int = 0  # the document's scroll width at the window's width
    screenshot: Optional[bytes] = None


class Chromium:
    """One headless Chromium process; :meth:`load` opens a page in a fresh tab."""

    def __init__(self, binary: str, width: int = 1280, height: int = 900, timeout_s: float = 45.0) -> None:
        self.timeout_s = timeout_s
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-")
        self._log = open(Path(self._profile.name) / "stderr.txt", "wb")
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                "--host-resolver-rules=MAP * ~NOTFOUND", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={self._profile.name}", f"--window-size={width},{height}", "about:blank"]
        # The pipe is fds 3 (commands in) and 4 (replies out) in the browser: move our stdin/stdout there.
        self._proc = subprocess.Popen(["bash", "-c", 'exec "$@" 3<&0 4>&1 </dev/null >/dev/null', "_", *args],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        self._inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._next_id = 0

    def _read(self) -> None:
        assert self._proc.stdout is not None
        buf = b""
        while chunk := self._proc.stdout.read1(65536):
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for m in messages:
                self._inbox.put(json.loads(m))

    def _send(self, method: str, params: Optional[dict] = None, session: Optional[str] = None) -> int:
        assert self._proc.stdin is not None
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._proc.stdin.write(json.dumps(msg).encode() + b"\0")
        self._proc.stdin.flush()
        return self._next_id

    def _until(self, done: Any, events: list[dict], deadline: float) -> dict:
        """Messages until ``done(msg)`` is true; every event seen on the way is kept in ``events``."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"chromium did not answer in {self.timeout_s} s; its log: {self.log_tail()}")
            try:
                msg = self._inbox.get(timeout=left)
            except queue.Empty:
                continue
            if "method" in msg:
                events.append(msg)
            if done(msg):
                return msg

    def _call(self, method: str, params: Optional[dict], session: Optional[str], events: list[dict],
              deadline: float) -> dict:
        i = self._send(method, params, session)
        msg = self._until(lambda m: m.get("id") == i, events, deadline)
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg.get("result", {})

    def load(self, path: Path, screenshot: bool = False, settle_s: float = 0.3) -> PageLoad:
        deadline = time.monotonic() + self.timeout_s
        events: list[dict] = []
        url = path.resolve().as_uri()
        target = self._call("Target.createTarget", {"url": "about:blank"}, None, events, deadline)["targetId"]
        session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True}, None, events,
                             deadline)["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self._call(f"{domain}.enable", None, session, events, deadline)
        self._call("Page.navigate", {"url": url}, session, events, deadline)
        self._until(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session,
                    events, deadline)
        time.sleep(settle_s)  # late console messages and requests
        probe = ("JSON.stringify({svgs: document.querySelectorAll('svg').length, title: document.title, "
                 "width: document.documentElement.scrollWidth})")
        value = json.loads(self._call("Runtime.evaluate", {"expression": probe, "returnByValue": True}, session,
                                      events, deadline)["result"]["value"])
        page = PageLoad(url, svg_count=value["svgs"], title=value["title"], page_width=value["width"])
        if screenshot:
            shot = self._call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session,
                              events, deadline)
            page.screenshot = base64.b64decode(shot["data"])
        while not self._inbox.empty():
            msg = self._inbox.get_nowait()
            if "method" in msg:
                events.append(msg)
        for ev in (e for e in events if e.get("sessionId") == session):
            method, p = ev["method"], ev.get("params", {})
            if method == "Network.requestWillBeSent":
                page.requests.append(p["request"]["url"])
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                page.console_errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif method == "Runtime.exceptionThrown":
                page.console_errors.append(p["exceptionDetails"].get("text", "exception"))
            elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                page.console_errors.append(p["entry"]["text"])
        self._call("Target.closeTarget", {"targetId": target}, None, events, deadline)
        return page

    def log_tail(self) -> str:
        self._log.flush()
        return (Path(self._profile.name) / "stderr.txt").read_text(errors="replace")[-2000:]

    def close(self) -> None:
        try:
            if self._proc.poll() is None:
                self._send("Browser.close")
                self._proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self._proc.poll() is None:
                self._proc.kill()  # our own child, by its handle
                self._proc.wait()
            self._log.close()
            self._profile.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("page", type=Path)
    p.add_argument("--screenshot", type=Path, default=None, help="write a full-page PNG here")
    p.add_argument("--width", type=int, default=1280)
    args = p.parse_args(argv)
    binary = find_chromium()
    if binary is None:
        print("chromium not found", file=sys.stderr)
        return 2
    with Chromium(binary, width=args.width) as browser:
        page = browser.load(args.page, screenshot=args.screenshot is not None)
    if args.screenshot and page.screenshot:
        args.screenshot.write_bytes(page.screenshot)
    print(json.dumps({k: v for k, v in vars(page).items() if k != "screenshot"}, indent=2))
    return 0 if not page.console_errors and page.requests == [page.url] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
