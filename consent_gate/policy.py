"""Which consent types a model type needs: pure policy, no database.

Default: ``federated_learning`` and ``ai_training`` for any federated training, plus
``vamn_contribution`` when the model feeds VAMN; every built-in model type does.

Configurable from a dict or a TOML file of the same shape::

    base = ["federated_learning", "ai_training"]   # every model type
    vamn = ["vamn_contribution"]                   # model types that feed VAMN
    [model_types.digits]
    feeds_vamn = true
    extra = ["document_scanning"]                  # this model type only

API:
    ConsentPolicy.default() -> ConsentPolicy
    ConsentPolicy.from_dict(data: Mapping[str, Any]) -> ConsentPolicy
    ConsentPolicy.from_toml(path: str | Path) -> ConsentPolicy
    policy.required_consents(model_type: str) -> tuple[str, ...]   # sorted; InvalidInputError if unknown
    policy.training_consents() -> tuple[str, ...]                  # union over every model type
    policy.as_dict() -> dict[str, Any]
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from schema.errors import ConfigurationError, InvalidInputError
from schema.validation import one_of
from schema.vocab import CONSENT_TYPES, CONTRIBUTION_TYPES

#: The model types the product trains out of the box; all of them feed a VAMN head.
BUILT_IN_MODEL_TYPES: tuple[str, ...] = (*CONTRIBUTION_TYPES, "digits")

DEFAULT_BASE_CONSENTS: tuple[str, ...] = ("federated_learning", "ai_training")
DEFAULT_VAMN_CONSENTS: tuple[str, ...] = ("vamn_contribution",)


@dataclass(frozen=True)
class ModelTypeRule:
    """How one model type is treated: whether it feeds VAMN and which consents it adds."""

    feeds_vamn: bool = True
    extra: tuple[str, ...] = ()


def _consent_list(values: Iterable[Any], where: str) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ConfigurationError(f"consent policy: {where} must be a list of consent types")
    try:
        return tuple(sorted({one_of(str(v), CONSENT_TYPES, f"consent policy: {where}") for v in values}))
    except InvalidInputError as exc:
        raise ConfigurationError(str(exc)) from None


@dataclass(frozen=True)
class ConsentPolicy:
    base: tuple[str, ...] = DEFAULT_BASE_CONSENTS
    vamn: tuple[str, ...] = DEFAULT_VAMN_CONSENTS
    model_types: Mapping[str, ModelTypeRule] = field(
        default_factory=lambda: MappingProxyType({name: ModelTypeRule() for name in BUILT_IN_MODEL_TYPES})
    )

    @classmethod
    def default(cls) -> ConsentPolicy:
        return cls()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConsentPolicy:
        """Build a policy; keys left out keep their defaults. Bad values raise ConfigurationError."""
        unknown = set(data) - {"base", "vamn", "model_types"}
        if unknown:
            raise ConfigurationError(
                f"consent policy: unknown key(s) {', '.join(sorted(unknown))}; use base, vamn, model_types"
            )
        base = _consent_list(data.get("base", DEFAULT_BASE_CONSENTS), "base")
        if not base:
            raise ConfigurationError("consent policy: base must name at least one consent type")
        vamn = _consent_list(data.get("vamn", DEFAULT_VAMN_CONSENTS), "vamn")
        rules = dict(cls().model_types)
        raw_types = data.get("model_types", {})
        if not isinstance(raw_types, Mapping):
            raise ConfigurationError("consent policy: model_types must be a table of model types")
        for name, raw in raw_types.items():
            if not isinstance(raw, Mapping) or set(raw) - {"feeds_vamn", "extra"}:
                raise ConfigurationError(
                    f"consent policy: model_types.{name} takes feeds_vamn (true/false) and extra (a list)"
                )
            feeds = raw.get("feeds_vamn", True)
            if not isinstance(feeds, bool):
                raise ConfigurationError(
                    f"consent policy: model_types.{name}.feeds_vamn must be true or false"
                )
            extra = _consent_list(raw.get("extra", ()), f"model_types.{name}.extra")
            rules[str(name)] = ModelTypeRule(feeds_vamn=feeds, extra=extra)
        return cls(base=base, vamn=vamn, model_types=MappingProxyType(rules))

    @classmethod
    def from_toml(cls, path: str | Path) -> ConsentPolicy:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationError(f"cannot read consent policy {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"consent policy {path} is not valid TOML: {exc}") from None
        return cls.from_dict(data)

    def required_consents(self, model_type: str) -> tuple[str, ...]:
        """Every consent a user must hold for their records to train ``model_type``, sorted."""
        rule = self.model_types.get(model_type)
        if rule is None:
            known = ", ".join(sorted(self.model_types))
            raise InvalidInputError(f"model type '{model_type}' is not known; use one of: {known}")
        needed = set(self.base) | set(rule.extra)
        if rule.feeds_vamn:
            needed |= set(self.vamn)
        return tuple(sorted(needed))

    def training_consents(self) -> tuple[str, ...]:
        """The union of the consents any model type needs (withdrawn on an upheld objection)."""
        needed: set[str] = set()
        for name in self.model_types:
            needed |= set(self.required_consents(name))
        return tuple(sorted(needed or self.base))

    def as_dict(self) -> dict[str, Any]:
        return {
            "base": list(self.base),
            "vamn": list(self.vamn),
            "model_types": {
                name: {"feeds_vamn": rule.feeds_vamn, "extra": list(rule.extra)}
                for name, rule in sorted(self.model_types.items())
            },
        }
