"""When a failed event is tried again: exponential backoff with full jitter, capped.

Tenacity computes the delay (its ``wait_exponential_jitter``), so the policy is the library's and
only the storage is ours: the relay writes ``now + delay`` into the row's ``next_attempt_at``
instead of sleeping, so a retry survives a restart and never holds a batch back.
"""

from __future__ import annotations

from dataclasses import dataclass

import tenacity

#: The longest ``Retry-After`` honoured (seconds).
RETRY_AFTER_CAP_S = 3600.0


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` failed attempts send an event to the dead letters."""

    max_attempts: int = 10
    initial_s: float = 1.0
    max_s: float = 300.0
    jitter_s: float = 1.0

    def delay(self, attempts: int, retry_after_s: float | None = None) -> float:
        """Seconds before attempt ``attempts + 1``, after ``attempts`` failures (≥ 1).

        A hub that said ``Retry-After`` is waited for at least that long, up to
        ``RETRY_AFTER_CAP_S`` (a confused or hostile header cannot park an event for a year).
        """
        wait = tenacity.wait_exponential_jitter(initial=self.initial_s, max=self.max_s, jitter=self.jitter_s)
        state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = max(1, attempts)
        computed = float(wait(state))
        if retry_after_s is not None:
            return max(computed, min(retry_after_s, RETRY_AFTER_CAP_S))
        return computed

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts
