"""A headless Chromium driven over the DevTools protocol, standard library only.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol messages from file
descriptor 3 and writes to 4, each a JSON object ending in a NUL byte (what Playwright and
Puppeteer use too), so no websocket client and no port are needed. What the page logs as
an error (``console.error``, an uncaught exception, a resource that failed to load, a
Content-Security-Policy violation) is collected in :attr:`Browser.errors`.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Where Debian's ``chromium`` package puts the browser; $SPROUT_CHROMIUM overrides it.
DEFAULT_CHROMIUM = "/usr/bin/chromium"
#: The flags known to work headless as root in a container.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)


def chromium_path() -> str | None:
    """The Chromium binary, or None when there is none."""
    path = os.environ.get("SPROUT_CHROMIUM") or DEFAULT_CHROMIUM
    return path if os.access(path, os.X_OK) else shutil.which("chromium")


class ProtocolError(RuntimeError):
    """Chromium answered a command with an error, or stopped answering."""


class Browser:
    """One headless Chromium and one page in it (see :func:`launch`)."""

    def __init__(self, pid: int, to_browser: int, from_browser: int, log: Path) -> None:
        self.pid = pid
        self._out = to_browser
        self._in = from_browser
        self.log = log
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.session: str | None = None

    # ----------------------------------------------------------------- protocol

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProtocolError("Chromium did not answer in time")
            ready, _, _ = select.select([self._in], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise ProtocolError(f"Chromium closed the pipe (see {self.log})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def _note(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            self.errors.append(
                "console.error: "
                + " ".join(str(a.get("value", a.get("description", ""))) for a in args)
            )
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {})
            self.errors.append(f"exception: {exc.get('description') or details.get('text')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(
                f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}"
            )

    def send(
        self, method: str, params: dict[str, Any] | None = None, timeout_s: float = 30.0
    ) -> Any:
        """Send one command (to the page's session once attached); return its result."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session is not None and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data) :]
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ProtocolError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._note(reply)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if a promise)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise ProtocolError(f"evaluating {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    # ----------------------------------------------------------------- page

    def open_page(self, width: int, height: int) -> None:
        """Open a blank page of ``width`` x ``height`` CSS pixels and listen to its logs."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def goto(self, url: str, ready: str, timeout_s: float = 30.0) -> Any:
        """Navigate to ``url`` and poll the expression ``ready`` until it is truthy."""
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise ProtocolError(f"navigating to {url}: {result['errorText']}")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(ready)
            if value:
                return value
            time.sleep(0.1)
        raise ProtocolError(f"{url}: {ready!r} still false after {timeout_s} s")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (beyond the viewport) to ``path``."""
        metrics = self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.send(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": clip},
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        with contextlib.suppress(OSError, ProtocolError):
            self.send("Browser.close", timeout_s=5.0)
        for fd in (self._out, self._in):
            with contextlib.suppress(OSError):
                os.close(fd)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG) != (0, 0):
                return
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)


def _high(fd: int) -> int:
    """``fd`` moved to a number >= 10 (close-on-exec), so that moving it to 3 or 4 in the
    child is never a no-op that would keep close-on-exec set."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


@contextlib.contextmanager
def launch(chromium: str, workdir: Path) -> Iterator[Browser]:
    """Start ``chromium`` headless with a new empty profile under ``workdir``."""
    profile = Path(tempfile.mkdtemp(prefix="profile-", dir=workdir))
    log = workdir / "chromium.log"
    to_read, to_write = map(_high, os.pipe())  # we write, Chromium reads on fd 3
    from_read, from_write = map(_high, os.pipe())  # Chromium writes on fd 4, we read
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    args = [chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"]
    try:
        pid = os.posix_spawn(
            chromium,
            args,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
                (os.POSIX_SPAWN_DUP2, to_read, 3),
                (os.POSIX_SPAWN_DUP2, from_write, 4),
            ],
        )
    finally:
        for fd in (to_read, from_write, log_fd):
            os.close(fd)
    browser = Browser(pid, to_write, from_read, log)
    try:
        browser.send("Browser.getVersion", timeout_s=60.0)
        yield browser
    finally:
        browser.close()
