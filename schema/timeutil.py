"""Time in one convention: aware UTC datetimes in, ISO-8601 with offset out.

SQLite returns naive datetimes for TIMESTAMPTZ columns (it stores UTC text); PostgreSQL returns
aware ones. Everything we print goes through ``iso`` so both backends look the same.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    """Fixed width (always microseconds), so that two stamps compare as strings as they do as times."""
    return None if value is None else as_utc(value).isoformat(timespec="microseconds")
