"""A resumed run whose nodes came back with new ids (a restarted SuperLink or SuperNode) takes them.

Flower gives a node a new id when it registers again; the organization it speaks for was bound to
the old id by the interrupted attempt. Without a takeover every tenant was skipped as "already
spoken for" and the resumed run could not train.
"""

from __future__ import annotations

import pytest
from flwr.app import Context, RecordDict
from sqlalchemy import select

from fl_server.strategy import RoundRecord
from schema.db import transaction
from schema.models import FlNodeBinding, FlRoundOutcome, ImmutableAuditLog
from tests.fl_server.conftest import Federation


class Crash(Exception):
    pass


def _renumber(fed: Federation, new_ids: dict[int, int]) -> None:
    """The grid now knows the nodes under new ids (the old ids are gone)."""
    for old, new in new_ids.items():
        context = fed.grid.contexts.pop(old)
        fed.grid.contexts[new] = Context(
            run_id=1, node_id=new, node_config=dict(context.node_config), state=RecordDict(), run_config={}
        )


def test_a_resumed_run_rebinds_organizations_to_their_new_nodes_once(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare: round 1 of 2 commits, then the server dies; the nodes come back as 2000 and 2001,
    # and a third node (2002) also names tenant-0's organization.
    fed = make_federation(tenants=2)
    config = fed.config(rounds=2)

    def crash(record: RoundRecord) -> None:
        raise Crash

    with pytest.raises(Crash):
        fed.run(config, on_round=crash)
    _renumber(fed, {fed.node_of(0): 2000, fed.node_of(1): 2001})
    twin = dict(fed.grid.contexts[2000].node_config)
    fed.grid.contexts[2002] = Context(
        run_id=1, node_id=2002, node_config=twin, state=RecordDict(), run_config={}
    )

    # Execute
    strategy = fed.strategy(config)
    from aggregation.flwr_adapter import record_from_arrays
    from fl_client.tasks import get_task

    initial = {k: v.numpy() for k, v in get_task("digits").initial_state(config.seed).items()}
    result = strategy.start(fed.grid, record_from_arrays(initial))

    # Assert: round 2 trained both tenants through their new nodes; one of the twins was skipped.
    assert result.last_round == 2
    with transaction(fed.engine) as session:
        round_2 = {
            o.tenant: o.status for o in session.scalars(select(FlRoundOutcome)) if o.aggregation_round == 2
        }
        bound = {b.tenant: b.node_id for b in session.scalars(select(FlNodeBinding))}
        rebound = [
            a.action_data for a in session.scalars(select(ImmutableAuditLog)) if a.action == "fl.node_rebound"
        ]
    assert round_2 == {"tenant-0": "accepted", "tenant-1": "accepted"}
    assert bound["tenant-1"] == "2001" and bound["tenant-0"] in ("2000", "2002")
    assert len(rebound) == 2
    assert len(strategy.skipped_nodes) == 1
    (skipped,) = strategy.skipped_nodes
    assert skipped in (2000, 2002) and str(skipped) != bound["tenant-0"]
    assert "already speaks for" in strategy.skipped_nodes[skipped]
