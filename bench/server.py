"""The processes under measurement: uvicorn started as production starts it, on a free loopback
port, its output in a log file, and the peak RSS of its process tree sampled from /proc."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent


class StartFailed(RuntimeError):
    """The server exited or never answered its readiness probe; carries its log's tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (uvicorn's workers, and anything they start)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces; ppid follows it.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class RssSampler:
    """Polls the VmRSS of a process tree every `interval` seconds in a thread; keeps the peak of
    the sum and the peak of any single worker (a child of the master, or the master alone)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_total_kib = 0
        self.peak_worker_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        workers = [rss_kib(p) for p in descendants(self.pid)]
        master = rss_kib(self.pid)
        self.peak_total_kib = max(self.peak_total_kib, master + sum(workers))
        self.peak_worker_kib = max(self.peak_worker_kib, max(workers, default=master))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def production_command(dockerfile: Path = ROOT / "Dockerfile") -> list[str]:
    """The image's `CMD [...]` (`torouter-billing serve …`) without host, port and workers, as
    `python -m app.cli …` so it runs this checkout's code: the bench starts the service exactly
    as production does, and follows the Dockerfile when it changes."""
    text = dockerfile.read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.startswith("CMD ["))
    command: list[str] = json.loads(line.removeprefix("CMD "))
    if command[:2] != ["torouter-billing", "serve"]:
        raise ValueError(f"the Dockerfile's CMD is not `torouter-billing serve`: {command}")
    args: list[str] = []
    words = iter(command[2:])
    for word in words:
        if word in ("--host", "--port", "--workers"):
            next(words, None)
        elif not word.startswith(("--host=", "--port=", "--workers=")):
            args.append(word)
    return [sys.executable, "-m", "app.cli", "serve", *args]


def yardstick_command(factory: str) -> list[str]:
    """The yardstick on the same uvicorn, with what `serve` sets that bears on speed: no
    access log, the same keep-alive timeout."""
    from app.config import Settings

    keep_alive = Settings.model_fields["keep_alive_seconds"].default
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--no-access-log",
        "--timeout-keep-alive",
        str(keep_alive),
    ]


class Uvicorn:
    """A server process on 127.0.0.1: `command` plus `--host`, `--port` and `--workers`."""

    def __init__(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        workers: int = 1,
        cwd: Path = ROOT,
    ) -> None:
        """`cwd`: the checkout whose code `python -m …` runs (another one's for
        bench/versions_ab.py)."""
        self.name = name
        self.cwd = cwd
        self.command = command
        self.env = env
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        fd, log_name = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Uvicorn:
        command = [
            *self.command,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=self.cwd,
                env=os.environ | self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    self.proc = None
                    raise StartFailed(f"{self.name} exited at start-up:\n{self.log_tail()}")
                if self._ready():
                    return self
                time.sleep(0.2)
            raise StartFailed(f"{self.name} was not ready after {timeout:g} s:\n{self.log_tail()}")
        except BaseException:
            self.stop()  # never leave a server behind, even on Ctrl-C
            raise

    def _ready(self) -> bool:
        # With several workers, every one must have started before the load begins: probe a
        # few times in a row.
        try:
            for _ in range(self.workers * 4):
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status != 200:
                        return False
        except (OSError, urllib.error.URLError):
            return False
        return self.workers == 1 or len(descendants(self.pid)) >= self.workers

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def close(self) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> Uvicorn:
        return self if self.proc is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
