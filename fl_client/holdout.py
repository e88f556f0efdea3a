"""The held-out split of a tenant's users: deterministic, keyed, and by user (invariant 10).

A user is held out when HMAC-SHA256(key, user id), read as a number in [0, 1), falls below the
fraction. Splitting by user keeps every record of one person on one side, so a metric on the
held-out side never includes a record the model trained on. The key defaults to the
organization id (stable across runs, so a user stays on the same side in every round and run);
a node may set its own ``holdout-key`` so that not even the server can tell which users are held out.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


def held_out_share(key: str, user_id: str) -> float:
    """The user's position in [0, 1) under ``key``."""
    digest = hmac.new(key.encode(), str(user_id).encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_held_out(key: str, user_id: str, fraction: float) -> bool:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction {fraction} must be in [0, 1)")
    return held_out_share(key, user_id) < fraction


def split_users(key: str, user_ids: Iterable[str], fraction: float) -> tuple[list[str], list[str]]:
    """(training users, held-out users), each in the given order."""
    train: list[str] = []
    held: list[str] = []
    for user in user_ids:
        (held if is_held_out(key, user, fraction) else train).append(user)
    return train, held
