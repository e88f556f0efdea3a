"""Content-addressed store of published model weights (invariant 4).

A model is stored as one safetensors file named by the SHA-256 of its bytes. Publishing is
idempotent (same weights, same file) and atomic (write to a temporary file, then rename), and
every load re-hashes the file and refuses a mismatch, so a registry row's ``weights_checksum``
always names exactly the weights that are served.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from aggregation.errors import AggregationError

_CHECKSUM = re.compile(r"^[0-9a-f]{64}$")
SUFFIX = ".safetensors"


class WeightsIntegrityError(AggregationError):
    """A stored weights file is missing, misnamed, or its bytes no longer hash to its name."""


def serialize(arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Safetensors bytes of the arrays; deterministic for equal arrays and metadata."""
    contiguous = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    return save_safetensors(contiguous, metadata=metadata)


def checksum_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable: the round that names the file commits after this."""
    descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class WeightsStore:
    """A folder of ``<sha256>.safetensors`` files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, checksum: str) -> Path:
        if not _CHECKSUM.match(checksum):
            raise WeightsIntegrityError(f"'{checksum}' is not a SHA-256 hex digest")
        return self.root / f"{checksum}{SUFFIX}"

    def put(self, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> str:
        """Store the arrays; return the checksum that names them."""
        data = serialize(arrays, metadata)
        checksum = checksum_of(data)
        target = self.path(checksum)
        if target.exists() and checksum_of(target.read_bytes()) == checksum:
            return checksum
        self.root.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.root, prefix=".incoming-", suffix=SUFFIX)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _fsync_directory(self.root)
        return checksum

    def get(self, checksum: str) -> dict[str, np.ndarray]:
        """Load the arrays named by ``checksum``, refusing a file whose bytes do not match it."""
        target = self.path(checksum)
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            raise WeightsIntegrityError(f"no weights file {target.name} in {self.root}") from None
        actual = checksum_of(data)
        if actual != checksum:
            raise WeightsIntegrityError(
                f"weights file {target.name} hashes to {actual[:12]}…, not its name; refusing to load it"
            )
        return dict(load_safetensors(data))
