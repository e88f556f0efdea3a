"""Threat intelligence feeds: read STIX 2.1 bundles and CSV files into ``threat_intelligence``.

Two input formats:

- STIX 2.1 bundles (read and validated by the ``stix2`` library). Each ``indicator`` whose
  ``pattern_type`` is ``stix`` gives one row per equality in its pattern on an object we match:
  ``ipv4-addr:value`` / ``ipv6-addr:value`` (an address or a CIDR range) → ``ip``;
  ``domain-name:value`` → ``domain``; ``url:value`` → ``url``; ``file:hashes.*`` → ``hash``;
  ``email-addr:value`` → ``email``; ``user-agent:value`` or
  ``network-traffic:extensions.'http-request-ext'.request_header.'User-Agent'`` → ``user_agent``.
  ``threat_type`` is the first of ``indicator_types`` (else ``malicious-activity``), ``severity``
  the custom ``x_severity`` if present, else from ``confidence`` (>= 85 high, >= 50 medium, else
  low; none: medium); ``source`` the ``--source`` given, else the name of the bundle's identity in
  ``created_by_ref``, else ``stix``. ``first_seen`` is ``valid_from``, ``last_seen`` ``modified``.
  A revoked indicator, or one whose ``valid_until`` has passed, is stored inactive.
- CSV whose header is the table's column names: ``indicator_type,indicator_value,threat_type,
  severity,source,confidence,first_seen,last_seen`` (the last two optional: now).

Values are normalised before they are stored (addresses and ranges canonical, domains lowercase
without a trailing dot, URLs with a lowercase scheme and host and no trailing slash, hashes
lowercase, e-mail addresses lowercase and a whole mail domain as ``@domain``), so the same
indicator written two ways is one row.

Import is idempotent on (type, value, source): a known indicator is updated (``last_seen`` the
later of the two when the feed dates it, ``first_seen`` the earlier, severity, confidence, threat type, active again), a
new one inserted (``ON CONFLICT DO NOTHING`` on the unique key of migration 0019, so two imports
at once neither fail nor duplicate); importing the same file twice changes nothing. Expiry: ``expire`` marks
indicators whose ``last_seen`` is older than a cutoff inactive; inactive rows are not matched.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, func, inspect, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from schema import audit
from schema.db import transaction
from schema.errors import InvalidInputError, PermissionDeniedError
from schema.models import ThreatIntelligence
from schema.timeutil import as_utc, iso, utcnow
from schema.vocab import INDICATOR_TYPES, SEVERITIES

CSV_COLUMNS = (
    "indicator_type",
    "indicator_value",
    "threat_type",
    "severity",
    "source",
    "confidence",
    "first_seen",
    "last_seen",
)
CSV_REQUIRED = CSV_COLUMNS[:6]
#: Rows looked up / written per statement on import.
CHUNK = 1000


class ThreatListedError(PermissionDeniedError):
    """What was presented (a FAB, an email address) is listed in threat intelligence: refused
    (HTTP 403, CLI exit 6). The message names the indicator, never a secret."""

    code = "threat_listed"


@dataclass
class Indicator:
    indicator_type: str
    indicator_value: str
    threat_type: str
    severity: str
    source: str
    confidence: Decimal
    first_seen: datetime
    last_seen: datetime
    is_active: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)
    dated: bool = True
    """``last_seen`` came from the feed (False: defaulted to the import time, which does not move a
    known indicator's ``last_seen``, so importing an undated file twice changes nothing)."""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.indicator_type, self.indicator_value, self.source)


@dataclass
class ImportResult:
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


# -- normalisation ------------------------------------------------------------------------------------
def normalize(indicator_type: str, value: str) -> str:
    """The stored (and matched) form of ``value``; ``InvalidInputError`` when it is not one."""
    text = value.strip()
    if not text:
        raise InvalidInputError(f"an empty {indicator_type} indicator; give a value")
    if indicator_type == "ip":
        try:
            if "/" in text:
                network = ipaddress.ip_network(text, strict=False)
                if network.num_addresses == 1:
                    return str(network.network_address)
                return str(network)
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise InvalidInputError(f"ip indicator '{text[:100]}' is not an address or CIDR range") from None
    if indicator_type == "domain":
        domain = text.lower().rstrip(".")
        if not domain or any(c.isspace() or c in "/:@" for c in domain):
            raise InvalidInputError(f"domain indicator '{text[:100]}' is not a domain name")
        return domain
    if indicator_type == "url":
        return normalize_url(text)
    if indicator_type == "hash":
        digest = text.lower()
        if any(c not in "0123456789abcdef" for c in digest) or len(digest) not in (32, 40, 64, 128):
            raise InvalidInputError(
                f"hash indicator '{text[:100]}' is not an MD5/SHA-1/SHA-256/SHA-512 hex digest"
            )
        return digest
    if indicator_type == "email":
        return normalize_email(text)
    if indicator_type == "user_agent":
        return text
    raise InvalidInputError(f"indicator_type '{indicator_type}' is not one of {', '.join(INDICATOR_TYPES)}")


def normalize_email(text: str) -> str:
    """An address ``local@domain`` lowercased, or a whole mail domain as ``@domain`` (written
    ``@evil.example`` or bare ``evil.example``); ``mailto:`` and a trailing dot dropped."""
    value = text.strip().lower().removeprefix("mailto:")
    local, at, domain = value.rpartition("@")
    if not at:  # a bare domain: every address there
        local, domain = "", value
    domain = domain.rstrip(".")
    if (
        not domain
        or "@" in local
        or domain.startswith(".")
        or ".." in domain
        or any(c.isspace() or c in '/:<>,;"' for c in value)
    ):
        raise InvalidInputError(
            f"email indicator '{text[:100]}' is not an address (name@example.com) nor a mail domain (@example.com)"
        )
    return f"{local}@{domain}"


def mail_domains(address: str) -> list[str]:
    """The domain of ``address`` and each parent domain (``a.b.example`` → ``a.b.example``,
    ``b.example``, ``example``): what an address is matched against besides itself."""
    domain = address.strip().lower().rpartition("@")[2].rstrip(".")
    parts = domain.split(".") if domain else []
    return [".".join(parts[i:]) for i in range(len(parts))]


def normalize_url(text: str) -> str:
    """``scheme://host[:port]/path`` with the scheme and host lowercased, no query, no trailing slash."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(f"url '{text[:100]}' is not an http(s) URL")
    host = parts.hostname.lower().rstrip(".")
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def _severity(value: str) -> str:
    severity = value.strip().lower()
    if severity not in SEVERITIES:
        raise InvalidInputError(f"severity '{value}' is not one of {', '.join(SEVERITIES)}")
    return severity


def _confidence(value: Any) -> Decimal:
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidInputError(f"confidence '{value}' is not a number 0-100") from None
    if not Decimal(0) <= number <= Decimal(100):
        raise InvalidInputError(f"confidence {value} is not within 0-100")
    return number.quantize(Decimal("0.01"))


def _moment(value: str | None, default: datetime) -> datetime:
    if value is None or not value.strip():
        return default
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"'{value}' is not an ISO 8601 time (e.g. 2026-01-31T12:00:00Z)") from None
    return as_utc(moment)


# -- CSV ----------------------------------------------------------------------------------------------
def parse_csv(text: str) -> Iterator[Indicator]:
    """Indicators of a CSV whose header names the table's columns (``CSV_COLUMNS``)."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in CSV_REQUIRED if c not in header]
    if missing:
        raise InvalidInputError(
            f"the CSV header lacks {', '.join(missing)}; it must name the columns {','.join(CSV_COLUMNS)}"
        )
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if unknown:
        raise InvalidInputError(f"the CSV header has unknown columns {', '.join(unknown)}")
    now = utcnow()
    for line, raw in enumerate(reader, start=2):
        row = {k.strip(): (v or "") for k, v in raw.items() if k is not None}
        try:
            kind = row["indicator_type"].strip().lower()
            first = _moment(row.get("first_seen"), now)
            last = row.get("last_seen")
            source = row["source"].strip()
            threat_type = row["threat_type"].strip()
            if not source or not threat_type:
                raise InvalidInputError("source and threat_type must not be empty")
            yield Indicator(
                indicator_type=kind,
                indicator_value=normalize(kind, row["indicator_value"]),
                threat_type=threat_type[:100],
                severity=_severity(row["severity"]),
                source=source[:100],
                confidence=_confidence(row["confidence"]),
                first_seen=first,
                last_seen=_moment(last, max(first, now)),
                dated=bool(last and last.strip()),
            )
        except InvalidInputError as exc:
            raise InvalidInputError(f"CSV line {line}: {exc}") from None


# -- STIX 2.1 -----------------------------------------------------------------------------------------
def _stix_type(object_type: str, path: list[str]) -> str | None:
    if object_type in ("ipv4-addr", "ipv6-addr") and path == ["value"]:
        return "ip"
    if object_type == "domain-name" and path == ["value"]:
        return "domain"
    if object_type == "url" and path == ["value"]:
        return "url"
    if object_type == "email-addr" and path == ["value"]:
        return "email"
    if object_type == "file" and len(path) == 2 and path[0] == "hashes":
        return "hash"
    if object_type == "user-agent" and path == ["value"]:
        return "user_agent"
    if object_type == "network-traffic" and path and path[-1].lower() == "user-agent":
        return "user_agent"
    return None


def _equalities(node: Any) -> Iterator[tuple[str, list[str], str]]:
    """(object type, property path, value) of every non-negated ``=`` in a parsed pattern."""
    if type(node).__name__ == "EqualityComparisonExpression":
        if not node.negated and isinstance(getattr(node.rhs, "value", None), str):
            path = [str(getattr(p, "property_name", "")) for p in node.lhs.property_path]
            yield node.lhs.object_type_name, path, node.rhs.value
        return
    for child in getattr(node, "operands", None) or ():
        yield from _equalities(child)
    operand = getattr(node, "operand", None)
    if operand is not None:
        yield from _equalities(operand)


def _stix_severity(indicator: Any) -> str:
    custom = indicator.get("x_severity")
    if isinstance(custom, str) and custom.lower() in SEVERITIES:
        return custom.lower()
    confidence = indicator.get("confidence")
    if confidence is None:
        return "medium"
    return "high" if confidence >= 85 else "medium" if confidence >= 50 else "low"


def parse_stix(text: str, source: str | None = None) -> Iterator[Indicator]:
    """Indicators of a STIX 2.1 bundle (see the module docstring for the mapping)."""
    import stix2
    from stix2.exceptions import STIXError
    from stix2.pattern_visitor import create_pattern_object

    try:
        bundle = stix2.parse(text, allow_custom=True, version="2.1")
    except (STIXError, ValueError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"not a valid STIX 2.1 bundle: {str(exc).splitlines()[0][:200]}") from None
    objects = list(bundle.get("objects", [])) if bundle.get("type") == "bundle" else [bundle]
    identities = {o["id"]: o.get("name") for o in objects if o.get("type") == "identity"}
    now = utcnow()
    for obj in objects:
        if obj.get("type") != "indicator" or obj.get("pattern_type") != "stix":
            continue
        try:
            pattern = create_pattern_object(obj["pattern"], version="2.1")
        except Exception:
            raise InvalidInputError(f"indicator {obj['id']}: its pattern does not parse") from None
        valid_until = obj.get("valid_until")
        expired = valid_until is not None and as_utc(valid_until) < now
        origin = source or identities.get(obj.get("created_by_ref")) or "stix"
        first = as_utc(obj["valid_from"])
        last = as_utc(obj["modified"]) if obj.get("modified") else first
        kinds = obj.get("indicator_types") or ["malicious-activity"]
        for object_type, path, value in _equalities(pattern):
            kind = _stix_type(object_type, path)
            if kind is None:
                continue
            yield Indicator(
                indicator_type=kind,
                indicator_value=normalize(kind, value),
                threat_type=str(kinds[0])[:100],
                severity=_stix_severity(obj),
                source=str(origin)[:100],
                confidence=_confidence(obj.get("confidence", 50)),
                first_seen=first,
                last_seen=max(first, last),
                is_active=not (obj.get("revoked") or expired),
                metadata={"stix_id": obj["id"], **({"name": obj["name"]} if obj.get("name") else {})},
            )


def parse_file(name: str, text: str, source: str | None = None) -> list[Indicator]:
    """A STIX bundle (JSON) or a CSV, told apart by the content (a JSON object or not)."""
    if text.lstrip().startswith("{"):
        return list(parse_stix(text, source))
    if source is not None:
        raise InvalidInputError("--source applies to STIX bundles; a CSV names its source per row")
    return list(parse_csv(text))


# -- the table ----------------------------------------------------------------------------------------
def _merge(indicators: Iterable[Indicator]) -> dict[tuple[str, str, str], Indicator]:
    """One indicator per key (a feed may repeat one): the widest seen interval, the latest fields."""
    merged: dict[tuple[str, str, str], Indicator] = {}
    for item in indicators:
        known = merged.get(item.key)
        if known is not None:
            item.first_seen = min(item.first_seen, known.first_seen)
            item.last_seen = max(item.last_seen, known.last_seen)
        merged[item.key] = item
    return merged


def import_indicators(session: Session, indicators: Iterable[Indicator]) -> ImportResult:
    """Insert new indicators, update known ones (by type, value, source); idempotent.

    New keys go in with ``INSERT … ON CONFLICT DO NOTHING`` on ``uq_threat_indicator_source``
    (migration 0019), so an import racing another one never fails nor duplicates a row: a key the
    other import inserted first comes back as known and is merged like any known one.
    """
    merged = _merge(indicators)
    result = ImportResult(read=len(merged))
    keys = list(merged)
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        existing = _rows(session, chunk)
        fresh = [key for key in chunk if key not in existing]
        inserted = _insert_new(session, [merged[key] for key in fresh])
        result.inserted += len(inserted)
        lost = [key for key in fresh if key not in inserted]  # another import inserted them first
        if lost:
            existing.update(_rows(session, lost))
        for key in chunk:
            row = existing.get(key)
            if row is None:
                continue
            if _update(row, merged[key]):
                result.updated += 1
            else:
                result.unchanged += 1
        session.flush()
    return result


def _rows(
    session: Session, keys: list[tuple[str, str, str]]
) -> dict[tuple[str, str, str], ThreatIntelligence]:
    if not keys:
        return {}
    query = select(ThreatIntelligence).where(
        tuple_(
            ThreatIntelligence.indicator_type, ThreatIntelligence.indicator_value, ThreatIntelligence.source
        ).in_(keys)
    )
    return {(row.indicator_type, row.indicator_value, row.source): row for row in session.scalars(query)}


def _insert_new(session: Session, items: list[Indicator]) -> set[tuple[str, str, str]]:
    """Insert ``items`` skipping keys already present; the keys actually inserted."""
    if not items:
        return set()
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(ThreatIntelligence)
        .on_conflict_do_nothing(index_elements=["indicator_type", "indicator_value", "source"])
        .returning(
            ThreatIntelligence.indicator_type, ThreatIntelligence.indicator_value, ThreatIntelligence.source
        )
    )
    rows = [
        {
            "id": uuid.uuid4(),
            "indicator_type": item.indicator_type,
            "indicator_value": item.indicator_value,
            "threat_type": item.threat_type,
            "severity": item.severity,
            "source": item.source,
            "confidence": item.confidence,
            "first_seen": item.first_seen,
            "last_seen": item.last_seen,
            "is_active": item.is_active,
            "metadata_": item.metadata,
        }
        for item in items
    ]
    done = session.execute(statement, rows)
    return {(kind, value, source) for kind, value, source in done.all()}


def _update(row: ThreatIntelligence, item: Indicator) -> bool:
    """Merge a known indicator's new report into its row; True when something changed."""
    first = min(as_utc(row.first_seen), item.first_seen)
    last = max(as_utc(row.last_seen), item.last_seen) if item.dated else as_utc(row.last_seen)
    wanted = {
        "threat_type": item.threat_type,
        "severity": item.severity,
        "confidence": item.confidence,
        "first_seen": first,
        "last_seen": last,
        "is_active": item.is_active,
        "metadata_": {**(row.metadata_ or {}), **item.metadata},
    }
    changed = {k: v for k, v in wanted.items() if _differs(getattr(row, k), v)}
    for name, value in changed.items():
        setattr(row, name, value)
    return bool(changed)


def _differs(old: Any, new: Any) -> bool:
    if isinstance(old, datetime) and isinstance(new, datetime):
        return as_utc(old) != as_utc(new)
    if isinstance(new, Decimal) and old is not None:
        return Decimal(str(old)) != new
    return bool(old != new)


def expire(session: Session, older_than: timedelta, now: datetime | None = None) -> int:
    """Mark active indicators last seen before ``now - older_than`` inactive; how many."""
    cutoff = (now or utcnow()) - older_than
    outcome = session.execute(
        update(ThreatIntelligence)
        .where(ThreatIntelligence.is_active.is_(True), ThreatIntelligence.last_seen < cutoff)
        .values(is_active=False)
    )
    return int(getattr(outcome, "rowcount", 0) or 0)


def list_indicators(
    session: Session, indicator_type: str | None = None, include_inactive: bool = False, limit: int = 100
) -> list[dict[str, Any]]:
    query = select(ThreatIntelligence).order_by(ThreatIntelligence.last_seen.desc()).limit(limit)
    if indicator_type is not None:
        if indicator_type not in INDICATOR_TYPES:
            raise InvalidInputError(f"type '{indicator_type}' is not one of {', '.join(INDICATOR_TYPES)}")
        query = query.where(ThreatIntelligence.indicator_type == indicator_type)
    if not include_inactive:
        query = query.where(ThreatIntelligence.is_active.is_(True))
    return [
        {
            "indicator_type": r.indicator_type,
            "indicator_value": r.indicator_value,
            "threat_type": r.threat_type,
            "severity": r.severity,
            "source": r.source,
            "confidence": str(r.confidence),
            "first_seen": iso(r.first_seen),
            "last_seen": iso(r.last_seen),
            "is_active": bool(r.is_active),
        }
        for r in session.scalars(query)
    ]


def version(session: Session) -> tuple[int, int, Any]:
    """What changes when the table does: (rows, active rows, latest ``updated_at``); one cheap query."""
    total, active, latest = session.execute(
        select(
            func.count(),
            func.count().filter(ThreatIntelligence.is_active.is_(True)),
            func.max(ThreatIntelligence.updated_at),
        )
    ).one()
    return int(total), int(active), latest


def hash_listed(session: Session, digest: str) -> str | None:
    """``hash:<digest>`` when an active indicator lists the file hash, else None (one indexed query).

    For the places that see a file once (publishing weights, loading them into the VAMN server),
    where the table itself is asked rather than the service's in-memory index.
    """
    value = digest.strip().lower()
    found = session.scalar(
        select(ThreatIntelligence.indicator_value)
        .where(
            ThreatIntelligence.indicator_type == "hash",
            ThreatIntelligence.indicator_value == value,
            ThreatIntelligence.is_active.is_(True),
        )
        .limit(1)
    )
    return None if found is None else f"hash:{found}"


def refuse_listed_fab(engine: Engine, fab_hash: str | None, stage: str) -> None:
    """Raise ``ThreatListedError`` when a ``hash`` indicator lists the Flower App Bundle's SHA-256.

    ``stage`` says who refused (``submit``: ``run-local`` before ``flwr run``; ``serverapp``: the
    ServerApp before any node is asked anything). The refusal is audited (``threat.fab_refused``)
    in its own committed transaction, so the record outlives the failed run. A database without
    the table yet (a fresh ``run-local`` folder) lists nothing. One indexed query.
    """
    if not fab_hash or not inspect(engine).has_table(ThreatIntelligence.__tablename__):
        return
    with transaction(engine) as session:
        listed = hash_listed(session, fab_hash)
        if listed is None:
            return
        audit.append(
            session,
            organization_id=None,
            action="threat.fab_refused",
            resource_type="flower_app_bundle",
            data={"fab_hash": fab_hash.lower(), "indicator": listed, "stage": stage},
        )
    raise ThreatListedError(
        f"the Flower App Bundle {fab_hash.lower()} is listed in threat intelligence; "
        "not run: build it from a trusted checkout, or deactivate the indicator if it is wrong"
    )


def email_listed(session: Session, address: str) -> str | None:
    """``type:value`` of an active indicator listing ``address``: the whole address (``email``),
    its mail domain or a parent (``email`` ``@domain``), or that domain as a ``domain`` indicator
    (a mail address at a listed domain is no more trusted than the domain). None when none does.

    One indexed query (``idx_threat_indicator``), for the places that see an address once
    (creating a user, issuing a token); the request path uses ``ThreatIndex.match_email``.
    """
    value = address.strip().lower()
    if "@" not in value:
        return None
    domains = mail_domains(value)
    emails = [value, *(f"@{d}" for d in domains)]
    c = ThreatIntelligence
    rows = session.execute(
        select(c.indicator_type, c.indicator_value).where(
            c.is_active.is_(True),
            ((c.indicator_type == "email") & c.indicator_value.in_(emails))
            | ((c.indicator_type == "domain") & c.indicator_value.in_(domains)),
        )
    ).all()
    if not rows:
        return None
    wanted = [("email", e) for e in emails] + [("domain", d) for d in domains]
    kind, found = min(rows, key=lambda r: wanted.index((r[0], r[1])))  # the most specific
    return f"{kind}:{found}"


def refuse_listed_email(
    engine: Engine, address: str, what: str, organization_id: uuid.UUID | None = None
) -> None:
    """Raise ``ThreatListedError`` when threat intelligence lists ``address`` (``email_listed``).

    ``what`` names the refused action (``user.create``, ``token.issue``). The refusal is audited
    (``threat.email_refused``, with the indicator; the address itself stays out of the append-only
    log, as personal data) in its own committed transaction.
    """
    if not inspect(engine).has_table(ThreatIntelligence.__tablename__):
        return
    with transaction(engine) as session:
        listed = email_listed(session, address)
        if listed is None:
            return
        # A whole address is personal data: the log and the message name the kind of match only.
        shown = listed if listed.startswith(("domain:", "email:@")) else "email:<this address>"
        audit.append(
            session,
            organization_id=organization_id,
            action="threat.email_refused",
            resource_type="threat_intelligence",
            data={"refused": what, "indicator": shown},
        )
    raise ThreatListedError(
        f"the email address is listed in threat intelligence ({shown}); {what} refused: "
        "use another address, or deactivate the indicator if it is wrong"
    )
