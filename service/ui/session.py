"""Sign-in sessions of the web page: who may see ``/ui`` and send its forms.

A browser cannot send the API's bearer header, so ``POST /ui/login`` trades the service
token for a session: a random 256-bit id in an HttpOnly, SameSite=Strict cookie (Secure
when the page is served over https), held here, server-side, with its expiry and its CSRF
token. Signing out forgets it at once; a restart of the service signs everyone out. Every
state-changing form carries the session's CSRF token, compared in constant time, as is the
service token itself.

A service started ``--local-only`` without a token signs in without one (its API needs none
either), but its forms still need a session and a CSRF token: a page on another site must
not be able to submit or cancel jobs through a browser on the same machine.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from service.settings import Settings

COOKIE = "s2ap_session"
COOKIE_PATH = "/ui"
SESSION_TTL_S = 12 * 3600.0
MAX_SESSIONS = 10_000  # the oldest are forgotten past this many
CSRF_FIELD = "csrf"


@dataclass(frozen=True)
class Session:
    csrf: str
    expires: float


def _key(cookie: str) -> str:
    """Sessions are stored under a hash of the cookie: the table alone signs nobody in."""
    return hashlib.sha256(cookie.encode()).hexdigest()


class Sessions:
    """The signed-in browsers, in memory, thread-safe."""

    def __init__(self, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._by_key: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self) -> tuple[str, Session]:
        """A new session: the cookie value to hand the browser, and the session."""
        cookie = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), expires=time.time() + self.ttl_s)
        with self._lock:
            self._expire()
            while len(self._by_key) >= self.max_sessions:
                self._by_key.pop(next(iter(self._by_key)))  # insertion order: the oldest
            self._by_key[_key(cookie)] = session
        return cookie, session

    def get(self, cookie: str | None) -> Session | None:
        if not cookie or len(cookie) > 128:
            return None
        with self._lock:
            session = self._by_key.get(_key(cookie))
            if session is not None and session.expires <= time.time():
                self._by_key.pop(_key(cookie), None)
                return None
            return session

    def drop(self, cookie: str | None) -> None:
        if cookie:
            with self._lock:
                self._by_key.pop(_key(cookie), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_key)

    def _expire(self) -> None:
        now = time.time()
        for key in [k for k, s in self._by_key.items() if s.expires <= now]:
            del self._by_key[key]


def token_matches(settings: Settings, offered: str | None) -> bool:
    """The service token, compared in constant time; any input when the service has none."""
    if not settings.auth_required:
        return True
    expected = (settings.api_token or "").encode()
    return hmac.compare_digest((offered or "").encode(), expected)


def csrf_matches(session: Session, offered: str | None) -> bool:
    return hmac.compare_digest((offered or "").encode(), session.csrf.encode())


def served_over_https(request: Request) -> bool:
    """https here, or at the TLS proxy in front (its X-Forwarded-Proto). Believing the
    header can only make the cookie stricter, never looser."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def set_cookie(response: Response, request: Request, cookie: str) -> None:
    response.set_cookie(
        COOKIE,
        cookie,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=served_over_https(request),
    )


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=served_over_https(request)
    )


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a page of ``/ui`` only, never another site."""
    if not target or not target.startswith("/ui") or target.startswith("//") or "\\" in target:
        return "/ui"
    if any(c in target for c in "\r\n") or "://" in target:
        return "/ui"
    return target


def login_url(next_path: str) -> str:
    return f"/ui/login?next={quote(safe_next(next_path), safe='/')}"
