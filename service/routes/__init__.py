"""One router per resource: ``health`` (unauthenticated liveness) and ``jobs``."""
