"""Seeds derived from names, so no random stream depends on what ran before it.

Every epoch, attack and measurement reseeds from ``derive_seed(seed, what, ...)``: a run
resumed mid-way draws exactly the numbers an uninterrupted run draws.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and Python runs."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
