"""Per-client rate limiting for the public pages: a token bucket per client IP, in memory.

A client may make ``burst`` requests at once and ``rate`` per second after that; a request over
the limit is told how long to wait (``Retry-After``). The buckets live in this process only (a
hub with several workers behind a proxy limits per worker, which the proxy can tighten). Buckets
of clients that have been quiet long enough to be full again are dropped, so memory stays
bounded however many addresses call.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from ipaddress import ip_address, ip_network

__all__ = ["RateLimiter", "client_ip"]


class RateLimiter:
    """Token buckets keyed by client; ``take(client)`` is 0 when allowed, else seconds to wait."""

    def __init__(self, rate: float, burst: int, *, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.max_clients, self.clock = rate, burst, max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client → (tokens, at)

    def take(self, client: str) -> float:
        now = self.clock()
        tokens, at = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1:
            self._buckets[client] = (tokens - 1, now)
            wait = 0.0
        else:
            self._buckets[client] = (tokens, now)
            wait = (1 - tokens) / self.rate
        self._forget(now)
        return wait

    def retry_after(self, wait: float) -> str:
        """``Retry-After`` in whole seconds (at least 1)."""
        return str(max(1, math.ceil(wait)))

    def _forget(self, now: float) -> None:
        # Least recently seen first: a bucket full again by now is the same as no bucket.
        full = self.burst / self.rate
        while self._buckets:
            client, (_, at) = next(iter(self._buckets.items()))
            if now - at < full and len(self._buckets) <= self.max_clients:
                break
            self._buckets.popitem(last=False)


def client_ip(peer: str | None, forwarded_for: str | None, trusted_proxies: Sequence[str]) -> str:
    """The client's address: the peer, or — when the peer is a trusted proxy — the last address in
    ``X-Forwarded-For`` that is not itself a trusted proxy (the ones before it are the client's say)."""
    peer = peer or "unknown"
    if not trusted_proxies or not forwarded_for:
        return peer
    networks = [ip_network(p, strict=False) for p in trusted_proxies]

    def trusted(address: str) -> bool:
        try:
            return any(ip_address(address) in n for n in networks)
        except ValueError:
            return False

    if not trusted(peer):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not trusted(hop):
            return hop
    return peer
