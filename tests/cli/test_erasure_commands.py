"""`accute-fl dsr process` for access and erasure: the stores, the shredded key, a verifying chain."""

from __future__ import annotations

from tests.cli.conftest import Runner
from tests.cli.test_consent_commands import setup_tenant


def test_access_lists_stores_and_erasure_reports_them_then_verify_passes(
    ready_cli: Runner, database_url: str
) -> None:
    # Prepare: users created through the CLI (their addresses sealed in the audit log).
    tenant = setup_tenant(ready_cli, "Shred", users=2)
    user = tenant["users"][0]
    access = ready_cli(
        "dsr", "file", "--org", tenant["id"], "--user", user, "--type", "access", "--json"
    ).json()
    listed = ready_cli("dsr", "process", access["id"], "--json").json()["response_details"]["export"][
        "stores"
    ]
    erase = ready_cli(
        "dsr", "file", "--org", tenant["id"], "--user", user, "--type", "erasure", "--json"
    ).json()

    # Execute
    erased = ready_cli("dsr", "process", erase["id"], "--json")
    chains = ready_cli("audit", "verify", "--json")
    again = ready_cli("dsr", "compact", "--json")

    # Assert
    keys = next(entry for entry in listed if entry["store"] == "personal_data_keys")
    audit_entry = next(entry for entry in listed if entry["store"] == "immutable_audit_log")
    assert keys["state"] == "active" and audit_entry["sealed_values"] == 1
    assert erased.code == 0, erased.err
    record = erased.json()
    stores = record["response_details"]["erased"]["stores"]
    assert [entry["store"] for entry in listed] == list(stores)
    assert stores["personal_data_keys"] == {"action": "shredded", "rows": 1}
    assert record["compaction"]["status"] == "vacuumed"
    assert ("users" in record["compaction"]["tables"]) == database_url.startswith("postgresql")
    assert chains.code == 0 and all(chain["ok"] for chain in chains.json())
    assert again.code == 0 and again.json()["status"] == "vacuumed"


def test_an_erasure_may_leave_compaction_to_dsr_compact(ready_cli: Runner, database_url: str) -> None:
    # Prepare
    tenant = setup_tenant(ready_cli, "Deferred", users=1)
    erase = ready_cli(
        "dsr", "file", "--org", tenant["id"], "--user", tenant["users"][0], "--type", "erasure", "--json"
    ).json()

    # Execute
    erased = ready_cli("dsr", "process", erase["id"], "--no-compact", "--json")
    compacted = ready_cli("dsr", "compact", "--json")

    # Assert
    assert erased.code == 0 and erased.json()["status"] == "completed"
    assert erased.json()["compaction"]["status"] == "deferred"
    assert compacted.code == 0 and compacted.json()["status"] == "vacuumed"
    assert ("personal_data_keys" in compacted.json()["tables"]) == database_url.startswith("postgresql")
