"""Kubernetes discovery against kmock's API emulator (`KubernetesEmulator`, served by aiohttp on
a loopback port): the Ready engine pods of a label selector, followed by a LIST and then a
WATCH; and a real `fleetlm router` process routing to a fake engine "pod" it discovered.

The emulator streams `?watch=true` (it replays the current objects as ADDED, then every
change), so these tests exercise the watch path; the LIST-every-second fallback only where a
kmock reaction refuses the watch (405), and re-listing where one answers 410 or an ERROR event.
The emulator ignores labelSelector, resourceVersion and timeoutSeconds, and sends no BOOKMARKs:
the discovery filters labels itself, and resuming a watch from a resourceVersion is untested."""

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

import httpx
import pytest
from aiohttp import web
from kmock import KubernetesEmulator, Server

from fleetlm.router import discovery_k8s
from fleetlm.router.discovery_k8s import KubernetesDiscovery, matches
from tests.engine.entrypoints.openai.server_process import free_port

from .helpers import RouterProcess

NAMESPACE = "fleet"
SELECTOR = "app.kubernetes.io/component=engine"
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
COMPLETION = {
    "id": "cmpl-from-the-pod",
    "object": "text_completion",
    "created": 0,
    "model": "fake",
    "choices": [{"index": 0, "text": " from the pod", "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
}


def pod(
    name: str,
    ip: str,
    ready: bool = True,
    namespace: str = NAMESPACE,
    component: str = "engine",
    finalizers: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        # the emulator routes watch events by metadata.namespace: it must be set
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/component": component},
            "finalizers": finalizers or [],
        },
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


def readiness(ready: bool) -> dict[str, Any]:
    """A status patch (the emulator merges dicts and replaces lists, as a merge patch does)."""
    return {"status": {"conditions": [{"type": "Ready", "status": str(ready)}]}}


def num_watchers(emulator: KubernetesEmulator) -> int:
    """Watches subscribed to the emulator's events. A watch replays the current pods, then
    subscribes: a change in between is lost to it, so tests wait for this before changing
    anything (kmock has no public view of it, hence the private attribute)."""
    return sum(bus.consumer_count for bus in emulator._buses.values())


async def until(discovery: KubernetesDiscovery, expected: list[str], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while (found := await discovery.replicas()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"discovered {found}, expected {expected}")
        await asyncio.sleep(0.02)


async def until_watching(emulator: KubernetesEmulator, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not num_watchers(emulator):
        assert time.monotonic() < deadline, "the discovery never watched"
        await asyncio.sleep(0.01)


def start(url: str, port: int = 8000) -> tuple[KubernetesDiscovery, asyncio.Task]:
    discovery = KubernetesDiscovery(url, NAMESPACE, SELECTOR, port)
    return discovery, asyncio.create_task(discovery.run())


async def stop(discovery: KubernetesDiscovery, task: asyncio.Task) -> None:
    """Before the emulator goes: its watch streams never end by themselves, and the server
    would wait for them at shutdown."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await discovery.aclose()


@contextlib.asynccontextmanager
async def discovering(url: str):
    discovery, task = start(url)
    try:
        yield discovery
    finally:
        await stop(discovery, task)


def test_label_selectors():
    labels = {"app": "engine", "tier": "gpu"}
    assert matches(labels, "app=engine, tier==gpu")
    assert not matches(labels, "app=engine,tier!=gpu")
    assert matches(labels, "app,!zone") and not matches(labels, "zone")
    assert matches(labels, "tier in (gpu, cpu)")  # set-based: the server's business


@pytest.mark.asyncio
async def test_discovery_follows_the_ready_engine_pods(kmock):
    a, b, c, v6 = (f"http://{ip}:8000" for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "[fd00::6]"])
    for initial in [
        pod("engine-a", "10.0.0.1"),
        pod("engine-v6", "fd00::6"),
        pod("starting", "10.0.0.3", ready=False),
        pod("web", "10.0.0.8", component="web"),
        pod("elsewhere", "10.0.0.9", namespace="other"),
    ]:
        namespace = initial["metadata"]["namespace"]
        created = await kmock.post(f"/api/v1/namespaces/{namespace}/pods", json=initial)
        assert created.status == 200
    async with discovering(str(kmock.url)) as discovery:
        await until(discovery, [a, v6])  # from the LIST
        await until_watching(kmock)

        # ignored pods (the order of events on the watch shows they were seen): other labels,
        # another namespace
        await kmock.post(PODS, json=pod("web-2", "10.0.0.10", component="web"))
        await kmock.post(
            "/api/v1/namespaces/other/pods", json=pod("x", "10.0.0.11", namespace="other")
        )
        await kmock.patch(f"{PODS}/starting/status", json=readiness(True))  # now Ready
        await until(discovery, [a, c, v6])

        await kmock.post(PODS, json=pod("engine-b", "10.0.0.2", finalizers=["example.com/hold"]))
        await until(discovery, [a, b, c, v6])
        await kmock.patch(f"{PODS}/engine-a/status", json=readiness(False))
        await until(discovery, [b, c, v6])
        await kmock.patch(f"{PODS}/engine-a/status", json=readiness(True))
        await until(discovery, [a, b, c, v6])

        # a finalizer holds engine-b: deleting it only marks it terminating
        assert (await kmock.delete(f"{PODS}/engine-b")).status == 200
        await until(discovery, [a, c, v6])
        terminating = await (await kmock.get(f"{PODS}/engine-b")).json()
        assert terminating["metadata"]["deletionTimestamp"]
        assert terminating["status"]["conditions"][0]["status"] == "True"

        await kmock.delete(f"{PODS}/engine-v6")  # gone
        await until(discovery, [a, c])
        await kmock.patch(
            f"{PODS}/starting",
            json={"metadata": {"labels": {"app.kubernetes.io/component": "web"}}},
        )
        await until(discovery, [a])  # relabelled out of the selector

        # every change came through the one watch
        assert len(kmock[kmock.action.LIST]) == 1
        assert len(kmock[kmock.action.WATCH]) == 1


@pytest.mark.asyncio
async def test_discovery_lists_again_when_its_watch_expires(kmock):
    kmock[kmock.action.WATCH][:1] << 410  # the 1st watch: 410 Gone
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    kmock[kmock.action.WATCH][1:2] << (gone,)  # the 2nd: an ERROR event on the stream
    await kmock.post(PODS, json=pod("engine-a", "10.0.0.1"))
    async with discovering(str(kmock.url)) as discovery:
        await until(discovery, ["http://10.0.0.1:8000"])
        await until_watching(kmock)  # the 3rd watch: the emulator's own
        assert len(kmock[kmock.action.LIST]) == 3
        await kmock.post(PODS, json=pod("engine-b", "10.0.0.2"))
        await until(discovery, ["http://10.0.0.1:8000", "http://10.0.0.2:8000"])


@pytest.mark.asyncio
async def test_discovery_waits_for_the_api_server(caplog, monkeypatch):
    monkeypatch.setattr(discovery_k8s, "RETRY_S", 0.1)
    port = free_port()
    discovery, task = start(f"http://127.0.0.1:{port}")
    try:
        with caplog.at_level(logging.INFO, discovery_k8s.__name__):
            await asyncio.sleep(0.5)  # a few attempts
            failures = [r for r in caplog.records if "failed" in r.getMessage()]
            assert len(failures) == 1 and "ConnectError" in failures[0].getMessage()  # once
            assert await discovery.replicas() == []
            async with KubernetesEmulator() as emulator, Server(emulator, port=port):
                await emulator.post(PODS, json=pod("engine-a", "10.0.0.1"))
                await until(discovery, ["http://10.0.0.1:8000"])
                deadline = time.monotonic() + 5
                while discovery.failing:  # until its watch is open
                    assert time.monotonic() < deadline, "the discovery never watched"
                    await asyncio.sleep(0.01)
                await stop(discovery, task)
            assert any("watching again" in r.getMessage() for r in caplog.records)
    finally:
        await stop(discovery, task)


@pytest.mark.asyncio
async def test_without_watch_it_lists_every_second(kmock, caplog, monkeypatch):
    monkeypatch.setattr(discovery_k8s, "RETRY_S", 0.05)
    kmock[kmock.action.WATCH] << 405  # a server that cannot watch
    await kmock.post(PODS, json=pod("engine-a", "10.0.0.1"))
    with caplog.at_level(logging.INFO, discovery_k8s.__name__):
        async with discovering(str(kmock.url)) as discovery:
            await until(discovery, ["http://10.0.0.1:8000"])
            await kmock.patch(f"{PODS}/engine-a/status", json=readiness(False))
            await until(discovery, [])
            assert len(kmock[kmock.action.LIST]) >= 2
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1


class Background:
    """An event loop in a thread, serving kmock's emulator and a fake engine on loopback ports
    while the test drives a router process synchronously."""

    def __enter__(self) -> "Background":
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *exc) -> None:
        self.call(self.stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _start(self) -> None:
        self.stack = contextlib.AsyncExitStack()
        self.emulator = await self.stack.enter_async_context(KubernetesEmulator())
        server = await self.stack.enter_async_context(Server(self.emulator))
        self.api_url = str(server.url).rstrip("/")
        runner = web.AppRunner(fake_engine())
        await runner.setup()
        self.stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.engine_port = runner.addresses[0][1]

    def requests(self, action) -> int:
        async def count() -> int:
            return len(self.emulator[action])

        return self.call(count())

    def watching(self) -> bool:
        async def watching() -> bool:
            return num_watchers(self.emulator) > 0

        return self.call(watching())


def fake_engine() -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.Response(text="")

    async def completions(request: web.Request) -> web.Response:
        return web.json_response(COMPLETION)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", health)
    app.router.add_post("/v1/completions", completions)
    return app


def test_a_router_process_routes_to_the_engine_pods_it_discovers():
    with Background() as bg:
        engine = f"http://127.0.0.1:{bg.engine_port}"
        httpx.post(f"{bg.api_url}{PODS}", json=pod("engine-0", "127.0.0.1")).raise_for_status()
        args = ["--discover", "kubernetes", "--kubernetes-api-url", bg.api_url]
        args += ["--kubernetes-namespace", NAMESPACE, "--kubernetes-port", str(bg.engine_port)]
        with RouterProcess([], *args) as router:
            router.wait_for(lambda replicas: list(replicas) == [engine])
            answer = httpx.post(
                f"{router.url}/v1/completions", json={"model": "fake", "prompt": "hi"}, timeout=10
            )
            assert answer.status_code == 200 and answer.json() == COMPLETION

            deadline = time.monotonic() + 10
            while not bg.watching():
                assert time.monotonic() < deadline, "the router never watched"
                time.sleep(0.02)
            patch = httpx.patch(f"{bg.api_url}{PODS}/engine-0/status", json=readiness(False))
            patch.raise_for_status()
            router.wait_for(lambda replicas: replicas == {})
            answer = httpx.post(
                f"{router.url}/v1/completions", json={"model": "fake", "prompt": "hi"}, timeout=10
            )
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "no_replica"
            assert bg.requests(bg.emulator.action.LIST) == 1  # the change came by the watch
