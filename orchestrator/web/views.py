"""What each dashboard page shows, from the same view functions the admin API answers with.

``privacy.budget_views``, ``fl_server.run_views``, ``schema.registry_views`` and
``consent_gate.admin_views`` hold the queries (the API's and the CLI's numbers); this module only
applies the viewer's scope and gathers a page's pieces. ``scope`` is None for a platform admin
(every organization) or the one organization an org admin may see: every list is filtered by it,
and naming another organization raises ``PermissionDeniedError`` (a probe, which the route logs),
as the API's ``/v1/orgs/{org}/...`` routes do.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from consent_gate import admin_views
from fl_server import run_views
from privacy import budget_views
from privacy.ledger import LedgerPolicy
from schema import directory, registry_views
from schema.errors import PermissionDeniedError
from schema.pagination import MAX_LIMIT, Page

BUDGET_STATUSES = budget_views.BUDGET_STATUSES


def check_scope(scope: uuid.UUID | None, organization_id: uuid.UUID) -> None:
    """An org admin naming another organization is refused (403), like the API refuses it."""
    if scope is not None and scope != organization_id:
        raise PermissionDeniedError("forbidden")


def organization_id(session: Session, name_or_id: str) -> uuid.UUID:
    """The organization a filter names, by id or by (unique) name, as the CLI's ``--org`` takes it."""
    return directory.find_organization(session, name_or_id).id


def organization_choices(session: Session, scope: uuid.UUID | None) -> list[tuple[str, str]]:
    """(id, name) of the organizations the viewer may filter by, by name."""
    if scope is not None:
        return [(str(scope), directory.get_organization(session, scope).name)]
    return sorted(((str(o.id), o.name) for o in directory.list_organizations(session)), key=lambda p: p[1])


def budgets(
    session: Session,
    policy: LedgerPolicy,
    scope: uuid.UUID | None,
    *,
    organization_id: uuid.UUID | None,
    model_type: str | None,
    status: str | None,
    limit: int,
    offset: int,
) -> Page[budget_views.BudgetView]:
    if organization_id is not None:
        check_scope(scope, organization_id)
    return budget_views.list_budgets(
        session,
        policy=policy,
        organization_id=organization_id or scope,
        model_type=model_type,
        status=status,
        limit=limit,
        offset=offset,
    )


def budget(
    session: Session,
    policy: LedgerPolicy,
    scope: uuid.UUID | None,
    organization_id: uuid.UUID,
    model_type: str,
) -> budget_views.BudgetDetail:
    check_scope(scope, organization_id)
    return budget_views.budget_detail(session, organization_id, model_type, policy=policy)


def runs(session: Session, scope: uuid.UUID | None, *, limit: int, offset: int) -> Page[run_views.RunView]:
    return run_views.list_runs(session, organization_id=scope, limit=limit, offset=offset)


def run(session: Session, scope: uuid.UUID | None, name: str) -> run_views.RunDetail:
    return run_views.run_detail(session, name, organization_id=scope)


def registry_heads(
    session: Session, scope: uuid.UUID | None
) -> list[tuple[str, list[registry_views.RegistryVersion]]]:
    """Every version grouped by head (heads by name, versions newest first), contributors named."""
    page = registry_views.list_versions(session, organization_id=scope, limit=MAX_LIMIT)
    names = budget_views.organization_names(
        session, {o for v in page.items if v.lineage for o in v.lineage.contributing_organizations}
    )
    heads: dict[str, list[registry_views.RegistryVersion]] = {}
    for version in page.items:
        if version.lineage is not None:
            version.lineage.contributing_organizations = [
                names.get(o, o) for o in version.lineage.contributing_organizations
            ]
        heads.setdefault(version.head_type, []).append(version)
    return sorted(heads.items())


def rollback_targets(heads: list[tuple[str, list[registry_views.RegistryVersion]]]) -> dict[str, str]:
    """Per head with an active version and a retired one: the label of the newest retired version
    (what ``registry.rollback`` will most likely restore; the confirmation page asks anyway)."""
    targets: dict[str, str] = {}
    for head, versions in heads:
        if any(v.is_active for v in versions):
            retired = [v for v in versions if v.deployment_status == "retired"]
            if retired:
                targets[head] = f"{retired[0].model_name} {retired[0].model_version}"
    return targets


def consent(
    session: Session, scope: uuid.UUID | None, *, limit: int, offset: int
) -> tuple[Page[dict[str, Any]], list[str], Page[admin_views.DsrView], dict[str, str]]:
    """Consent counts of one page of organizations (by name), the consent types seen, requests
    (overdue first, then by deadline) and the names of the organizations."""
    choices = organization_choices(session, scope)
    window = choices[offset : offset + limit]
    rows: list[dict[str, Any]] = []
    types: set[str] = set()
    for org_id, name in window:
        counts = admin_views.consent_counts(session, org_id)
        by_type = {c.consent_type: c for c in counts.counts}
        types |= set(by_type)
        rows.append(
            {
                "organization_id": org_id,
                "organization": name,
                "users": counts.users_with_consents,
                "counts": by_type,
            }
        )
    organizations = Page[dict[str, Any]](items=rows, total=len(choices), limit=limit, offset=offset)
    requests = admin_views.list_dsrs(session, organization_id=scope, limit=MAX_LIMIT)
    return organizations, sorted(types), requests, dict(choices)


def alerts(
    session: Session, scope: uuid.UUID | None, *, limit: int, offset: int
) -> tuple[Page[budget_views.AlertView], dict[str, str]]:
    """Budget threshold crossings, newest first, and the names of their organizations."""
    page = budget_views.list_alerts(session, organization_id=scope, limit=limit, offset=offset)
    return page, budget_views.organization_names(session, {a.organization_id for a in page.items})
