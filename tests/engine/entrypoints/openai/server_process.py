"""Starting and stopping real `fleetlm serve` processes for the tests."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`fleetlm serve MODEL ARGS...` on a free loopback port; a context manager."""

    def __init__(self, model: Path, *args: str, startup_timeout: float = 180.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable,
            "-m",
            "fleetlm.cli",
            "serve",
            str(model),
            "--port",
            str(self.port),
            "--max-model-len",
            "512",
            "--cpu-kv-cache-gib",
            "0.25",
            "--log-level",
            "warning",
            *args,
        ]
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "ServerProcess":
        self.start()
        self.wait_ready()
        return self

    def start(self) -> None:
        """Start the process without waiting for it (servers started together load in
        parallel); `wait_ready` waits."""
        self.process = subprocess.Popen(
            self.command, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True
        )

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode} before ready")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError("server did not become ready")

    def children(self) -> list[int]:
        """Pids of the server's child processes (the engine process)."""
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()
