"""The files of a simulation report: report.json, tenants.csv, PNG plots and report.md embedding them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

#: More tenants than this: the ε plot shows the ones that spent most.
MAX_PLOTTED_TENANTS = 12


def tenant_rows(report: dict[str, Any], users: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    rows = []
    for name, tenant in report["tenants"].items():
        statuses: dict[str, int] = {}
        for rnd in report["rounds"]:
            status = "sampled" if name in rnd["participants"] else rnd["skipped"].get(name)
            if status:
                statuses[status] = statuses.get(status, 0) + 1
        total, consenting = users.get(name, (0, 0))
        rows.append(
            {
                "tenant": name,
                "organization_id": tenant["organization_id"],
                "users": total,
                "consenting_users": consenting,
                "rounds_sampled": statuses.pop("sampled", 0),
                "rounds_skipped_consent": statuses.pop("rejected_consent", 0),
                "rounds_skipped_budget": statuses.pop("rejected_budget", 0),
                "dp_events": len(tenant["dp_events"]),
                "epsilon_spent": tenant["epsilon_spent"],
                "epsilon_cap": tenant["epsilon_cap"],
            }
        )
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["tenant"])
        writer.writeheader()
        writer.writerows(rows)


def plot_metric(path: Path, report: dict[str, Any], metric_name: str) -> None:
    rounds = [r["round"] for r in report["rounds"] if r["metric"] is not None]
    values = [r["metric"] for r in report["rounds"] if r["metric"] is not None]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot(rounds, values, marker="o")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric_name)
    ax.set_title(f"{report['config']['task']}: {metric_name} per round")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_epsilon(path: Path, report: dict[str, Any]) -> None:
    tenants = report["tenants"]
    ranked = sorted(tenants, key=lambda n: (-tenants[n]["epsilon_spent"], n))
    shown = sorted(ranked[:MAX_PLOTTED_TENANTS], key=lambda n: int(n.split("-")[1]))
    rounds = [0] + [r["round"] for r in report["rounds"]]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    colors = plt.get_cmap("tab20")
    for i, name in enumerate(shown):
        color = colors(i % 20)
        values = [0.0] + [r["epsilon"].get(name, 0.0) for r in report["rounds"]]
        ax.plot(rounds, values, marker=".", color=color, label=name)
        ax.axhline(tenants[name]["epsilon_cap"], color=color, linestyle="--", linewidth=0.9)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"ε spent (δ={report['config']['delta']:g})")
    title = "ε per tenant (dashed: cap)"
    if len(tenants) > len(shown):
        title += f" — {len(shown)} of {len(tenants)} tenants, most spent"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_sweep(path: Path, sweep: list[dict[str, Any]], metric_name: str) -> None:
    finite = [p for p in sweep if p["epsilon"] != "inf"]
    infinite = [p for p in sweep if p["epsilon"] == "inf"]
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=110)
    xs = [float(p["epsilon"]) for p in finite]
    ax.plot(xs, [p["federated_metric"] for p in finite], marker="o", label="federated")
    if any(p["centralized_metric"] is not None for p in finite):
        ax.plot(xs, [p["centralized_metric"] for p in finite], marker="s", label="centralized (pooled)")
    for p in infinite:
        ax.axhline(p["federated_metric"], color="C0", linestyle=":", label="federated, no DP")
        if p["centralized_metric"] is not None:
            ax.axhline(p["centralized_metric"], color="C1", linestyle=":", label="centralized, no DP")
    if xs:
        ax.set_xscale("log")
    ax.set_xlabel("ε (whole run)")
    ax.set_ylabel(metric_name)
    ax.set_title(f"{metric_name} against privacy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def write_markdown(
    path: Path, report: dict[str, Any], rows: list[dict[str, Any]], sweep: list[dict[str, Any]], metric: str
) -> None:
    config = report["config"]
    final = report["final"]
    lines = [
        f"# Simulation report: {config['run_name']}",
        "",
        f"Task **{config['task']}**, {len(report['tenants'])} tenants, {config['rounds']} rounds, "
        f"fraction {config['fraction']:g}, DP **{config['dp']}** (z={config['noise_multiplier']:.4g}, "
        f"C={config['clip_norm']:g}, q={config['sample_rate']:g}, {config['steps']} steps/round, "
        f"δ={config['delta']:g}), seed {config['seed']}.",
        "",
        f"Final {metric}: **{_fmt(final['metric'])}**; model {final['model_name']} "
        f"{final['model_version']} ({final['deployment_status']}), weights `{final['weights_checksum']}`.",
        "",
        f"![{metric} per round](metric.png)",
        "",
        "![epsilon per tenant](epsilon.png)",
        "",
    ]
    if sweep:
        lines += [
            "## Privacy against accuracy",
            "",
            "![sweep](sweep.png)",
            "",
            "| ε | noise multiplier | federated | centralized |",
            "|---|---|---|---|",
        ]
        for p in sweep:
            lines.append(
                f"| {p['epsilon']} | {_fmt(p['noise_multiplier'])} | {_fmt(p['federated_metric'])} "
                f"| {_fmt(p['centralized_metric'])} |"
            )
        lines.append("")
    if report.get("scenario"):
        lines += ["## Consent scenario", ""]
        for event in report["scenario"]:
            lines.append(
                f"- after round {event['after_round']}: {event['event']} of {len(event['user_ids'])} "
                f"user(s) of {event['tenant']}"
            )
        lines.append("")
    lines += [
        "## Tenants",
        "",
        "Full table: [tenants.csv](tenants.csv).",
        "",
        "| tenant | users (consenting) | sampled | skipped consent | skipped budget | ε spent | ε cap |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows[:50]:
        lines.append(
            f"| {row['tenant']} | {row['users']} ({row['consenting_users']}) | {row['rounds_sampled']} "
            f"| {row['rounds_skipped_consent']} | {row['rounds_skipped_budget']} "
            f"| {_fmt(row['epsilon_spent'])} | {_fmt(row['epsilon_cap'])} |"
        )
    if len(rows) > 50:
        lines.append(f"| … {len(rows) - 50} more in tenants.csv | | | | | | |")
    path.write_text("\n".join(lines) + "\n")


def write_report(
    out: Path,
    report: dict[str, Any],
    users: dict[str, tuple[int, int]],
    sweep: list[dict[str, Any]],
    metric_name: str,
) -> Path:
    """Write every file; returns the path of report.json."""
    out.mkdir(parents=True, exist_ok=True)
    if sweep:
        report = report | {"sweep": sweep}
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    rows = tenant_rows(report, users)
    write_csv(out / "tenants.csv", rows)
    plot_metric(out / "metric.png", report, metric_name)
    plot_epsilon(out / "epsilon.png", report)
    if sweep:
        plot_sweep(out / "sweep.png", sweep, metric_name)
    write_markdown(out / "report.md", report, rows, sweep, metric_name)
    return path
