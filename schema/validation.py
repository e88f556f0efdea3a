"""Edge validation helpers shared by the CLI and the HTTP service: parse, or raise one clear line."""

from __future__ import annotations

import re
import uuid

from schema.errors import InvalidInputError

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def parse_uuid(value: str | uuid.UUID, what: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value).strip())
    except ValueError:
        raise InvalidInputError(
            f"{what} '{value}' is not a UUID; copy the id printed by the list command"
        ) from None


def clean_name(value: str, what: str, max_length: int = 255) -> str:
    name = value.strip()
    if not name:
        raise InvalidInputError(f"{what} is empty; give a non-empty name")
    if len(name) > max_length:
        raise InvalidInputError(f"{what} is {len(name)} characters long; the limit is {max_length}")
    if _CONTROL.search(name):
        raise InvalidInputError(f"{what} contains control characters; use printable text")
    return name


def clean_email(value: str) -> str:
    email = value.strip().lower()
    if len(email) > 320 or not _EMAIL.match(email):
        raise InvalidInputError(f"'{value}' is not an email address; use the form name@example.com")
    return email


def one_of(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InvalidInputError(f"{what} '{value}' is not allowed; use one of: {', '.join(allowed)}")
    return value
