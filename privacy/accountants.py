"""The accountants' names, and what identifies an epsilon a budget row stores: no numpy.

``privacy.accounting`` computes (numpy, scipy). A charge under ``rdp`` also stores the epsilon it
computed for the ledger's new curve in the budget row (``privacy_budgets.epsilon_*``, revision
0021), with what that number depends on; a reader that finds the same key (``STORED_EPSILON_KEY``,
the row's event count, the delta it reads at) uses it instead of evaluating the curve again, so
``accute-fl budget show`` imports neither numpy nor the accountant when every row is current.
"""

from __future__ import annotations

from schema.errors import InvalidInputError

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")

#: ``accounting.ORDERS_KEY`` (the hash of the RDP order grid) written out, so a reader needs no
#: numpy; ``privacy.accounting`` refuses to import if its grid hashes to anything else.
RDP_ORDERS_KEY = "087d6ebd112b3877"

#: What computed a stored epsilon: the ``rdp`` accountant's conversion of a curve
#: (``accounting.epsilon_from_rdp``, Balle et al. 2020) on that grid. Change the version when the
#: conversion changes: epsilons stored under the old key are then recomputed, never shown.
STORED_EPSILON_KEY = f"rdp/balle2020.1/{RDP_ORDERS_KEY}"


def check_accountant(name: str) -> str:
    if name not in ACCOUNTANTS:
        raise InvalidInputError(f"accountant '{name}' is unknown; use one of: {', '.join(ACCOUNTANTS)}")
    return name
