"""The content-addressed weights store names files by their SHA-256 and refuses tampered ones."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from aggregation.weights_store import WeightsIntegrityError, WeightsStore


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layer.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "layer.bias": np.zeros(4, np.float32),
    }


def test_put_names_the_file_by_the_sha256_of_its_bytes(tmp_path: Path) -> None:
    store = WeightsStore(tmp_path)
    checksum = store.put(_arrays())
    data = store.path(checksum).read_bytes()
    assert hashlib.sha256(data).hexdigest() == checksum
    loaded = store.get(checksum)
    assert set(loaded) == {"layer.weight", "layer.bias"}
    np.testing.assert_array_equal(loaded["layer.weight"], _arrays()["layer.weight"])


def test_put_is_idempotent_and_content_sensitive(tmp_path: Path) -> None:
    store = WeightsStore(tmp_path)
    assert store.put(_arrays(0)) == store.put(_arrays(0))
    assert store.put(_arrays(0)) != store.put(_arrays(1))
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    assert not list(tmp_path.glob(".incoming-*"))


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    store = WeightsStore(tmp_path)
    checksum = store.put(_arrays())
    path = store.path(checksum)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="refusing"):
        store.get(checksum)


def test_missing_or_malformed_checksum_is_refused(tmp_path: Path) -> None:
    store = WeightsStore(tmp_path)
    with pytest.raises(WeightsIntegrityError):
        store.get("0" * 64)
    with pytest.raises(WeightsIntegrityError):
        store.get("../../etc/passwd")


def test_put_syncs_the_file_and_then_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: note what each fsync is of (the OS call is observed, not replaced).
    synced: list[str] = []
    real_fsync = os.fsync

    def observed_fsync(descriptor: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", observed_fsync)
    store = WeightsStore(tmp_path / "weights")

    # Execute
    store.put(_arrays())

    # Assert: the data first (under its temporary name), then the folder holding the rename.
    assert len(synced) == 2
    assert Path(synced[0]).name.startswith(".incoming-")
    assert synced[1] == str(tmp_path / "weights")
