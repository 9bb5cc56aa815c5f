"""The service as a real process (`torouter-billing serve`) for tests and `make verify`: started
with a `Settings` turned into `BILLING_*` variables, ready once `/healthz` answers, stopped with
SIGTERM (graceful) or SIGKILL (a crash)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from app.config import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "torouter-billing"


def settings_env(settings: Settings, **extra: Any) -> dict[str, str]:
    """The `BILLING_*` environment that makes a process load these settings (plus `extra`)."""
    env: dict[str, str] = {}
    values = {**settings.model_dump(), **extra}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list | dict):
            text = json.dumps(value, default=str)
        else:
            text = str(value)
        env[f"BILLING_{name.upper()}"] = text
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class ServiceProcess:
    """One `torouter-billing serve --no-migrate` on 127.0.0.1 (the database must be migrated)."""

    def __init__(self, env: dict[str, str], *, port: int | None = None, name: str = "billing"):
        self.env = env
        self.port = port or free_port()
        self.name = name
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        fd, log_name = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)

    def start(self, timeout: float = 120.0) -> ServiceProcess:
        """Spawn the process and wait until it answers (imports alone take seconds on a busy
        machine)."""
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")} | self.env
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(CLI),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--no-migrate",
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self, timeout: float = 120.0) -> ServiceProcess:
        """Return once `/healthz` answers; RuntimeError when the process exits or times out."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}")
            time.sleep(0.1)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM: the graceful shutdown."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.running:
            self.terminate()
            try:
                self.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def cleanup(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            self.log_path.unlink()
