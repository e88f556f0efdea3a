"""Answering the zero-trust ``mfa`` challenge with a TOTP code, against `accute-fl serve` on
loopback (SQLite and PostgreSQL): enrolment by CLI, a right code lets the request through once,
a replayed or wrong one is refused and counts toward ``credential_stuffing`` for its address."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from sqlalchemy import select

from schema import directory
from schema.db import transaction
from schema.models import SecurityAnomaly, UserMfa, ZeroTrustAccessLog
from tests.conftest import BACKENDS
from tests.orchestrator.security.servers import Cluster, cluster, database

pytestmark = [pytest.mark.slow]
HEADER = "X-Accute-Challenge-Response"


@pytest.fixture(scope="module", params=BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("mfa")
    policy = tmp / "anomaly.toml"
    policy.write_text("[credential_stuffing]\nthreshold = 5\nwindow_s = 60\n")
    with (
        database(request.param, tmp) as url,
        cluster(
            url,
            tmp,
            security_context_refresh_s="0.2",
            anomaly_policy_file=str(policy),
        ) as running,
    ):
        yield running


def _eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def _challenged_user(served: Cluster) -> uuid.UUID:
    """A user with an unresolved critical anomaly: trust 40, so every request is challenged."""
    with transaction(served.engine) as session:
        user = directory.create_user(session, served.org, f"u{uuid.uuid4().hex[:6]}@mfa.example").id
        session.add(
            SecurityAnomaly(
                organization_id=served.org,
                user_id=user,
                anomaly_type="behavioral_mismatch",
                severity="critical",
                details={"why": "test"},
            )
        )
    return user


def _get(client: httpx.Client, served: Cluster, token: str, **headers: str) -> httpx.Response:
    return client.get(f"/v1/orgs/{served.org}/usage", headers={"Authorization": f"Bearer {token}", **headers})


def _code(secret: str) -> str:
    return TOTP(base64.b32decode(secret), 6, SHA1(), 30).generate(time.time()).decode()


def _log(served: Cluster, user: uuid.UUID) -> list[tuple[str, bool | None]]:
    with transaction(served.engine) as session:
        rows = session.execute(
            select(ZeroTrustAccessLog.access_decision, ZeroTrustAccessLog.challenge_passed)
            .where(ZeroTrustAccessLog.user_id == user)
            .order_by(ZeroTrustAccessLog.created_at)
        ).all()
    return [(decision, passed) for decision, passed in rows]


def test_enrolment_prints_the_secret_once_and_keeps_it_sealed(served: Cluster) -> None:
    # Prepare
    user = _challenged_user(served)

    # Execute
    enrolled = served.cli("user", "mfa", "enroll", "--user", str(user), "--json")
    again = served.cli("user", "mfa", "enroll", "--user", str(user), "--json")
    status = served.cli("user", "mfa", "status", "--user", str(user), "--json")

    # Assert: shown once (a second enrolment is a conflict, exit 4); the status never shows it.
    assert enrolled.returncode == 0, enrolled.stderr
    secret = json.loads(enrolled.stdout)["secret"]
    assert json.loads(enrolled.stdout)["otpauth_uri"].startswith("otpauth://totp/")
    assert again.returncode == 4 and secret not in again.stdout + again.stderr
    assert json.loads(status.stdout) == {"user_id": str(user), "enrolled": True}
    with transaction(served.engine) as session:
        row = session.get(UserMfa, user)
        assert row is not None and secret not in row.secret_sealed


def test_a_right_code_passes_the_challenge_once_and_is_logged(served: Cluster) -> None:
    # Prepare
    user = _challenged_user(served)
    secret = json.loads(served.cli("user", "mfa", "enroll", "--user", str(user), "--json").stdout)["secret"]
    token = served.token("org_admin", subject=str(user))
    with served.client("127.0.0.31") as client:
        assert _eventually(lambda: _get(client, served, token).status_code == 401), "never challenged"

        # Execute
        plain = _get(client, served, token)
        code = _code(secret)
        answered = _get(client, served, token, **{HEADER: f"totp={code}"})
        replayed = _get(client, served, token, **{HEADER: f"totp={code}"})
        stepped_up = _get(client, served, token)
        other_token = _get(client, served, served.token("org_admin", subject=str(user), ttl_s=1234))

    # Assert: passed once; the replay refused; the token (only it) stepped up for a while.
    assert plain.status_code == 401 and plain.json() == {"error": "challenge_required"}
    assert 'challenge="mfa"' in plain.headers["www-authenticate"]
    assert answered.status_code == 200, answered.text
    assert replayed.status_code == 401 and replayed.json() == {"error": "challenge_failed"}
    assert stepped_up.status_code == 200, stepped_up.text
    assert other_token.status_code == 401 and other_token.json() == {"error": "challenge_required"}

    def stepped_up_rows() -> list[dict[str, Any]]:
        with transaction(served.engine) as session:
            factors = session.scalars(
                select(ZeroTrustAccessLog.factors_evaluated).where(
                    ZeroTrustAccessLog.user_id == user, ZeroTrustAccessLog.challenge_passed.is_(True)
                )
            ).all()
        return [f for f in factors if f.get("step_up")]

    assert _eventually(stepped_up_rows), "the stepped-up request is not in the access log"
    log = _eventually(lambda: (rows := _log(served, user)) and ("challenge", False) in rows and rows)
    assert ("challenge", True) in log and ("challenge", None) in log, log


def test_wrong_codes_count_toward_credential_stuffing_for_that_address_only(served: Cluster) -> None:
    # Prepare: the policy here blocks an address after 5 failures a minute.
    user = _challenged_user(served)
    secret = json.loads(served.cli("user", "mfa", "enroll", "--user", str(user), "--json").stdout)["secret"]
    token = served.token("org_admin", subject=str(user))
    wrong = f"{(int(_code(secret)) + 500_000) % 1_000_000:06d}"
    statuses: list[int] = []

    # Execute: wrong codes from one address, then a plain request from another.
    with served.client("127.0.0.32") as client:
        assert _eventually(lambda: _get(client, served, token).status_code == 401), "never challenged"
        for _ in range(7):
            statuses.append(_get(client, served, token, **{HEADER: f"totp={wrong}"}).status_code)
    with served.client("127.0.0.33") as other:
        elsewhere = _get(other, served, token)

    # Assert: 401 until the fifth failure, then the address is refused; the other is still asked.
    assert statuses[:5] == [401] * 5 and statuses[5:] == [403, 403], statuses
    assert elsewhere.status_code == 401
    with transaction(served.engine) as session:
        rows = session.scalars(
            select(SecurityAnomaly).where(SecurityAnomaly.anomaly_type == "credential_stuffing")
        )
        assert any(r.details.get("address") == "127.0.0.32" and r.auto_blocked for r in rows)
