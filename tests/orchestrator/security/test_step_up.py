"""Step-up after a passed challenge: bound to one token, shared by workers through Redis, ending
after ``ACCUTE_MFA_STEP_UP_S`` (real Redis; two ``StepUps`` stand for two workers)."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from orchestrator.security.step_up import StepUps, token_key
from schema.config import Settings
from tests.orchestrator.security.test_gate_service import REDIS_URL, redis_unavailable


def test_memory_only_step_up_is_per_token_and_ends() -> None:
    # Prepare
    step_ups = StepUps(Settings(mfa_step_up_s=1, redis_url=None))
    mine, other = token_key("token-a"), token_key("token-b")

    # Execute
    step_ups.remember(mine)
    at_once = (step_ups.active(mine), step_ups.active(other))
    time.sleep(1.1)

    # Assert
    assert at_once == (True, False) and step_ups.active(mine) is False


def test_redis_shares_a_step_up_between_workers() -> None:
    # Prepare
    reason = redis_unavailable()
    if reason is not None:
        pytest.skip(reason)
    prefix = f"accute-test-{uuid.uuid4().hex[:8]}"
    settings = Settings(mfa_step_up_s=2, redis_url=REDIS_URL, rate_limit_key_prefix=prefix)
    worker_a, worker_b = StepUps(settings), StepUps(settings)
    key = token_key(f"token-{uuid.uuid4()}")

    # Execute
    before = worker_b.active(key)
    worker_a.remember(key)
    shared = worker_b.active(key)
    stored = [k.decode() for k in redis.Redis.from_url(REDIS_URL).scan_iter(f"{prefix}*")]
    time.sleep(2.2)
    after = worker_b.active(key)
    worker_a.close()
    worker_b.close()

    # Assert: only the token's hash is stored, never the token.
    assert (before, shared, after) == (False, True, False)
    assert stored == [f"{prefix}:step-up:{key}"]
