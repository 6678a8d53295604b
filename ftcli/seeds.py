"""The one seed-derivation function: every seeded draw of a run is keyed by its purpose."""

from __future__ import annotations

import hashlib


def derive_seed(*parts) -> int:
    """A 62-bit seed from `parts` (blake2b of their strings joined by NUL), e.g.
    `derive_seed(seed, "gen", step)`: independent streams per purpose, step and sequence."""
    h = hashlib.blake2b("\x00".join(str(p) for p in parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & ((1 << 62) - 1)
