"""For the router's end-to-end tests: a real `fleetlm router` process, and small probes of
the replicas."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai

from tests.engine.entrypoints.openai.server_process import ServerProcess, free_port


class RouterProcess:
    """`fleetlm router --replicas ... ARGS...` on a free loopback port; a context manager."""

    def __init__(self, replicas: list[str], *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable,
            "-m",
            "fleetlm.cli",
            "router",
            "--replicas",
            ",".join(replicas),
            "--port",
            str(self.port),
            "--health-check-interval",
            "0.2",
            "--log-level",
            "warning",
            *args,
        ]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "RouterProcess":
        self.process = subprocess.Popen(
            self.command, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"router exited with {self.process.returncode}")
            try:
                httpx.get(f"{self.url}/metrics", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("router did not start")

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def replicas(self) -> dict[str, dict]:
        answer = httpx.get(f"{self.url}/admin/replicas", timeout=5).json()
        return {r["url"]: r for r in answer["replicas"]}

    def wait_for(self, predicate, timeout: float = 20.0) -> None:
        """Until predicate(self.replicas()) holds."""
        deadline = time.monotonic() + timeout
        while not predicate(self.replicas()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"router state never matched: {self.replicas()}")
            time.sleep(0.1)


def client_for(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def prefix_hits(url: str) -> float:
    """The replica's own prefix-cache hits (tokens), from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("vllm:prefix_cache_hits")
    )


def wait_for_a_fresh_minute() -> None:
    """Rate windows are wall-clock minutes: start well inside one, so the test's requests
    share a window."""
    while time.time() % 60 > 50:
        time.sleep(0.5)


@contextmanager
def running(servers: list[ServerProcess]) -> Iterator[list[ServerProcess]]:
    """The servers started together (they load in parallel), stopped at the end."""
    for server in servers:
        server.start()
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()
