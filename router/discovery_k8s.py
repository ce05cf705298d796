"""Engine replicas discovered in Kubernetes: the Ready pods of a label selector in one namespace,
read from the API server over plain REST (httpx; no Kubernetes client package).

NOTE: why watch (+ re-list). Polling LIST every health round would cost the API server one
request per router per second, and still see a pod turn not-Ready up to a round late. A LIST
followed by a WATCH from the list's resourceVersion sees every change as it happens at the cost
of one idle stream. A watch can lose events, though: its resourceVersion may be compacted away
(410 Gone, or an ERROR event) and connections drop. Each time, a fresh LIST replaces the whole
cache, so nothing missed lingers; a watch that just ends (timeoutSeconds) resumes from the last
resourceVersion seen (events and BOOKMARKs). A server that cannot watch at all fails each watch,
and the discovery degrades to a LIST every second.
"""

import asyncio
import json
import logging
import os
import ssl
from pathlib import Path
from typing import Any

import httpx

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
RETRY_S = 1.0


def pod_url(pod: dict[str, Any], port: int) -> str | None:
    """The pod's engine URL if it takes traffic: Ready, not terminating, with an IP."""
    status = pod.get("status") or {}
    ip = status.get("podIP")
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    if not ip or not ready or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    return f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"


def matches(labels: dict[str, str], selector: str) -> bool:
    """Equality-based selector terms (k=v, k==v, k!=v, k, !k), checked here too: a server
    that ignores labelSelector (or a pod relabelled under a watch) must not slip through.
    Set-based selectors (`k in (a,b)`) are left to the server."""
    if "(" in selector:
        return True
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            ok = labels.get(key) != value
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            ok = labels.get(key) == value
        else:
            ok = (term[1:].strip() not in labels) if term.startswith("!") else term in labels
        if not ok:
            return False
    return True


class KubernetesDiscovery:
    """`run()` keeps a cache of the selected pods current; `replicas()` reads it."""

    def __init__(
        self,
        api_url: str,
        namespace: str,
        label_selector: str,
        port: int,
        token: str | None = None,
        verify: str | bool = True,  # a CA file, or whether to check the server's certificate
        client: httpx.AsyncClient | None = None,
        token_file: Path | None = None,  # re-read at each request (projected tokens rotate)
        watch_timeout_s: int = 300,
    ) -> None:
        self.pods_url = f"{api_url.rstrip('/')}/api/v1/namespaces/{namespace}/pods"
        self.label_selector, self.port = label_selector, port
        self.token, self.token_file, self.watch_timeout_s = token, token_file, watch_timeout_s
        self.owns_client = client is None
        if client is None:
            tls = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
            client = httpx.AsyncClient(verify=tls, timeout=httpx.Timeout(10.0, read=None))
        self.client = client
        self.pods: dict[str, dict[str, Any]] = {}  # by name: the selected pods, ready or not
        self.failing = False

    @classmethod
    def in_cluster(
        cls, namespace: str | None, label_selector: str, port: int
    ) -> "KubernetesDiscovery":
        """From inside a pod: the API server's service and this pod's service account."""
        host, api_port = (
            os.environ.get("KUBERNETES_SERVICE_HOST"),
            os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
        )
        if not host:
            raise RuntimeError("not in a Kubernetes pod: give the API server's URL")
        host = f"[{host}]" if ":" in host else host
        if namespace is None:
            namespace = (SERVICE_ACCOUNT / "namespace").read_text().strip()
        return cls(
            f"https://{host}:{api_port}",
            namespace,
            label_selector,
            port,
            verify=str(SERVICE_ACCOUNT / "ca.crt"),
            token_file=SERVICE_ACCOUNT / "token",
        )

    async def replicas(self) -> list[str]:
        """The ready engines' URLs, sorted (from the cache: no API call)."""
        return sorted({url for pod in self.pods.values() if (url := pod_url(pod, self.port))})

    async def run(self) -> None:
        """Forever (cancelled by the app's lifespan): LIST, then WATCH while the watch lasts.
        On a failure the cache stays as it was (health checks eject dead replicas meanwhile)."""
        while True:
            try:
                version: str | None = await self._list()
                while version is not None:  # None: the watch expired, LIST again
                    version = await self._watch(version)
            except Exception as e:  # connection, HTTP status, a bad answer: start over
                if not self.failing:  # logged once, until a watch works again
                    logger.warning("Kubernetes discovery failed (retrying): %r", e)
                self.failing = True
                await asyncio.sleep(RETRY_S)

    async def aclose(self) -> None:
        if self.owns_client:
            await self.client.aclose()

    def _headers(self) -> dict[str, str]:
        token = self.token_file.read_text().strip() if self.token_file else self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _selected(self, pod: dict[str, Any]) -> bool:
        return matches((pod.get("metadata") or {}).get("labels") or {}, self.label_selector)

    async def _list(self) -> str:
        answer = await self.client.get(
            self.pods_url, params={"labelSelector": self.label_selector}, headers=self._headers()
        )
        answer.raise_for_status()
        body = answer.json()
        self.pods = {p["metadata"]["name"]: p for p in body.get("items") or [] if self._selected(p)}
        return (body.get("metadata") or {}).get("resourceVersion", "")

    async def _watch(self, version: str) -> str | None:
        """Apply events until the stream ends: the last resourceVersion seen, or None when it
        expired. A server ignoring timeoutSeconds is cut off a little later (TimeoutError)."""
        params = {
            "labelSelector": self.label_selector,
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_timeout_s),
        }
        async with (
            asyncio.timeout(self.watch_timeout_s + 30),
            self.client.stream("GET", self.pods_url, params=params, headers=self._headers()) as s,
        ):
            if s.status_code == 410:
                return None
            s.raise_for_status()
            if self.failing:
                logger.info("Kubernetes discovery: watching again")
                self.failing = False
            async for line in s.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, pod = event.get("type"), event.get("object") or {}
                if kind == "ERROR":  # e.g. 410 "too old resource version"
                    logger.info("Kubernetes watch ended: %s", pod.get("message"))
                    return None
                meta = pod.get("metadata") or {}
                version = meta.get("resourceVersion") or version
                if kind == "BOOKMARK":
                    continue
                if kind not in ("ADDED", "MODIFIED", "DELETED"):  # no watch: LIST each second
                    raise ValueError(f"not a watch event: {line[:200]}")
                if kind == "DELETED" or not self._selected(pod):
                    self.pods.pop(meta.get("name"), None)
                else:
                    self.pods[meta["name"]] = pod
        return version
