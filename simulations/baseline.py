"""The centralized baseline: every tenant's training records pooled, the same model, the same DP.

"Same DP" means the same DP-SGD mechanism (noise multiplier z, sampling rate q, clip C) run for
``steps * rounds`` steps — the steps one tenant's records see when it trains every round — so the
pooled model has the same (ε, δ) as each tenant of the federation. Without local DP (``off``, or
``central`` where the noise is added by the server) it trains without privacy.

It trains on what the nodes train on (each tenant's non-held-out users, ``heldout.training_records``)
and is measured on the server's test set (``heldout.held_out_records``), the records the federation's
headline metric is measured on: the two numbers compare generalisation, not memorisation.
"""

from __future__ import annotations

from typing import Any

from fl_client.dp_training import evaluate, train
from fl_client.tasks import get_task
from fl_server.config import RunConfig
from simulations.heldout import held_out_records, training_records
from simulations.scenario import SimulationSpec


def pooled_records(spec: SimulationSpec, config: RunConfig) -> list[dict[str, Any]]:
    return training_records(spec, config.holdout_fraction)


def centralized(spec: SimulationSpec, config: RunConfig) -> float:
    """The pooled model's metric on the server's test set."""
    task = get_task(spec.task)
    records = pooled_records(spec, config)
    result = train(
        task,
        task.initial_state(config.seed),
        records,
        consented_user_ids=None,
        noise_multiplier=config.noise_multiplier,
        clip_norm=config.clip_norm,
        sample_rate=config.sample_rate,
        steps=config.steps * config.rounds,
        lr=config.lr,
        seed=config.seed,
        dp=config.dp.local,
        expected_batch_size=max(1.0, config.sample_rate * len(records)),
    )
    return float(evaluate(task, result.state, held_out_records(spec), consented_user_ids=None).value)
