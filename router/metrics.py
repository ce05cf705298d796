"""The router's Prometheus metrics, in a registry of its own (one per app)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fleetlm_router_requests", "Requests answered", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(
            "fleetlm_router_errors",
            "Upstream failures: connect, status (5xx) or midstream (after the first byte)",
            ["replica", "kind"],
            registry=r,
        )
        self.retries = Counter("fleetlm_router_retries", "Requests sent again", registry=r)
        self.decisions = Counter(
            "fleetlm_router_routing_decisions", "Replica choices", ["reason"], registry=r
        )
        self.latency = Histogram(
            "fleetlm_router_upstream_latency_seconds",
            "Time to the replica's response headers",
            ["replica"],
            registry=r,
        )
        self.predicted_hit_tokens = Counter(
            "fleetlm_router_predicted_prefix_hit_tokens",
            "Prompt tokens the router expected the chosen replica to have cached",
            registry=r,
        )
        self.routed_prompt_tokens = Counter(
            "fleetlm_router_routed_prompt_tokens",
            "Prompt tokens (full blocks) of hashed requests",
            registry=r,
        )
        self.replica_healthy = Gauge(
            "fleetlm_router_replica_healthy", "1 if in rotation", ["replica"], registry=r
        )
        self.replica_in_flight = Gauge(
            "fleetlm_router_replica_in_flight", "Requests open", ["replica"], registry=r
        )
        self.replica_prefix_hits = Gauge(
            "fleetlm_router_replica_prefix_cache_hits",
            "The replica's own prefix-cache hits (tokens), from its /metrics",
            ["replica"],
            registry=r,
        )
        self.replica_prefix_queries = Gauge(
            "fleetlm_router_replica_prefix_cache_queries",
            "The replica's own prefix-cache queries (tokens), from its /metrics",
            ["replica"],
            registry=r,
        )

        self.redis_failures = Gauge(
            "fleetlm_router_redis_failures",
            "Redis calls that failed (the router then routes from its local view)",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
