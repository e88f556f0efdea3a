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
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

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
        # A consenting count of -1: not known (run-local reads only the users); written as empty.
        total, consenting = users.get(name, (0, 0))
        rows.append(
            {
                "tenant": name,
                "organization_id": tenant["organization_id"],
                "users": total,
                "consenting_users": consenting if consenting >= 0 else None,
                "rounds_sampled": statuses.pop("sampled", 0),
                "rounds_skipped_consent": statuses.pop("rejected_consent", 0),
                "rounds_skipped_budget": statuses.pop("rejected_budget", 0),
                "dp_events": len(tenant["dp_events"]),
                "epsilon_run": tenant.get("epsilon_run", tenant["epsilon_spent"]),
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


def _no_data(ax: Any, what: str) -> None:
    """An honest empty plot: say there is nothing, rather than draw blank axes."""
    ax.text(0.5, 0.5, f"no data: {what}", ha="center", va="center", transform=ax.transAxes, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def _round_axis(ax: Any, rounds: list[int]) -> None:
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if rounds:
        ax.set_xlim(min(rounds) - 0.3, max(rounds) + 0.3)


def plot_metric(
    path: Path, report: dict[str, Any], metric_name: str, references: dict[str, float] | None = None
) -> None:
    """The metric per round with reference lines (chance, non-private baselines) to judge it by."""
    rounds = [r["round"] for r in report["rounds"] if r["metric"] is not None]
    values = [r["metric"] for r in report["rounds"] if r["metric"] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    ax.set_title(f"{report['config']['task']}: {metric_name} per round")
    if not values:
        _no_data(ax, "no round produced a metric (DP runs keep node metrics on the nodes)")
    else:
        ax.plot(rounds, values, marker="o", label="this run")
        for i, (label, value) in enumerate(sorted((references or {}).items())):
            if value is None or not math.isfinite(value):
                continue
            ax.axhline(value, color=f"C{i + 1}", linestyle=":", linewidth=1.2, label=f"{label} ({value:.3g})")
        _round_axis(ax, [r["round"] for r in report["rounds"]])
        ax.set_ylabel(metric_name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


#: Markers cycled with colours so that tenants whose curves overlap stay distinguishable.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")


def plot_epsilon(path: Path, report: dict[str, Any]) -> None:
    """This run's ε per tenant per round (not the lifetime ledger: an earlier run's spend would make
    round 1 jump), each tenant with its own colour, marker and end label; skipped rounds marked
    with a grey x; the lifetime total in the legend where it differs; caps labelled."""
    tenants = report["tenants"]
    ranked = sorted(tenants, key=lambda n: (-_finite(_run_eps(tenants[n])), n))
    shown = sorted(ranked[:MAX_PLOTTED_TENANTS], key=_tenant_order)
    rounds = [0] + [r["round"] for r in report["rounds"]]
    fig, ax = plt.subplots(figsize=(7.2, 4.2), dpi=110)
    delta = report["config"].get("delta")
    ax.set_title("ε of this run per tenant (dashed: lifetime cap)")
    if not shown or not report["rounds"]:
        _no_data(ax, "no tenant took part in a round")
    else:
        colors = plt.get_cmap("tab20")
        caps_drawn: set[float] = set()
        skip_labelled = False
        ends: list[tuple[float, float, str]] = []
        for i, name in enumerate(shown):
            color = colors(i % 20)
            values = [0.0] + [
                _finite(r.get("epsilon_run", r["epsilon"]).get(name, 0.0)) for r in report["rounds"]
            ]
            # Overlapping tenants: a small horizontal offset per tenant keeps every marker visible.
            offset = (i - (len(shown) - 1) / 2) * min(0.25 / max(len(shown), 1), 0.04)
            ax.plot(
                [x + offset for x in rounds],
                values,
                marker=_MARKERS[i % len(_MARKERS)],
                markersize=4,
                color=color,
                label=_legend(name, tenants[name]),
            )
            skipped = [k for k, r in enumerate(report["rounds"], start=1) if name in r.get("skipped", {})]
            if skipped:
                ax.plot(
                    [rounds[k] + offset for k in skipped],
                    [values[k] for k in skipped],
                    linestyle="none",
                    marker="x",
                    markersize=6,
                    color="0.4",
                    label=None if skip_labelled else "skipped round",
                )
                skip_labelled = True
            ends.append((rounds[-1] + offset, values[-1], name))
            cap = float(tenants[name]["epsilon_cap"])
            if math.isfinite(cap) and cap not in caps_drawn:
                ax.axhline(cap, color=color, linestyle="--", linewidth=0.9)
                ax.annotate(
                    f"cap {cap:g}",
                    (1.0, cap),
                    xycoords=("axes fraction", "data"),
                    xytext=(-2, 2),
                    textcoords="offset points",
                    ha="right",
                    fontsize=7,
                )
                caps_drawn.add(cap)
        _label_line_ends(ax, ends)
        _round_axis(ax, rounds)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=8))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax.set_ylabel(f"ε spent (δ={delta:g})" if isinstance(delta, int | float) else "ε spent")
        if len(tenants) > len(shown):
            ax.set_title(f"ε of this run (dashed: lifetime cap) — {len(shown)} of {len(tenants)}, most spent")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _run_eps(tenant: dict[str, Any]) -> Any:
    return tenant.get("epsilon_run", tenant["epsilon_spent"])


def _legend(name: str, tenant: dict[str, Any]) -> str:
    """The tenant's name, with its lifetime ε when earlier runs spent some too."""
    lifetime, run = _finite(tenant["epsilon_spent"]), _finite(_run_eps(tenant))
    if lifetime != run:
        return f"{name} (lifetime ε {_fmt(lifetime)})"
    return name


def _label_line_ends(ax: Any, ends: list[tuple[float, float, str]]) -> None:
    """One label per group of curves ending at (nearly) the same ε, so names never print over each other."""
    finite = [e for e in ends if math.isfinite(e[1])]
    if not finite:
        return
    span = max(e[1] for e in finite) - min(0.0, min(e[1] for e in finite)) or 1.0
    groups: list[list[tuple[float, float, str]]] = []
    for end in sorted(finite, key=lambda e: e[1]):
        if groups and end[1] - groups[-1][-1][1] <= 0.03 * span:
            groups[-1].append(end)
        else:
            groups.append([end])
    for group in groups:
        x = max(e[0] for e in group)
        y = sum(e[1] for e in group) / len(group)
        names = [e[2] for e in group]
        text = ", ".join(names) if len(names) <= 3 else f"{names[0]} +{len(names) - 1} more"
        ax.annotate(text, (x, y), xytext=(4, 0), textcoords="offset points", fontsize=6, va="center")


def _finite(value: Any) -> float:
    """ε as a plottable number: ∞ (a non-private release) is drawn at the top of the axis as NaN-free."""
    number = float(value) if value is not None else 0.0
    return number if math.isfinite(number) else float("nan")


def _tenant_order(name: str) -> tuple[int, str]:
    tail = name.rsplit("-", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (1 << 30, name)


def plot_sweep(path: Path, sweep: list[dict[str, Any]], metric_name: str) -> None:
    finite = [p for p in sweep if p["epsilon"] != "inf"]
    infinite = [p for p in sweep if p["epsilon"] == "inf"]
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=110)
    if not any(p["federated_metric"] is not None for p in sweep):
        _no_data(ax, "no sweep point produced a metric")
        fig.savefig(path)
        plt.close(fig)
        return
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


def dp_description(config: dict[str, Any]) -> str:
    """The DP parameters that apply: local DP-SGD's, the server's central Gaussian's, or both."""
    dp = config["dp"]
    parts = []
    if dp in ("local", "both"):
        parts.append(
            f"local DP-SGD z={config['noise_multiplier']:.4g}, C={config['clip_norm']:g}, "
            f"q={config['sample_rate']:g}, {config['steps']} steps/round"
        )
    if dp in ("central", "both"):
        parts.append(
            f"central Gaussian z={config['central_noise_multiplier']:.4g}, "
            f"C={config['central_clip_norm']:g}, q={config['fraction']:g} per round"
        )
    if not parts:
        return f"DP **off** (no privacy; {config['steps']} steps/round)"
    return f"DP **{dp}** ({'; '.join(parts)}, δ={config['delta']:g})"


def headline(final: dict[str, Any], metric: str) -> list[str]:
    """The held-out metric first, the train metric beside it (where it exists), then the model."""
    test_set = final.get("test_set") or {}
    where = (
        f"on the server's test set ({test_set['records']} records no tenant holds: {test_set['source']})"
        if test_set
        else "on the tenants' held-out users"
    )
    round_note = f", model of round {final['metric_round']}" if final.get("metric_round") else ""
    train = final.get("train_metric")
    train_note = (
        f" Train {metric} (pooled training records): {_fmt(train)}."
        if train is not None
        else " No train metric (a DP run releases none)."
        if test_set
        else ""
    )
    return [
        f"Held-out {metric}: **{_fmt(final.get('test_metric', final['metric']))}** {where}{round_note}."
        f"{train_note}",
        "",
        f"Model {final['model_name']} {final['model_version']} ({final['deployment_status']}), "
        f"weights `{final['weights_checksum']}`.",
    ]


def write_markdown(
    path: Path, report: dict[str, Any], rows: list[dict[str, Any]], sweep: list[dict[str, Any]], metric: str
) -> None:
    config = report["config"]
    final = report["final"]
    nothing = report.get("nothing_trained")
    warning = (
        [
            f"**This run trained nothing: {nothing}.** The model below is the initial one; check the tenants' "
            "budgets (`accute-fl budget show`) and consents before running again.",
            "",
        ]
        if nothing
        else []
    )
    lines = [
        f"# Simulation report: {config['run_name']}",
        "",
        f"Task **{config['task']}**, {len(report['tenants'])} tenants, {config['rounds']} rounds, "
        f"fraction {config['fraction']:g}, {dp_description(config)}, seed {config['seed']}.",
        "",
        *warning,
        *headline(final, metric),
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
        "| tenant | users (consenting) | sampled | skipped consent | skipped budget | ε this run "
        "| ε lifetime | ε cap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows[:50]:
        lines.append(
            f"| {row['tenant']} | {row['users']} ({_fmt(row['consenting_users'])}) | {row['rounds_sampled']} "
            f"| {row['rounds_skipped_consent']} | {row['rounds_skipped_budget']} "
            f"| {_fmt(row['epsilon_run'])} | {_fmt(row['epsilon_spent'])} | {_fmt(row['epsilon_cap'])} |"
        )
    if len(rows) > 50:
        lines.append(f"| … {len(rows) - 50} more in tenants.csv | | | | | | | |")
    path.write_text("\n".join(lines) + "\n")


def write_report(
    out: Path,
    report: dict[str, Any],
    users: dict[str, tuple[int, int]],
    sweep: list[dict[str, Any]],
    metric_name: str,
    references: dict[str, float] | None = None,
) -> Path:
    """Write every file; returns the path of report.json.

    ``references``: horizontal lines on the metric plot, e.g. ``{"chance": 0.1, "no DP": 0.97}``.
    """
    out.mkdir(parents=True, exist_ok=True)
    if sweep:
        report = report | {"sweep": sweep}
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    rows = tenant_rows(report, users)
    write_csv(out / "tenants.csv", rows)
    plot_metric(out / "metric.png", report, metric_name, references)
    plot_epsilon(out / "epsilon.png", report)
    if sweep:
        plot_sweep(out / "sweep.png", sweep, metric_name)
    write_markdown(out / "report.md", report, rows, sweep, metric_name)
    return path
