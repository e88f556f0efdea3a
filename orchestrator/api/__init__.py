"""The HTTP API, one router per resource.

Each module named in ``ROUTER_MODULES`` has ``build(services, guard) -> APIRouter``; ``create_app``
includes them in this order. Routes call domain functions (privacy, fl_server, consent_gate, schema)
and never write SQL themselves.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from orchestrator.api.deps import Guard
    from orchestrator.service import Services

#: Router modules, included in this order (the chat route is added by ``create_app`` and goes first).
ROUTER_MODULES: tuple[str, ...] = (
    "orchestrator.api.admin_budgets",
    "orchestrator.api.admin_runs",
    "orchestrator.api.admin_registry",
    "orchestrator.api.admin_consent",
    "orchestrator.api.admin_audit",
    "orchestrator.api.security_anomalies",
    "orchestrator.api.biometrics",
    "orchestrator.api.dead_man_switch",
    "orchestrator.api.admin_web",
)


def include_routers(app: FastAPI, services: Services, guard: Guard) -> None:
    for name in ROUTER_MODULES:
        module = importlib.import_module(name)
        app.include_router(module.build(services, guard))
