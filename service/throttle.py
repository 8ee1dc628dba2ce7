"""A throttle on credentials: failed sign-ins (``POST /ui/login``) and wrong bearer tokens
are counted per client address and overall, and past a small budget every credential from
that client (or, past the overall budget, from anyone) is answered 429 with
``Retry-After`` instead of being checked.

Without it a client guesses about 900 tokens a second on loopback; with the default budget
(``S2AP_AUTH_FAILURES`` = 10 per client and ``S2AP_AUTH_FAILURES_TOTAL`` = 100 overall per
``S2AP_AUTH_WINDOW_S`` = 60 s) it gets 10 guesses a minute from one address. While a
client is throttled even the right token is answered 429: checking it would tell the
guesser when it guessed right. The window slides: a throttled client may try again once
its oldest counted failure is older than the window. A browser already signed in keeps its
session (the cookie is not a credential this counts). Behind a proxy every client has the
proxy's address, so the per-client budget then acts as a second overall one.

Each throttle episode is logged once, when it begins, not once per refused attempt.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from starlette.requests import Request

log = logging.getLogger(__name__)

EVERYONE = "*"  # the key of the overall count
MAX_CLIENTS = 10_000  # addresses remembered at once; the least recently failed are forgotten


class CredentialThrottle:
    """Failure counts in a sliding window of ``window_s`` seconds; thread-safe."""

    def __init__(
        self,
        per_client: int,
        overall: int,
        window_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.per_client = per_client
        self.overall = overall
        self.window_s = window_s
        self.clock = clock
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._logged_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int | None:
        """Whole seconds until ``client`` may offer a credential again; None: it may now."""
        now = self.clock()
        with self._lock:
            until = max(self._blocked_until(client, now), self._blocked_until(EVERYONE, now))
        return math.ceil(until - now) if until > now else None

    def failed(self, client: str) -> None:
        """Count one wrong credential from ``client``; log when this starts a throttle."""
        now = self.clock()
        with self._lock:
            for key, budget in ((client, self.per_client), (EVERYONE, self.overall)):
                counts = self._failures.pop(key, None) or deque(maxlen=budget)
                counts.append(now)
                self._failures[key] = counts  # to the end: the most recently failed
                until = self._blocked_until(key, now)
                if until > now and self._logged_until.get(key, -math.inf) <= now:
                    self._logged_until[key] = until
                    who = "all clients" if key == EVERYONE else key
                    log.warning(
                        "credential throttle: %d wrong tokens from %s in %.0f s; answering 429 for %.0f s "
                        "(S2AP_AUTH_FAILURES, S2AP_AUTH_FAILURES_TOTAL, S2AP_AUTH_WINDOW_S)",
                        budget,
                        who,
                        self.window_s,
                        until - now,
                    )
            self._forget_oldest()

    def _blocked_until(self, key: str, now: float) -> float:
        """When the oldest of a full budget of failures leaves the window (-inf: not full)."""
        counts = self._failures.get(key)
        if counts is None or len(counts) < (counts.maxlen or 0):
            return -math.inf
        return counts[0] + self.window_s

    def _forget_oldest(self) -> None:
        while len(self._failures) > self.max_clients + 1:  # + the overall count
            key = next(k for k in self._failures if k != EVERYONE)
            del self._failures[key]
            self._logged_until.pop(key, None)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def throttle_of(request: Request) -> CredentialThrottle:
    return request.app.state.throttle  # type: ignore[no-any-return]


def too_many_message(wait: int) -> str:
    return f"too many wrong tokens from this address; try again in {wait} s"
