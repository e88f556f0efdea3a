"""The VAMN head server: answers from the active registry model of a head, weights verified.

A head is *available* when ``vamn_model_registry`` has an active row for it and its weights file
in the content-addressed store hashes to the row's ``weights_checksum`` (the store refuses a
mismatch); otherwise the tier is skipped and the cascade falls through to the fallback.

Serving is deliberately small and deterministic (numpy only, no torch): the message's words are
hashed (SHA-256) into a bag-of-words vector of the first layer's input width, passed through the
model's linear layers (``<name>.weight``/``<name>.bias`` pairs in state-dict order, ReLU between
layers, as long as shapes chain), and the answer names the model and the top output class with
its softmax score. Tokens are counted as whitespace-separated words: input = words of the
message, output = words of the answer.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from aggregation.weights_store import WeightsIntegrityError, WeightsStore
from orchestrator.security import threat_intel
from schema.models import VamnModelRegistry
from schema.registry import active_for_head


def count_tokens(text: str) -> int:
    return len(text.split())


@dataclass(frozen=True)
class HeadModel:
    head_type: str
    model_name: str
    model_version: str
    checksum: str
    layers: tuple[tuple[np.ndarray, np.ndarray | None], ...]

    @property
    def model_id(self) -> str:
        return f"vamn-{self.head_type}:{self.model_name}@{self.model_version}"

    def features(self, message: str) -> np.ndarray:
        width = self.layers[0][0].shape[1]
        vector = np.zeros(width, dtype=np.float64)
        for word in message.lower().split():
            index = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "big") % width
            vector[index] += 1.0
        norm = np.linalg.norm(vector)
        return vector / norm if norm > 0 else vector

    def answer(self, message: str) -> str:
        hidden = self.features(message)
        for position, (weight, bias) in enumerate(self.layers):
            hidden = weight.astype(np.float64) @ hidden
            if bias is not None:
                hidden = hidden + bias.astype(np.float64)
            if position < len(self.layers) - 1:
                hidden = np.maximum(hidden, 0.0)
        shifted = np.exp(hidden - hidden.max())
        scores = shifted / shifted.sum()
        top = int(np.argmax(scores))
        return f"VAMN {self.head_type} head ({self.model_name} {self.model_version}): class {top} score {scores[top]:.4f}"


def _layers(arrays: dict[str, np.ndarray]) -> tuple[tuple[np.ndarray, np.ndarray | None], ...]:
    layers: list[tuple[np.ndarray, np.ndarray | None]] = []
    for name, weight in arrays.items():
        if not name.endswith("weight") or weight.ndim != 2:
            continue
        if layers and layers[-1][0].shape[0] != weight.shape[1]:
            break
        bias = arrays.get(name[: -len("weight")] + "bias")
        layers.append((weight, bias if bias is not None and bias.shape == (weight.shape[0],) else None))
    return tuple(layers)


class VamnServer:
    """Loads, verifies and caches the active model of each head (cache keyed by checksum)."""

    def __init__(self, store: WeightsStore, registry_ttl_s: float = 5.0) -> None:
        self.store = store
        self.registry_ttl_s = registry_ttl_s
        self._models: dict[str, HeadModel] = {}
        self._active: dict[str, tuple[float, VamnModelRegistry | None]] = {}
        #: Checksums refused because threat intelligence lists them, and when (re-asked after the TTL).
        self._refused: dict[str, float] = {}
        self._lock = threading.Lock()

    def _active_row(self, session: Session, head_type: str) -> VamnModelRegistry | None:
        cached = self._active.get(head_type)
        if cached is not None and time.monotonic() - cached[0] < self.registry_ttl_s:
            return cached[1]
        row = active_for_head(session, head_type)
        if row is not None:
            session.expunge(row)
        self._active[head_type] = (time.monotonic(), row)
        return row

    def forget(self, head_type: str | None = None) -> None:
        """Drop the cached active row of ``head_type`` (every head with None): the next request
        reads the registry again. A promotion or rollback in this process calls it, so the new
        version serves at once; other processes see it within ``registry_ttl_s``."""
        if head_type is None:
            self._active.clear()
        else:
            self._active.pop(head_type, None)

    def model_for(self, session: Session, head_type: str) -> HeadModel | None:
        """The servable model of the head, or None (no active model, bad weights, no linear layer)."""
        row = self._active_row(session, head_type)
        if row is None:
            return None
        model = self._models.get(row.weights_checksum)
        if model is not None:
            return model
        # First load of these weights: refused when threat intelligence lists their hash.
        refused_at = self._refused.get(row.weights_checksum)
        if refused_at is not None and time.monotonic() - refused_at < self.registry_ttl_s:
            return None
        if threat_intel.hash_listed(session, row.weights_checksum) is not None:
            self._refused[row.weights_checksum] = time.monotonic()
            return None
        try:
            arrays = self.store.get(row.weights_checksum)
        except WeightsIntegrityError:
            return None
        layers = _layers(arrays)
        if not layers:
            return None
        model = HeadModel(head_type, row.model_name, row.model_version, row.weights_checksum, layers)
        with self._lock:
            self._models[row.weights_checksum] = model
        return model
