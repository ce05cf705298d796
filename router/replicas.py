"""The engine replicas the router knows, and what it knows of each: health and load."""

from dataclasses import dataclass


@dataclass
class Replica:
    url: str
    healthy: bool = True  # a new replica gets traffic until a check or a request fails
    in_flight: int = 0  # requests open on it, over every router (from the store)
    failed_checks: int = 0
    consecutive_errors: int = 0
    # read from the replica's /metrics at each health check
    num_running: float = 0.0
    num_waiting: float = 0.0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: float = 0.0
    prefix_cache_hits: float = 0.0

    @property
    def load(self) -> float:
        """Requests the replica is busy with: ours in flight, and its own waiting queue."""
        return self.in_flight + self.num_waiting


class ReplicaPool:
    """Replicas by URL, ejected after `unhealthy_after` failures in a row (health checks or
    requests) and readmitted at the first passing health check."""

    def __init__(self, urls: list[str], unhealthy_after: int) -> None:
        self.unhealthy_after = unhealthy_after
        self.replicas: dict[str, Replica] = {url: Replica(url) for url in urls}

    def sync(self, urls: list[str]) -> None:
        """Discovery's answer: add the new replicas (in rotation at once: they registered as
        ready), forget the ones gone."""
        for url in urls:
            self.replicas.setdefault(url, Replica(url))
        for url in set(self.replicas) - set(urls):
            del self.replicas[url]

    def available(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.healthy]

    def record_success(self, replica: Replica) -> None:
        replica.consecutive_errors = 0

    def record_error(self, replica: Replica) -> None:
        replica.consecutive_errors += 1
        if replica.consecutive_errors >= self.unhealthy_after:
            replica.healthy = False

    def record_check(self, replica: Replica, ok: bool, metrics: dict[str, float]) -> None:
        if ok:
            replica.failed_checks = 0
            replica.consecutive_errors = 0
            replica.healthy = True
            for name, value in metrics.items():
                setattr(replica, name, value)
            return
        replica.failed_checks += 1
        if replica.failed_checks >= self.unhealthy_after:
            replica.healthy = False
