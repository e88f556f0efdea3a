"""Anomaly detection on the HTTP side: detectors fed by ``Guard``, a blocklist, and a recorder.

``SecurityMonitor`` is what ``Guard`` calls (``orchestrator/api/deps.py``):

- ``auth_failed(address)``: a presented token did not verify. ``credential_stuffing`` fires when
  one address sends ``threshold`` bad tokens within ``window_s``; the policy blocks that address
  (only that one) for ``block_s``.
- ``forbidden(principal, org, ...)``: a valid token asked for another organization, or for a
  route of a role it lacks. Every probe is a ``privilege_escalation`` finding (another
  organization: the rule's severity; a missing role in its own organization: one level lower);
  ``threshold`` probes within ``window_s`` block the token's subject.
- ``request_seen(principal, ...)``: one authenticated request. Per organization, requests a minute
  against its own rolling baseline (``volume_spike``, ``stats.RateBaseline``) and the hour of the
  day against its usual hours (``time_anomaly``, ``stats.HourProfile``).
- ``fallback_tokens(org, n)``: billed fallback tokens a minute against the organization's own
  baseline (``api_abuse``).
- ``sensitive_read(principal, kind, rows)``: a read of usage, billing, exports or data subject
  requests; ``threshold`` reads or ``min_count`` rows within ``window_s`` by one principal is
  ``data_exfiltration``.

The request path only touches in-memory, bounded state (dict lookups and increments); findings
go to ``AnomalyRecorder``, a thread that writes them in batches (``schema.security_anomalies``,
deduplicated) off the hot path. ``is_blocked`` answers from memory: a block written by this
process counts at once; blocks raised by other workers, and resolutions by the CLI or API, reach
it through ``orchestrator.security.block_sync`` (within ``ACCUTE_SECURITY_CHANGE_POLL_S``, at once
with Redis).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.auth import Principal
from orchestrator.security.stats import BoundedLru, HourProfile, RateBaseline, SlidingCounter
from schema import security_anomalies
from schema.anomaly_policy import AnomalyPolicy, AnomalyRule, load_policy
from schema.config import Settings
from schema.db import sqlite_file_missing, transaction
from schema.errors import AccuteError
from schema.security_anomalies import Finding
from schema.vocab import SEVERITIES

log = logging.getLogger("accute.security")

#: Blocked subjects kept in memory at most (a block past this evicts the one ending first).
MAX_BLOCKS = 100_000
MAX_BATCH = 256


def address_subject(address: str) -> str:
    return f"address:{address}"


def principal_subject(principal: Principal) -> str:
    return f"principal:{principal.subject}"


def _lower(severity: str) -> str:
    return SEVERITIES[max(SEVERITIES.index(severity) - 1, 0)]


class Blocklist:
    """Subjects refused until a time (wall-clock seconds); bounded, expired entries dropped on read."""

    def __init__(self, capacity: int = MAX_BLOCKS) -> None:
        self.capacity = capacity
        self._until: dict[str, float] = {}
        self._since: dict[str, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._until)

    def block(self, subject: str, until: float, since: float | None = None) -> None:
        """Refuse ``subject`` until ``until``; ``since`` is when the block began (now by default;
        0 for a block loaded from the table, which any later resolution lifts)."""
        began = time.time() if since is None else since
        with self._lock:
            if subject not in self._until and len(self._until) >= self.capacity:
                # Full: drop the block that ends first (expired ones are the first to go).
                victim = min(self._until, key=self._until.__getitem__)
                del self._until[victim]
                self._since.pop(victim, None)
            self._until[subject] = max(until, self._until.get(subject, 0.0))
            self._since[subject] = max(began, self._since.get(subject, 0.0))

    def unblock(self, subject: str) -> None:
        with self._lock:
            self._until.pop(subject, None)
            self._since.pop(subject, None)

    def unblock_before(self, subject: str, resolved_at: float) -> bool:
        """Lift ``subject``'s block if it began no later than ``resolved_at`` (a resolution elsewhere
        must not lift a block this worker raised after it); True when lifted."""
        with self._lock:
            if subject in self._until and self._since.get(subject, 0.0) <= resolved_at:
                del self._until[subject]
                self._since.pop(subject, None)
                return True
        return False

    def until(self, subject: str, now: float) -> float | None:
        if not self._until:  # the common case: nothing blocked, one attribute read
            return None
        until = self._until.get(subject)
        if until is None:
            return None
        if until <= now:
            with self._lock:
                self._until.pop(subject, None)
                self._since.pop(subject, None)
            return None
        return until


class AnomalyRecorder:
    """Writes findings in batches on its own thread; ``submit`` never waits for the database."""

    def __init__(self, engine: Engine, max_queue: int = 10_000) -> None:
        self.engine = engine
        self._queue: queue.Queue[Finding | None] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.dropped = 0
        """Findings refused because the queue was full (a flood is still recorded by its first rows)."""
        self.written = 0
        self._idle = threading.Condition()
        self._pending = 0
        self.on_written: Callable[[bool], None] | None = None
        """Called after each committed batch with whether it raised a block (``BlockSync``)."""

    def submit(self, finding: Finding) -> None:
        with self._lock:
            if self._closed:
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="accute-anomalies", daemon=True)
                self._thread.start()
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(finding)
        except queue.Full:
            self.dropped += 1
            self._done(1)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _done(self, count: int) -> None:
        with self._idle:
            self._pending -= count
            if self._pending <= 0:
                self._idle.notify_all()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                self._write(batch)
                if self.on_written is not None:
                    self.on_written(any(f.block_s for f in batch))
            except Exception as exc:  # the notification is best effort; the batch is written
                log.warning("after an anomaly batch: %s", type(exc).__name__)
            finally:
                self._done(len(batch))
            if stop:
                return

    def _write(self, batch: list[Finding]) -> None:
        try:
            with transaction(self.engine) as session:
                for finding in batch:
                    security_anomalies.record(session, finding)
            self.written += len(batch)
        except Exception as exc:  # one bad finding must not lose the others: each on its own
            log.warning("anomaly batch of %d failed (%s); writing each alone", len(batch), type(exc).__name__)
            for finding in batch:
                try:
                    with transaction(self.engine) as session:
                        security_anomalies.record(session, finding)
                    self.written += 1
                except Exception as one:
                    log.error("recording a %s anomaly failed: %s", finding.anomaly_type, type(one).__name__)


class SecurityMonitor:
    """The HTTP side's detectors, blocklist and recorder (one per process)."""

    def __init__(
        self,
        policy: AnomalyPolicy,
        recorder: AnomalyRecorder | None,
        *,
        capacity: int = 65_536,
        clock: Callable[[], float] = time.time,
        dedup_window_s: int = 3600,
    ) -> None:
        self.policy = policy
        self.recorder = recorder
        self.clock = clock
        self.dedup_window_s = dedup_window_s
        self.blocks = Blocklist()
        rules = policy.rules
        stuffing = rules["credential_stuffing"]
        self._bad_tokens: SlidingCounter[str] = SlidingCounter(
            max(int(stuffing.threshold), 1), stuffing.window_s, capacity
        )
        escalation = rules["privilege_escalation"]
        self._probes: SlidingCounter[str] = SlidingCounter(
            max(int(escalation.threshold), 1), escalation.window_s, capacity
        )
        # Organizations are keyed by their UUID's integer: hashing a UUID runs Python code.
        self._volume: RateBaseline[int] = self._baseline(rules["volume_spike"], capacity)
        self._fallback: RateBaseline[int] = self._baseline(rules["api_abuse"], capacity)
        timing = rules["time_anomaly"]
        self._hours: HourProfile[int] = HourProfile(timing.threshold, timing.min_history, capacity)
        exfil = rules["data_exfiltration"]
        self._reads: SlidingCounter[str] = SlidingCounter(
            max(int(exfil.threshold), 1), exfil.window_s, capacity
        )
        self._rows: BoundedLru[str, list[float]] = BoundedLru(capacity)

    @staticmethod
    def _baseline(rule: AnomalyRule, capacity: int) -> RateBaseline[int]:
        return RateBaseline(
            z=rule.z,
            ratio=rule.ratio,
            min_count=rule.min_count,
            history=max(int(rule.window_s // 60), 1),
            min_history=rule.min_history,
            capacity=capacity,
        )

    # -- blocklist ---------------------------------------------------------------------------------
    def is_blocked(self, address: str | None = None, subject: str | None = None) -> bool:
        """Whether this process refuses ``address`` (an IP) or ``subject`` (a token's ``sub``) now."""
        if not len(self.blocks):
            return False
        now = self.clock()
        if address is not None and self.blocks.until(address_subject(address), now) is not None:
            return True
        return subject is not None and self.blocks.until(f"principal:{subject}", now) is not None

    def unblock(self, subject: str) -> None:
        self.blocks.unblock(subject)

    # -- the detectors -----------------------------------------------------------------------------
    def auth_failed(self, address: str | None) -> None:
        if not address:
            return
        now = self.clock()
        rule = self.policy.rules["credential_stuffing"]
        count = self._bad_tokens.add(address, now)
        if count is None:
            return
        self._emit(
            "credential_stuffing",
            rule,
            address_subject(address),
            now,
            evidence={"address": address, "failures_in_window": count, "window_s": rule.window_s},
            confidence=1.0,
        )

    def forbidden(
        self,
        principal: Principal,
        organization_id: uuid.UUID | None,
        roles: tuple[str, ...],
        address: str | None,
        path: str | None = None,
    ) -> None:
        now = self.clock()
        rule = self.policy.rules["privilege_escalation"]
        other_org = organization_id is not None and principal.organization_id != organization_id
        subject = principal_subject(principal)
        repeated = self._probes.add(subject, now)
        evidence = {
            "kind": "cross_organization" if other_org else "missing_role",
            "token_roles": sorted(principal.roles),
            "required_roles": list(roles),
            "target_organization_id": str(organization_id) if organization_id else None,
            "path": (path or "")[:300],
        }
        if address:
            evidence["address"] = address
        self._emit(
            "privilege_escalation",
            rule,
            subject,
            now,
            organization_id=principal.organization_id,
            user_id=principal.user_id,
            evidence=evidence,
            severity=rule.severity if other_org else _lower(rule.severity),
            block=repeated is not None,
            confidence=1.0 if other_org else 0.6,
        )

    def request_seen(self, principal: Principal, address: str | None = None) -> None:
        org = principal.organization_id
        if org is None:
            return
        now = self.clock()
        key = org.int
        spike = self._volume.add(key, now)
        if spike is not None:
            rule = self.policy.rules["volume_spike"]
            self._emit(
                "volume_spike",
                rule,
                f"org:{org}",
                now,
                organization_id=org,
                evidence={
                    "requests_this_minute": spike.count,
                    "baseline_median": spike.median,
                    "limit": round(spike.limit, 2),
                    "robust_z": round(spike.z, 2),
                },
                confidence=min(spike.z / (2 * rule.z), 1.0) if rule.z else 1.0,
            )
        share = self._hours.add(key, now)
        if share is not None:
            rule = self.policy.rules["time_anomaly"]
            evidence: dict[str, object] = {
                "hour_utc": int(now // 3600) % 24,
                "usual_share_of_hour": round(share, 5),
                "principal": principal.subject[:100],
            }
            if address:
                evidence["address"] = address
            self._emit("time_anomaly", rule, f"org:{org}", now, organization_id=org, evidence=evidence)

    def fallback_tokens(self, organization_id: uuid.UUID, tokens: int) -> None:
        if tokens <= 0:
            return
        now = self.clock()
        spike = self._fallback.add(organization_id.int, now, tokens)
        if spike is None:
            return
        rule = self.policy.rules["api_abuse"]
        self._emit(
            "api_abuse",
            rule,
            f"org:{organization_id}",
            now,
            organization_id=organization_id,
            evidence={
                "fallback_tokens_this_minute": spike.count,
                "baseline_median": spike.median,
                "limit": round(spike.limit, 2),
                "robust_z": round(spike.z, 2),
            },
        )

    def sensitive_read(self, principal: Principal, kind: str, rows: int, address: str | None = None) -> None:
        now = self.clock()
        rule = self.policy.rules["data_exfiltration"]
        subject = principal_subject(principal)
        reads = self._reads.add(subject, now)
        window = self._rows.setdefault(subject, lambda: [now, 0.0])
        if now - window[0] > rule.window_s:
            window[0], window[1] = now, 0.0
        window[1] += max(rows, 0)
        too_many_rows = window[1] >= rule.min_count
        if reads is None and not too_many_rows:
            return
        evidence: dict[str, object] = {
            "kind": kind[:50],
            "reads_in_window": self._reads.count(subject, now),
            "rows_in_window": int(window[1]),
            "window_s": rule.window_s,
        }
        if address:
            evidence["address"] = address
        if too_many_rows:
            window[0], window[1] = now, 0.0
        self._emit(
            "data_exfiltration",
            rule,
            subject,
            now,
            organization_id=principal.organization_id,
            user_id=principal.user_id,
            evidence=evidence,
        )

    # -- recording ---------------------------------------------------------------------------------
    def _emit(
        self,
        detector: str,
        rule: AnomalyRule,
        subject: str,
        now: float,
        *,
        organization_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
        evidence: Mapping[str, Any] | None = None,
        severity: str | None = None,
        block: bool = True,
        confidence: float | None = None,
    ) -> None:
        blocking = rule.auto_block and block
        if blocking:
            self.blocks.block(subject, now + rule.block_s)
        if self.recorder is None:
            return
        self.recorder.submit(
            Finding(
                detector=detector,
                anomaly_type=rule.anomaly_type,
                severity=severity or rule.severity,
                subject=subject,
                organization_id=organization_id,
                user_id=user_id,
                evidence=dict(evidence or {}),
                confidence=confidence,
                block_s=rule.block_s if blocking else None,
                at=datetime.fromtimestamp(now, UTC),
                window_s=self.dedup_window_s,
            )
        )


def load_blocks(monitor: SecurityMonitor, engine: Engine) -> int:
    """Put the table's live address and token blocks on ``monitor``'s blocklist (a restarted or
    added worker keeps refusing what another refused); returns how many. An unreachable or
    unmigrated database loads none (``/readyz`` says what is wrong)."""
    if sqlite_file_missing(engine) is not None:  # never bring an empty SQLite file into being
        return 0
    try:
        with transaction(engine) as session:
            live = security_anomalies.live_blocks(session, ("address:", "principal:"))
    except (SQLAlchemyError, AccuteError) as exc:
        log.warning("no anomaly blocks loaded at start (%s)", type(exc).__name__)
        return 0
    for subject, until in live.items():
        monitor.blocks.block(subject, until.timestamp())
    return len(live)


def build_monitor(settings: Settings, engine: Engine) -> SecurityMonitor:
    """The process's monitor: the policy file (or the defaults), a recorder on ``engine``, and the
    blocks still live in the table."""
    monitor = SecurityMonitor(
        load_policy(settings.anomaly_policy_file),
        AnomalyRecorder(engine),
        capacity=settings.anomaly_tracked_keys,
        dedup_window_s=settings.anomaly_dedup_window_s,
    )
    load_blocks(monitor, engine)
    return monitor
