"""The model types by name: the one table the server and the tenant nodes both read."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from fl_client.tasks.accounting import COMPLIANCE_CHECKS, DOCUMENT_TEMPLATES, TIME_ESTIMATION
from fl_client.tasks.digits import DIGITS
from fl_client.tasks.spec import TaskSpec
from schema.errors import InvalidInputError

TASKS: Mapping[str, TaskSpec] = MappingProxyType(
    {spec.name: spec for spec in (TIME_ESTIMATION, DOCUMENT_TEMPLATES, COMPLIANCE_CHECKS, DIGITS)}
)


def task_names() -> tuple[str, ...]:
    """Every registered model type, in registration order."""
    return tuple(TASKS)


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The model type called `name` (a spec passes through, so callers may accept either)."""
    if isinstance(name, TaskSpec):
        return name
    try:
        return TASKS[name]
    except KeyError:
        raise InvalidInputError(f"unknown model type {name!r}; known: {', '.join(TASKS)}") from None
