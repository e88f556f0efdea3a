"""Time per round: governed simulation against plain Flower FedAvg with the same clients, one process.

Both run on Flower's simulation engine (ray), 10 digits tenants, the same DP-SGD (fl_client's
``train``: z, q, C, steps), the same records. The plain side is Flower's ``FedAvg.start`` with a
ClientApp that trains the tenant's records without consent gate, ledger or validation. Also: time
from the start of ``simulate`` to the end of its first round (engine startup included).

    .venv/bin/python bench/simulation_round.py [--tenants 10] [--rounds 4] [--steps 50]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from aggregation.flwr_adapter import arrays_from_record, record_from_arrays
from fl_client.dp_training import evaluate, train
from fl_client.tasks import get_task
from schema.config import Settings
from schema.db import make_engine
from schema.migrate import upgrade
from simulations.runner import simulate
from simulations.scenario import SimulationSpec
from simulations.synthetic import tenant_records


def plain(spec: SimulationSpec) -> list[float]:
    config = spec.run_config()
    task = get_task(spec.task)
    stamps: list[float] = []

    def records(pid: int) -> list[dict[str, object]]:
        return list(tenant_records(spec.task, seed=spec.seed, tenant_index=pid, num_tenants=spec.tenants))

    client = ClientApp()

    @client.train()
    def fit(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        state = {
            k: torch.from_numpy(np.array(v))
            for k, v in arrays_from_record(msg.content.array_records["arrays"]).items()
        }
        result = train(
            task,
            state,
            records(pid),
            consented_user_ids=None,
            noise_multiplier=config.noise_multiplier,
            clip_norm=config.clip_norm,
            sample_rate=config.sample_rate,
            steps=config.steps,
            lr=config.lr,
            seed=pid + 1,
        )
        arrays = record_from_arrays({k: v.detach().numpy() for k, v in result.state.items()})
        return Message(
            RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": result.num_examples})}),
            reply_to=msg,
        )

    @client.evaluate()
    def ev(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        state = {
            k: torch.from_numpy(np.array(v))
            for k, v in arrays_from_record(msg.content.array_records["arrays"]).items()
        }
        rows = records(pid)
        result = evaluate(task, state, rows, consented_user_ids=None)
        return Message(
            RecordDict({"metrics": MetricRecord({"num-examples": len(rows), "accuracy": result.value})}),
            reply_to=msg,
        )

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        initial = record_from_arrays({k: v.numpy() for k, v in task.initial_state(config.seed).items()})

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            stamps.append(time.perf_counter())
            return MetricRecord({})

        FedAvg(fraction_train=1.0, fraction_evaluate=1.0).start(
            grid=grid, initial_arrays=initial, num_rounds=config.rounds, evaluate_fn=evaluate_fn
        )

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=spec.tenants,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}},
    )
    return [b - a for a, b in itertools.pairwise(stamps[1:])]  # stamps[0]: round 0 (initial)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    work = Path(tempfile.mkdtemp(prefix="sim-bench-"))
    settings = Settings(database_url=f"sqlite:///{work / 'bench.db'}", weights_dir=work / "weights")
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    spec = SimulationSpec(
        tenants=args.tenants,
        rounds=args.rounds,
        steps=args.steps,
        noise_multiplier=1.0,
        epsilon_cap=1000.0,
        out=str(work / "out"),
        run_name="bench",
        dp="local",
    )
    started = time.perf_counter()
    result = simulate(spec, settings)
    governed_total = time.perf_counter() - started
    governed = result.main.round_seconds
    plain_rounds = plain(spec)
    g, p = float(np.median(governed)), float(np.median(plain_rounds))
    print(
        json.dumps(
            {
                "tenants": args.tenants,
                "rounds": args.rounds,
                "steps": args.steps,
                "governed_round_s_median": round(g, 3),
                "plain_round_s_median": round(p, 3),
                "ratio": round(g / p, 3),
                "first_round_after_s": round(result.main.seconds_to_first_round or 0, 2),
                "governed_total_s": round(governed_total, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
