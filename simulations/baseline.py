"""The centralized baseline: every tenant's data pooled, the same model, the same DP.

"Same DP" means the same DP-SGD mechanism (noise multiplier z, sampling rate q, clip C) run for
``steps * rounds`` steps — the steps one tenant's records see when it trains every round — so the
pooled model has the same (ε, δ) as each tenant of the federation. Without local DP (``off``, or
``central`` where the noise is added by the server) it trains without privacy. The metric is the
task's, on the pooled records, as the federation's metric is the tenants' weighted mean on their
own records.
"""

from __future__ import annotations

from typing import Any

from fl_client.dp_training import evaluate, train
from fl_client.tasks import get_task
from fl_server.config import RunConfig
from simulations.scenario import SimulationSpec
from simulations.synthetic import tenant_records


def pooled_records(spec: SimulationSpec) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for index in range(spec.tenants):
        rows.extend(
            tenant_records(
                spec.task,
                seed=spec.seed,
                tenant_index=index,
                num_tenants=spec.tenants,
                partition_scheme=spec.partition,
                alpha=spec.alpha,
            )
        )
    return rows


def centralized(spec: SimulationSpec, config: RunConfig) -> float:
    task = get_task(spec.task)
    records = pooled_records(spec)
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
    return float(evaluate(task, result.state, records, consented_user_ids=None).value)
