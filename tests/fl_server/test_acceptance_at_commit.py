"""An accepted reply is written with its round's commit; a refusal is written when it is decided.

Accepted updates count only in a committed round, so their rows, snapshot uses, audit records and
hub events are written in the transaction that commits the round (the last reply of a round no
longer waits for a commit of its own). A rejection is evidence about a tenant (an outlier, a
withdrawal) and is committed at once, whether the round later commits or not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
from flwr.app import Message
from sqlalchemy import func, select

from fl_server.governance import ABORTED, ACCEPTED, DISPATCHED, REJECTED_CONSENT_CHANGED, Governor
from schema import audit
from schema.db import transaction
from schema.errors import ConflictError
from schema.models import ConsentSnapshotUse, FederatedLearningContribution, HubOutbox, ImmutableAuditLog
from tests.fl_server.conftest import Federation
from tests.fl_server.test_admission import withdraw_all
from tests.fl_server.test_charge_before_release import statuses

MakeFederation = Callable[..., Federation]


def written(fed: Federation) -> dict[str, int]:
    """What the acceptances write, counted: snapshot uses, acceptance audit records and hub events."""
    with transaction(fed.engine) as session:
        return {
            "uses": session.scalar(select(func.count()).select_from(ConsentSnapshotUse)) or 0,
            "audited": session.scalar(
                select(func.count())
                .select_from(ImmutableAuditLog)
                .where(ImmutableAuditLog.action == "fl.contribution_accepted")
            )
            or 0,
            "announced": session.scalar(
                select(func.count())
                .select_from(HubOutbox)
                .where(HubOutbox.event_type == "accute.fl.contribution.accepted")
            )
            or 0,
        }


def watch_commits(monkeypatch: pytest.MonkeyPatch, fed: Federation) -> list[dict[str, Any]]:
    """Statuses and counts as each ``commit_round`` starts (what the judgements wrote alone)."""
    seen: list[dict[str, Any]] = []
    commit = Governor.commit_round

    def observed(self: Governor, server_round: int, **kwargs: Any) -> None:
        seen.append({"round": server_round, "statuses": statuses(fed), **written(fed)})
        commit(self, server_round, **kwargs)

    monkeypatch.setattr(Governor, "commit_round", observed)
    return seen


def test_an_accepted_reply_is_written_by_the_rounds_commit(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    fed = make_federation()
    before_commit = watch_commits(monkeypatch, fed)

    # Execute
    result = fed.run(fed.config(rounds=1))

    # Assert: judged accepted, yet nothing of it written until the commit; then all of it, with
    # each contribution's checksum and share, and every audit chain intact.
    assert set(result.rounds[0].statuses.values()) == {ACCEPTED}
    [seen] = before_commit
    assert set(seen["statuses"].values()) == {DISPATCHED}
    assert (seen["uses"], seen["audited"], seen["announced"]) == (0, 0, 0)
    assert set(statuses(fed).values()) == {ACCEPTED}
    assert written(fed) == {"uses": 3, "audited": 3, "announced": 3}
    with transaction(fed.engine) as session:
        rows = list(session.scalars(select(FederatedLearningContribution)))
        assert {r.status for r in rows} == {ACCEPTED}
        assert all(len(r.gradient_checksum) == 64 for r in rows)
        assert sum(r.contribution_weight for r in rows) == pytest.approx(1, abs=1e-5)
        assert all(report.ok for report in audit.verify(session))


def test_a_rejection_is_committed_before_the_round_is(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: tenant-1's users withdraw once the train messages left (their nodes trained on
    # the snapshot), so its reply is rejected on arrival.
    fed = make_federation()
    push = fed.grid.push_messages

    def pushed(messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(push(messages))
        if any(m.metadata.message_type.startswith("train") for m in messages):
            withdraw_all(fed, 1)
        return ids

    fed.grid.push_messages = pushed  # type: ignore[method-assign]
    before_commit = watch_commits(monkeypatch, fed)

    # Execute
    fed.run(fed.config(rounds=1))

    # Assert: the refusal was in the database before the round's commit began; the acceptances not.
    [seen] = before_commit
    assert seen["statuses"][(1, "tenant-1")] == REJECTED_CONSENT_CHANGED
    assert seen["statuses"][(1, "tenant-0")] == seen["statuses"][(1, "tenant-2")] == DISPATCHED
    assert statuses(fed)[(1, "tenant-0")] == ACCEPTED
    assert written(fed)["uses"] == 2


def test_a_round_that_never_commits_writes_no_acceptance_and_is_aborted_on_resume(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: round 1's commit fails (not a transient error: the run stops).
    fed = make_federation()
    config = fed.config(rounds=1)
    commit = Governor.commit_round

    def refused(self: Governor, server_round: int, **kwargs: Any) -> None:
        raise ConflictError("the lease was lost (test)")

    monkeypatch.setattr(Governor, "commit_round", refused)
    with pytest.raises(ConflictError):
        fed.run(config)
    left = statuses(fed)
    monkeypatch.setattr(Governor, "commit_round", commit)

    # Execute: the same run resumed.
    result = fed.run(config)

    # Assert: the failed attempt wrote no acceptance (its rows stayed dispatched, then aborted on
    # resume); the resumed attempt's acceptances were written once, by its commit.
    assert set(left.values()) == {DISPATCHED}
    assert result.last_round == 1
    with transaction(fed.engine) as session:
        rows = session.execute(select(FederatedLearningContribution.status)).scalars().all()
        assert sorted(rows) == sorted([ABORTED] * 3 + [ACCEPTED] * 3)
        uses = session.scalars(select(ConsentSnapshotUse)).all()
        assert len(uses) == 3 and len({u.organization_id for u in uses}) == 3
        assert all(report.ok for report in audit.verify(session))
