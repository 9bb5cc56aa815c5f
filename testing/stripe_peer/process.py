"""Start and stop the peer process (`python -m testing.stripe_peer`) from a test run or a script."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_PREFIX = "STRIPE_PEER_READY "


class PeerProcess:
    """The peer as a child process on 127.0.0.1 (a free port unless `port` is given).

    `start()` returns once the peer printed its ready line (or raises with its log);
    `stop()` terminates it. Also a context manager. The peer exits by itself when this process
    does (it watches its parent pid)."""

    def __init__(
        self,
        *,
        webhook_secret: str | None = None,
        webhook_url: str | None = None,
        port: int = 0,
        startup_timeout: float = 20.0,
    ) -> None:
        self.webhook_secret = webhook_secret
        self.webhook_url = webhook_url
        self.port = port
        self.startup_timeout = startup_timeout
        self.url = ""
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> PeerProcess:
        fd, log_name = tempfile.mkstemp(prefix="stripe-peer-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)
        args = [
            sys.executable,
            "-m",
            "testing.stripe_peer",
            "--port",
            str(self.port),
            "--parent-pid",
            str(os.getpid()),
        ]
        if self.webhook_secret:
            args += ["--webhook-secret", self.webhook_secret]
        if self.webhook_url:
            args += ["--webhook-url", self.webhook_url]
        with self.log_path.open("w") as log_file:
            self._proc = subprocess.Popen(
                args,
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"the Stripe peer did not start:\n{self.log_tail()}")
            ready, _, _ = select.select([self._proc.stdout], [], [], remaining)
            if not ready:
                continue
            line = self._proc.stdout.readline()
            if line.startswith(READY_PREFIX):
                self.url = line[len(READY_PREFIX) :].strip()
                return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> PeerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
