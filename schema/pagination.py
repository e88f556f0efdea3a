"""One page of a sorted list: the items, the total before slicing, and the window asked for.

Every admin list (budgets, runs, contributions, registry versions, requests) answers with a
``Page``; the HTTP layer and the dashboard show ``total`` so a reader knows what is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from pydantic import BaseModel

from schema.errors import InvalidInputError

T = TypeVar("T")

#: The largest page any list answers (a bigger ``limit`` is refused, not silently cut).
MAX_LIMIT = 1000


class Page(BaseModel, Generic[T]):
    """``items`` are ``total`` rows' ``[offset, offset + limit)`` window, in the list's order."""

    items: list[T]
    total: int
    limit: int
    offset: int


def check_window(limit: int, offset: int) -> tuple[int, int]:
    """A valid (limit, offset): 1 <= limit <= MAX_LIMIT, offset >= 0."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    if offset < 0:
        raise InvalidInputError(f"offset must be >= 0, not {offset}")
    return limit, offset


def page_of(rows: Sequence[T], limit: int, offset: int) -> Page[T]:
    """The window of an already sorted, already filtered list."""
    limit, offset = check_window(limit, offset)
    return Page[T](items=list(rows[offset : offset + limit]), total=len(rows), limit=limit, offset=offset)
