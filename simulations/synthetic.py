"""Synthetic accounting firms (tenants): seeded per-firm data with the skew real firms have.

Firms differ in size (solo practices to 100+ staff), in what they do (a payroll shop against an
audit practice: a Dirichlet mix over services), in staff seniority (small firms are partner-heavy)
and in how fast they work. Each record belongs to one of the firm's users, whose seniority is
fixed, so per-user consent changes which part of the data a node may use — as in production.

Everything derives from (seed, tenant_index, task), so a simulation is reproducible and the same
firm keeps the same profile across model types. Pass the firm's real user ids (the `users` rows
a simulation created) to make records match the consent tables.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from fl_client.tasks.accounting import (
    CLIENT_SIZES,
    COMPLIANCE_RULES,
    DOCUMENT_TYPES,
    ENTITY_TYPES,
    JURISDICTIONS,
    SERVICES,
    STAFF_LEVELS,
)
from fl_client.tasks.digits import digits_labels, digits_record, digits_records
from schema.errors import InvalidInputError
from simulations.partitions import partition

FIRM_SIZES: tuple[str, ...] = ("solo", "small", "mid", "large")
_FIRM_SIZE_P = (0.3, 0.4, 0.2, 0.1)
_USERS_RANGE = {"solo": (1, 3), "small": (4, 12), "mid": (13, 40), "large": (41, 120)}
_RECORDS_PER_USER = (8, 25)
#: Seniority mix by firm size (junior, senior, manager, partner): small firms are partner-heavy.
_STAFF_P = {
    "solo": (0.1, 0.2, 0.2, 0.5),
    "small": (0.3, 0.3, 0.2, 0.2),
    "mid": (0.4, 0.3, 0.2, 0.1),
    "large": (0.5, 0.3, 0.15, 0.05),
}
#: Client size mix by firm size (micro, small, medium, large): large firms serve large clients.
_CLIENT_P = {
    "solo": (0.6, 0.3, 0.08, 0.02),
    "small": (0.4, 0.4, 0.15, 0.05),
    "mid": (0.2, 0.4, 0.3, 0.1),
    "large": (0.1, 0.25, 0.35, 0.3),
}

_BASE_HOURS = {
    "bookkeeping": 4.0,
    "payroll": 2.0,
    "individual_tax": 5.0,
    "business_tax": 12.0,
    "audit": 40.0,
    "advisory": 8.0,
    "sales_tax": 3.0,
}
_BASE_DOCUMENTS = {
    "bookkeeping": 30,
    "payroll": 10,
    "individual_tax": 15,
    "business_tax": 40,
    "audit": 120,
    "advisory": 5,
    "sales_tax": 12,
}
_RECURRING_P = {
    "bookkeeping": 0.9,
    "payroll": 0.95,
    "individual_tax": 0.6,
    "business_tax": 0.6,
    "audit": 0.5,
    "advisory": 0.3,
    "sales_tax": 0.8,
}
_TAX_SEASON_SERVICES = frozenset({"individual_tax", "business_tax"})
_CLIENT_SIZE_HOURS = dict(zip(CLIENT_SIZES, (0.6, 1.0, 1.8, 3.2), strict=True))
_STAFF_HOURS = dict(zip(STAFF_LEVELS, (1.3, 1.0, 0.85, 0.75), strict=True))

#: Which documents and compliance findings each service produces (drives per-firm label skew).
_SERVICE_DOCUMENTS = {
    "bookkeeping": ("bank_statement", "invoice", "receipt"),
    "payroll": ("payroll_summary", "w2_form"),
    "individual_tax": ("tax_organizer", "w2_form", "form_1099"),
    "business_tax": ("tax_organizer", "form_1099", "engagement_letter"),
    "audit": ("management_letter", "engagement_letter", "meeting_minutes"),
    "advisory": ("meeting_minutes", "engagement_letter"),
    "sales_tax": ("invoice", "receipt"),
}
_SERVICE_RULES = {
    "bookkeeping": ("record_retention", "no_issue"),
    "payroll": ("payroll_withholding", "no_issue"),
    "individual_tax": ("estimated_tax", "no_issue"),
    "business_tax": ("estimated_tax", "revenue_recognition"),
    "audit": ("revenue_recognition", "auditor_independence", "record_retention"),
    "advisory": ("auditor_independence", "no_issue"),
    "sales_tax": ("sales_tax_nexus",),
}

_DOCUMENT_WORDS = {
    "engagement_letter": "engagement scope services responsibilities fees terms agree sign letter management professional",
    "invoice": "invoice amount due payment terms net total remit bill number balance",
    "tax_organizer": "organizer questionnaire dependents deductions income year checklist return prior",
    "bank_statement": "statement account balance deposit withdrawal opening closing transaction bank period",
    "payroll_summary": "payroll gross net wages withholding employees period hours pay register",
    "w2_form": "w2 wage employer employee federal withheld social security medicare box",
    "form_1099": "1099 nec misc payer recipient nonemployee compensation tin box",
    "receipt": "receipt paid purchase store item subtotal change cash card thank",
    "meeting_minutes": "minutes meeting attendees agenda discussed action items motion approved next",
    "management_letter": "management letter deficiency control recommendation observed weakness internal audit response",
}
_RULE_WORDS = {
    "revenue_recognition": "revenue recognized contract performance obligation deferred early cutoff asc 606",
    "auditor_independence": "independence relationship financial interest family client auditor conflict nonattest",
    "sales_tax_nexus": "sales tax nexus remote seller threshold state registration collected marketplace",
    "payroll_withholding": "withholding payroll deposit late form 941 employee trust fund penalty",
    "record_retention": "records retention missing supporting documentation destroyed years workpapers",
    "estimated_tax": "estimated quarterly payment underpayment safe harbor installment penalty",
    "no_issue": "reviewed tested agreed no exceptions noted consistent supported reasonable",
}
_RULE_JURISDICTION_P = {
    "revenue_recognition": (0.9, 0.1, 0.0),
    "auditor_independence": (0.8, 0.2, 0.0),
    "sales_tax_nexus": (0.0, 0.7, 0.3),
    "payroll_withholding": (0.6, 0.35, 0.05),
    "record_retention": (0.5, 0.4, 0.1),
    "estimated_tax": (0.6, 0.4, 0.0),
    "no_issue": (0.5, 0.4, 0.1),
}
_RULE_AMOUNT = {
    "revenue_recognition": 11.0,
    "auditor_independence": 8.0,
    "sales_tax_nexus": 9.5,
    "payroll_withholding": 9.0,
    "record_retention": 6.0,
    "estimated_tax": 8.5,
    "no_issue": 7.0,
}
_COMMON_WORDS = (
    "client",
    "the",
    "of",
    "for",
    "and",
    "to",
    "per",
    "dated",
    "attached",
    "please",
    "review",
    "year",
)
_FIRM_STYLE_WORDS = 6
_OFF_TOPIC_P = 0.15
_LABEL_NOISE_P = 0.03

SyntheticRecord = dict[str, Any]


@dataclass(frozen=True)
class FirmProfile:
    """What makes one firm's data differ from another's."""

    tenant_index: int
    size: str
    n_users: int
    n_records: int
    service_mix: tuple[float, ...]
    staff_mix: tuple[float, ...]
    client_size_mix: tuple[float, ...]
    efficiency: float
    style_words: tuple[str, ...]


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


def _rng(seed: int, tenant_index: int, purpose: str) -> np.random.Generator:
    if tenant_index < 0:
        raise InvalidInputError(f"tenant index must be non-negative, got {tenant_index}")
    return np.random.default_rng(np.random.SeedSequence([seed, tenant_index, _stable_int(purpose)]))


@cache
def firm_profile(seed: int, tenant_index: int) -> FirmProfile:
    """The firm `tenant_index` of the synthetic population `seed`."""
    rng = _rng(seed, tenant_index, "profile")
    size = FIRM_SIZES[rng.choice(len(FIRM_SIZES), p=_FIRM_SIZE_P)]
    low, high = _USERS_RANGE[size]
    n_users = int(rng.integers(low, high + 1))
    per_user = int(rng.integers(_RECORDS_PER_USER[0], _RECORDS_PER_USER[1] + 1))
    staff = rng.dirichlet(np.asarray(_STAFF_P[size]) * 20.0)
    clients = rng.dirichlet(np.asarray(_CLIENT_P[size]) * 20.0)
    style = tuple(f"firm{tenant_index}w{i}" for i in rng.choice(50, _FIRM_STYLE_WORDS, replace=False))
    return FirmProfile(
        tenant_index=tenant_index,
        size=size,
        n_users=n_users,
        n_records=max(40, n_users * per_user),
        service_mix=tuple(float(v) for v in rng.dirichlet(np.full(len(SERVICES), 0.5))),
        staff_mix=tuple(float(v) for v in staff),
        client_size_mix=tuple(float(v) for v in clients),
        efficiency=float(rng.lognormal(0.0, 0.15)),
        style_words=style,
    )


def firm_user_ids(seed: int, tenant_index: int, count: int | None = None, namespace: str = "") -> list[str]:
    """Deterministic UUIDs for the firm's users (`count` defaults to the profile's staff size).

    A ``namespace`` (the organizations' name prefix of a ``--fresh-tenants`` run) renames them
    (UUIDv5 of each id and the namespace): the same firm, same staff and records, under user ids
    of its own — user ids are global keys, so a second set of fresh tenants cannot reuse them.
    """
    rng = _rng(seed, tenant_index, "users")
    n = firm_profile(seed, tenant_index).n_users if count is None else count
    ids = [uuid.UUID(bytes=rng.bytes(16), version=4) for _ in range(n)]
    return [str(uuid.uuid5(i, namespace)) if namespace else str(i) for i in ids]


@dataclass(frozen=True)
class _Staff:
    user_ids: tuple[str, ...]
    levels: tuple[str, ...]
    activity: np.ndarray

    def draw(self, rng: np.random.Generator) -> tuple[str, str]:
        i = int(rng.choice(len(self.user_ids), p=self.activity))
        return self.user_ids[i], self.levels[i]


def _staff(profile: FirmProfile, user_ids: Sequence[str], rng: np.random.Generator) -> _Staff:
    if not user_ids:
        raise InvalidInputError(f"tenant {profile.tenant_index} has no user ids to attach records to")
    levels = tuple(STAFF_LEVELS[i] for i in rng.choice(len(STAFF_LEVELS), len(user_ids), p=profile.staff_mix))
    activity = rng.lognormal(0.0, 0.5, len(user_ids))
    return _Staff(tuple(user_ids), levels, activity / activity.sum())


def _pick(rng: np.random.Generator, options: Sequence[str], p: Sequence[float] | None = None) -> str:
    return options[int(rng.choice(len(options), p=p))]


def _text(rng: np.random.Generator, topic: str, off_topic: Sequence[str], style: Sequence[str]) -> str:
    """Topic words, common filler, the firm's own phrasing and, sometimes, another topic's words."""
    topic_words = topic.split()
    words = list(rng.choice(topic_words, int(rng.integers(4, 9))))
    words += list(rng.choice(_COMMON_WORDS, int(rng.integers(3, 10))))
    words += list(rng.choice(style, int(rng.integers(0, 3))))
    if rng.random() < _OFF_TOPIC_P:
        words += list(rng.choice(_pick(rng, off_topic).split(), int(rng.integers(1, 4))))
    rng.shuffle(words)
    return " ".join(str(w) for w in words)


def _service(rng: np.random.Generator, profile: FirmProfile) -> str:
    return _pick(rng, SERVICES, profile.service_mix)


def _time_record(rng: np.random.Generator, profile: FirmProfile, staff: _Staff) -> SyntheticRecord:
    user_id, level = staff.draw(rng)
    service = _service(rng, profile)
    client_size = _pick(rng, CLIENT_SIZES, profile.client_size_mix)
    size_factor = _CLIENT_SIZE_HOURS[client_size]
    documents = int(rng.poisson(_BASE_DOCUMENTS[service] * size_factor)) + 1
    complexity = int(rng.choice(5, p=(0.15, 0.3, 0.3, 0.15, 0.1))) + 1
    recurring = bool(rng.random() < _RECURRING_P[service])
    in_season = service in _TAX_SEASON_SERVICES and rng.random() < 0.6
    month = int(rng.integers(1, 5)) if in_season else int(rng.integers(1, 13))
    hours = (
        _BASE_HOURS[service]
        * size_factor
        * (1.0 + 0.15 * np.sqrt(documents / _BASE_DOCUMENTS[service]))
        * (0.7 + 0.15 * complexity)
        * _STAFF_HOURS[level]
        * (0.85 if recurring else 1.0)
        * (1.15 if month <= 4 else 1.0)
        * profile.efficiency
        * rng.lognormal(0.0, 0.2)
    )
    return {
        "user_id": user_id,
        "service": service,
        "staff_level": level,
        "client_size": client_size,
        "documents": documents,
        "complexity": complexity,
        "recurring": recurring,
        "month": month,
        "hours": round(float(np.clip(hours, 0.25, 400.0)) * 4) / 4,
    }


def _noisy_label(rng: np.random.Generator, label: str, labels: Sequence[str]) -> str:
    return _pick(rng, labels) if rng.random() < _LABEL_NOISE_P else label


def _document_record(rng: np.random.Generator, profile: FirmProfile, staff: _Staff) -> SyntheticRecord:
    user_id, _ = staff.draw(rng)
    doc_type = _pick(rng, _SERVICE_DOCUMENTS[_service(rng, profile)])
    text = _text(rng, _DOCUMENT_WORDS[doc_type], list(_DOCUMENT_WORDS.values()), profile.style_words)
    return {"user_id": user_id, "text": text, "document_type": _noisy_label(rng, doc_type, DOCUMENT_TYPES)}


def _compliance_record(rng: np.random.Generator, profile: FirmProfile, staff: _Staff) -> SyntheticRecord:
    user_id, _ = staff.draw(rng)
    rule = _pick(rng, _SERVICE_RULES[_service(rng, profile)])
    finding = _text(rng, _RULE_WORDS[rule], list(_RULE_WORDS.values()), profile.style_words)
    big_client = profile.size in ("mid", "large")
    entity_p = (0.1, 0.1, 0.2, 0.25, 0.3, 0.05) if big_client else (0.35, 0.25, 0.15, 0.15, 0.05, 0.05)
    return {
        "user_id": user_id,
        "finding": finding,
        "entity_type": _pick(rng, ENTITY_TYPES, entity_p),
        "jurisdiction": _pick(rng, JURISDICTIONS, _RULE_JURISDICTION_P[rule]),
        "amount": round(float(rng.lognormal(_RULE_AMOUNT[rule], 1.0)), 2),
        "rule": _noisy_label(rng, rule, COMPLIANCE_RULES),
    }


_ACCOUNTING: dict[str, Callable[[np.random.Generator, FirmProfile, _Staff], SyntheticRecord]] = {
    "time_estimation": _time_record,
    "document_templates": _document_record,
    "compliance_checks": _compliance_record,
}
SYNTHETIC_TASKS: tuple[str, ...] = (*_ACCOUNTING, "digits")


#: The digits no tenant holds: a fixed public split (the same for every seed), the server's test set.
DIGITS_TEST_SIZE = 360
_DIGITS_TEST_SEED = 20_240_517
#: Records of the accounting tasks' server-side test set (drawn from every firm, on its own stream).
ACCOUNTING_TEST_SIZE = 2000


@cache
def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """(training indices, test indices) of the bundled digits: the test split is fixed and public."""
    order = np.random.default_rng(_DIGITS_TEST_SEED).permutation(len(digits_labels()))
    return np.sort(order[DIGITS_TEST_SIZE:]), np.sort(order[:DIGITS_TEST_SIZE])


@cache
def _digits_partition(num_tenants: int, scheme: str, alpha: float, seed: int) -> tuple[np.ndarray, ...]:
    """The tenants' shares of the training digits (indices into ``digits_records()``)."""
    train, _ = digits_split()
    labels = np.asarray(digits_labels())[train]
    return tuple(train[part] for part in partition(labels.tolist(), num_tenants, scheme, seed, alpha))


def server_test_records(task: str, *, seed: int, num_tenants: int) -> list[SyntheticRecord]:
    """The server-side test set: records no tenant holds.

    ``digits``: the fixed public split (``digits_split``). Accounting tasks: records drawn from each
    firm's distribution on a separate random stream ("test"), about ``ACCOUNTING_TEST_SIZE`` in all,
    spread over (at most 200 of) the federation's firms, so a model is judged on the population it
    serves but never on a record a tenant trained on.
    """
    if task not in SYNTHETIC_TASKS:
        raise InvalidInputError(f"no synthetic data for {task!r}; known: {', '.join(SYNTHETIC_TASKS)}")
    if task == "digits":
        all_digits = digits_records()
        return [dict(all_digits[int(i)]) | {"user_id": "public-test"} for i in digits_split()[1]]
    firms = range(min(max(num_tenants, 1), 200))
    per_firm = max(5, ACCOUNTING_TEST_SIZE // len(firms))
    make = _ACCOUNTING[task]
    records: list[SyntheticRecord] = []
    for index in firms:
        profile = firm_profile(seed, index)
        rng = _rng(seed, index, f"{task}:test")
        staff = _staff(profile, firm_user_ids(seed, index), rng)
        records.extend(make(rng, profile, staff) for _ in range(per_firm))
    return records


def tenant_records(
    task: str,
    *,
    seed: int,
    tenant_index: int,
    user_ids: Sequence[str] | None = None,
    user_namespace: str = "",
    n_records: int | None = None,
    num_tenants: int = 1,
    partition_scheme: str = "iid",
    alpha: float = 0.5,
) -> list[SyntheticRecord]:
    """The records of firm `tenant_index` for `task`, each with a `user_id` from `user_ids`.

    Accounting tasks draw `n_records` (default: the firm's profile) records from the firm's own
    distribution. `digits` gives the firm its share of the bundled digits under
    `partition_scheme` across `num_tenants` firms (`n_records` does not apply).
    """
    if task not in SYNTHETIC_TASKS:
        raise InvalidInputError(f"no synthetic data for {task!r}; known: {', '.join(SYNTHETIC_TASKS)}")
    profile = firm_profile(seed, tenant_index)
    rng = _rng(seed, tenant_index, task)
    ids = (
        list(user_ids)
        if user_ids is not None
        else firm_user_ids(seed, tenant_index, namespace=user_namespace)
    )
    staff = _staff(profile, ids, rng)
    if task == "digits":
        if tenant_index >= num_tenants:
            raise InvalidInputError(f"tenant index {tenant_index} is out of range for {num_tenants} tenants")
        share = _digits_partition(num_tenants, partition_scheme, alpha, seed)[tenant_index]
        return [{**digits_record(int(i)), "user_id": staff.draw(rng)[0]} for i in share]
    make = _ACCOUNTING[task]
    count = profile.n_records if n_records is None else n_records
    return [make(rng, profile, staff) for _ in range(count)]
