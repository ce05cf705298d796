"""Forwarding one OpenAI request to a replica: choose, send, retry before the first byte."""

import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from fleetlm.router.errors import error_response, sse_error_event
from fleetlm.router.metrics import RouterMetrics
from fleetlm.router.prefix_sources import CachedPrefixes, SentPrefixes
from fleetlm.router.prompts import PromptHasher
from fleetlm.router.rate_limit import RateLimiter, limit_key
from fleetlm.router.replicas import Replica, ReplicaPool
from fleetlm.router.routing import Decision, RouteRequest, choose
from fleetlm.router.settings import RouterSettings
from fleetlm.router.store import RouterStore
from fleetlm.router.usage import UsageMeter

logger = logging.getLogger(__name__)

# Request headers passed on to the replica (hop-by-hop and host headers are not).
FORWARDED_HEADERS = ("authorization", "content-type", "accept", "x-request-id", "user-agent")


class UpstreamFailed(Exception):
    """Nothing reached the client yet: the request may go to another replica."""


class Proxy:
    def __init__(
        self,
        settings: RouterSettings,
        client: httpx.AsyncClient,
        pool: ReplicaPool,
        store: RouterStore,
        prefixes: CachedPrefixes | SentPrefixes,
        hasher: PromptHasher,
        limiter: RateLimiter,
        metrics: RouterMetrics,
    ) -> None:
        self.settings = settings
        self.client = client
        self.pool = pool
        self.store = store
        self.prefixes = prefixes
        self.hasher = hasher
        self.limiter = limiter
        self.metrics = metrics
        self.counter = itertools.count()

    async def forward(self, request: Request, endpoint: str) -> Response:
        key = limit_key(request.headers.get("authorization"))
        refusal = await self._rate_limited(key, endpoint)
        if refusal is not None:
            return refusal
        body = await request.body()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
        headers["x-request-id"] = request_id
        route = self._route_request(request, endpoint, body)
        charge = None
        if self.limiter.tokens_per_minute is not None:
            charge = _Charge(key, len(route.block_hashes) * self.settings.block_size)
        tried: set[str] = set()
        for attempt in range(self.settings.max_attempts):
            decision = await self._choose(route, tried)
            if decision is None:
                break
            tried.add(decision.replica.url)
            if attempt:
                self.metrics.retries.inc()
            try:
                response = await self._send(decision.replica, endpoint, body, headers, charge)
            except UpstreamFailed as e:
                logger.warning("request %s failed on %s: %s", request_id, decision.replica.url, e)
                continue
            await self._record(decision, route, response.status_code)
            response.headers["x-request-id"] = request_id
            self.metrics.requests.labels(endpoint, str(response.status_code)).inc()
            return response
        self.metrics.requests.labels(endpoint, "503").inc()
        return error_response(503, "no engine replica is available", code="no_replica")

    async def _rate_limited(self, key: str, endpoint: str) -> Response | None:
        retry_after = await self.limiter.admit(key) if self.limiter.enabled else None
        if retry_after is None:
            return None
        self.metrics.requests.labels(endpoint, "429").inc()
        return error_response(
            429,
            "rate limit exceeded for this API key",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(retry_after)},
        )

    async def _choose(self, route: RouteRequest, tried: set[str]) -> Decision | None:
        """The replica for the next attempt, among those in rotation not tried yet."""
        candidates = [r for r in self.pool.available() if r.url not in tried]
        if not candidates:
            return None
        in_flight = await self.store.in_flight()  # every router's requests
        for replica in candidates:
            replica.in_flight = in_flight.get(replica.url, 0)
        matches = await self.prefixes.match(route.block_hashes)
        return choose(self.settings, candidates, route, matches, next(self.counter))

    async def _record(self, decision: Decision, route: RouteRequest, status: int) -> None:
        self.metrics.decisions.labels(decision.reason).inc()
        if not route.block_hashes or status >= 400:
            return
        await self.prefixes.record(decision.replica.url, route.block_hashes)
        block_size = self.settings.block_size
        self.metrics.routed_prompt_tokens.inc(len(route.block_hashes) * block_size)
        self.metrics.predicted_hit_tokens.inc(decision.matched_blocks * block_size)

    def _route_request(self, request: Request, endpoint: str, body: bytes) -> RouteRequest:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return RouteRequest([], None)
        session = request.headers.get(self.settings.session_header) or parsed.get("user")
        return RouteRequest(
            self.hasher.block_hashes(endpoint, parsed),
            session if isinstance(session, str) else None,
        )

    async def _send(
        self,
        replica: Replica,
        endpoint: str,
        body: bytes,
        headers: dict[str, str],
        charge: "_Charge | None",
    ) -> Response:
        """The replica's answer; raises UpstreamFailed while nothing was sent to the client."""
        started = time.monotonic()
        await self.store.add_in_flight(replica.url, 1)
        upstream = None
        try:
            upstream = await self.client.send(
                self.client.build_request(
                    "POST", replica.url + endpoint, content=body, headers=headers
                ),
                stream=True,
            )
            self.metrics.latency.labels(replica.url).observe(time.monotonic() - started)
            if upstream.status_code >= 500:
                raise UpstreamFailed(f"status {upstream.status_code}")
            chunks = upstream.aiter_raw()
            first = await anext(chunks, b"")
        except (httpx.HTTPError, UpstreamFailed) as e:
            await self.store.add_in_flight(replica.url, -1)
            if upstream is not None:
                await upstream.aclose()
            kind = "status" if isinstance(e, UpstreamFailed) else "connect"
            self.metrics.errors.labels(replica.url, kind).inc()
            self.pool.record_error(replica)
            raise UpstreamFailed(str(e) or type(e).__name__) from e
        self.pool.record_success(replica)
        response_headers = {"content-type": upstream.headers.get("content-type", "")}
        meter = None
        if charge is not None:
            streaming = response_headers["content-type"].startswith("text/event-stream")
            meter = UsageMeter(streaming, charge.prompt_tokens_estimate)
        return StreamingResponse(
            self._relay(replica, upstream, first, chunks, meter, charge),
            status_code=upstream.status_code,
            headers=response_headers,
        )

    async def _relay(
        self,
        replica: Replica,
        upstream: httpx.Response,
        first: bytes,
        chunks: AsyncIterator[bytes],
        meter: UsageMeter | None,
        charge: "_Charge | None",
    ) -> AsyncIterator[bytes]:
        """The replica's bytes as they arrive; an explicit error event if it fails midway."""
        try:
            if first:
                if meter is not None:
                    meter.feed(first)
                yield first
            async for chunk in chunks:
                if meter is not None:
                    meter.feed(chunk)
                yield chunk
        except httpx.HTTPError as e:
            logger.warning("replica %s failed mid-response: %s", replica.url, e)
            self.metrics.errors.labels(replica.url, "midstream").inc()
            self.pool.record_error(replica)
            if upstream.headers.get("content-type", "").startswith("text/event-stream"):
                yield sse_error_event(f"the engine replica failed mid-stream: {e}")
        finally:
            await self.store.add_in_flight(replica.url, -1)
            await upstream.aclose()
            if meter is not None and charge is not None:
                await self.limiter.charge(charge.key, meter.total_tokens())


@dataclass(frozen=True)
class _Charge:
    """Whose token budget a response is charged to, and its prompt's size if it reports none."""

    key: str
    prompt_tokens_estimate: int
