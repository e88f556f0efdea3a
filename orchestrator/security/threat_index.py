"""The in-memory index of active threat indicators: every match in O(1) or O(log n), no table scan.

- addresses: a dict keyed by the canonical text of the address (what the ASGI server hands us for
  the client), so the common case is one hash lookup without parsing;
- CIDR ranges: merged into disjoint integer intervals, per IP version, sorted by start; an
  address is in a range when the interval that starts at or before it (``bisect``) ends at or
  after it. Overlapping ranges merge and keep the worst severity;
- domains: a dict; a host matches when it or any parent domain is listed (``a.b.evil.com`` walks
  ``a.b.evil.com``, ``b.evil.com``, ``evil.com``, ``com``: one lookup per label);
- URLs: a dict of normalised URLs; an endpoint matches a listed URL or any of its path prefixes;
- user agents, hashes: dicts;
- e-mail: a dict of addresses and whole mail domains (``@evil.example``); an address matches
  itself, then ``@`` + its domain or a parent, then that domain as a ``domain`` indicator: one
  lookup per label, like a host.

``ThreatIntel`` also keeps the ids of users whose address matches (``listed_users``), computed
off the request path when the index is reloaded, so the zero-trust gate asks one dict per request.

Each value is the indicator's severity. The index is immutable once built; ``ThreatIntel`` holds
the current one and swaps in a new one when the table changed (``threat_intel.version``: row
counts and the latest ``updated_at``), off the request path.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import uuid
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, select

from orchestrator.security import threat_intel
from schema.db import transaction
from schema.models import ThreatIntelligence, User
from schema.vocab import SEVERITIES

log = logging.getLogger("accute.security")
_RANK = {name: i for i, name in enumerate(SEVERITIES)}


@dataclass(frozen=True, slots=True)
class Match:
    indicator: str
    """``type:value`` of the listed indicator that matched."""
    severity: str


class _Ranges:
    """Disjoint integer intervals ``[start, end]`` with a severity each; lookup by bisection."""

    def __init__(self, ranges: Iterable[tuple[int, int, str, str]]) -> None:
        starts: list[int] = []
        ends: list[int] = []
        worst: list[str] = []
        names: list[str] = []
        for start, end, severity, name in sorted(ranges):
            if ends and start <= ends[-1] + 1:  # overlaps or touches the previous one: merge
                ends[-1] = max(ends[-1], end)
                if _RANK[severity] > _RANK[worst[-1]]:
                    worst[-1] = severity
                continue
            starts.append(start)
            ends.append(end)
            worst.append(severity)
            names.append(name)
        self.starts, self.ends, self.worst, self.names = starts, ends, worst, names

    def find(self, value: int) -> Match | None:
        at = bisect_right(self.starts, value) - 1
        if at >= 0 and value <= self.ends[at]:
            return Match(f"ip:{self.names[at]}", self.worst[at])
        return None

    def __len__(self) -> int:
        return len(self.starts)


def _worse(table: dict[str, str], key: str, severity: str) -> None:
    known = table.get(key)
    if known is None or _RANK[severity] > _RANK[known]:
        table[key] = severity


class ThreatIndex:
    """One immutable snapshot of the active indicators."""

    def __init__(self, rows: Iterable[tuple[str, str, str]] = ()) -> None:
        """``rows``: (indicator_type, indicator_value, severity), values normalised as stored."""
        self.ips: dict[str, str] = {}
        self.domains: dict[str, str] = {}
        self.urls: dict[str, str] = {}
        self.agents: dict[str, str] = {}
        self.hashes: dict[str, str] = {}
        self.emails: dict[str, str] = {}
        v4: list[tuple[int, int, str, str]] = []
        v6: list[tuple[int, int, str, str]] = []
        tables = {
            "domain": self.domains,
            "url": self.urls,
            "user_agent": self.agents,
            "hash": self.hashes,
            "email": self.emails,
        }
        count = 0
        for kind, value, severity in rows:
            count += 1
            if severity not in _RANK:
                severity = "critical"
            if kind == "ip":
                if "/" not in value:
                    _worse(self.ips, value, severity)
                    continue
                network = ipaddress.ip_network(value, strict=False)
                interval = (int(network.network_address), int(network.broadcast_address), severity, value)
                (v4 if network.version == 4 else v6).append(interval)
            elif kind in tables:
                _worse(tables[kind], value, severity)
        self.v4 = _Ranges(v4)
        self.v6 = _Ranges(v6)
        self.size = count

    # -- matching (the request path) ----------------------------------------------------------------
    def match_ip(self, address: str | None) -> Match | None:
        """The client address (canonical text, as the server reports it) against addresses and ranges."""
        if not address:
            return None
        severity = self.ips.get(address)
        if severity is not None:
            return Match(f"ip:{address}", severity)
        if not self.v4.starts and not self.v6.starts:
            return None
        if ":" not in address:
            try:
                return self.v4.find(int.from_bytes(socket.inet_aton(address), "big"))
            except OSError:
                return None
        try:
            parsed = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if parsed.version == 6 and parsed.ipv4_mapped is not None:  # ::ffff:a.b.c.d is an IPv4 client
            return self.match_ip(str(parsed.ipv4_mapped))
        return self.v6.find(int(parsed)) if parsed.version == 6 else self.v4.find(int(parsed))

    def match_agent(self, user_agent: str | None) -> Match | None:
        if not user_agent or not self.agents:
            return None
        severity = self.agents.get(user_agent.strip())
        return None if severity is None else Match(f"user_agent:{user_agent.strip()}", severity)

    def match_domain(self, host: str | None) -> Match | None:
        """``host`` or a parent domain of it listed."""
        if not host or not self.domains:
            return None
        name = host.lower().rstrip(".")
        while name:
            severity = self.domains.get(name)
            if severity is not None:
                return Match(f"domain:{name}", severity)
            dot = name.find(".")
            if dot < 0:
                return None
            name = name[dot + 1 :]
        return None

    def match_hash(self, digest: str | None) -> Match | None:
        if not digest:
            return None
        severity = self.hashes.get(digest.lower())
        return None if severity is None else Match(f"hash:{digest.lower()}", severity)

    def match_email(self, address: str | None) -> Match | None:
        """The address, its mail domain or a parent listed (``email``), or the domain (``domain``)."""
        if not address or (not self.emails and not self.domains):
            return None
        value = address.strip().lower()
        if "@" not in value:
            return None
        severity = self.emails.get(value)
        if severity is not None:
            return Match(f"email:{value}", severity)
        if self.emails:
            for domain in threat_intel.mail_domains(value):
                severity = self.emails.get(f"@{domain}")
                if severity is not None:
                    return Match(f"email:@{domain}", severity)
        return self.match_domain(value.rpartition("@")[2])

    def match_url(self, url: str) -> Match | None:
        """A provider endpoint: the URL or a path prefix of it listed, its host (or a parent
        domain) listed, or its host an address inside a listed address or range."""
        try:
            normalised = threat_intel.normalize_url(url)
        except Exception:
            return None
        if self.urls:
            candidate = normalised
            while True:
                severity = self.urls.get(candidate)
                if severity is not None:
                    return Match(f"url:{candidate}", severity)
                scheme_end = candidate.find("://") + 3
                slash = candidate.rfind("/")
                if slash < scheme_end:
                    break
                candidate = candidate[:slash]
        host = urlsplit(normalised).hostname or ""
        try:
            address = str(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            return self.match_domain(host)
        return self.match_ip(address)


class ThreatIntel:
    """The current ``ThreatIndex``, reloaded from the table when it changed."""

    def __init__(self, index: ThreatIndex | None = None) -> None:
        self.index = index or ThreatIndex()
        self._version: Any = None
        #: Users whose address the index lists, with the match (recomputed with the index).
        self.listed_users: dict[uuid.UUID, Match] = {}

    def match_user(self, user_id: uuid.UUID | None) -> Match | None:
        """The match of a user whose email address is listed (one dict lookup)."""
        return None if user_id is None or not self.listed_users else self.listed_users.get(user_id)

    def refresh(self, engine: Engine) -> bool:
        """Reload if the table changed since the last load (one cheap query otherwise); True if reloaded."""
        with transaction(engine) as session:
            current = threat_intel.version(session)
            if current == self._version:
                return False
            rows = session.execute(
                select(
                    ThreatIntelligence.indicator_type,
                    ThreatIntelligence.indicator_value,
                    ThreatIntelligence.severity,
                )
                .where(ThreatIntelligence.is_active.is_(True))
                .execution_options(yield_per=10_000)
            )
            index = ThreatIndex((kind, value, severity) for kind, value, severity in rows)
            listed: dict[uuid.UUID, Match] = {}
            if index.emails or index.domains:  # a user created since was screened on creation
                users = session.execute(select(User.id, User.email).execution_options(yield_per=10_000))
                for user_id, email in users:
                    match = index.match_email(email)
                    if match is not None:
                        listed[user_id] = match
        self.index = index
        self.listed_users = listed
        self._version = current
        log.info(
            "threat intelligence: %d active indicators loaded, %d user(s) with a listed address",
            index.size,
            len(listed),
        )
        return True
