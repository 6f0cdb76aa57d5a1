"""The recipe's one table and one plot: every evaluated stage side by side.

runs/<recipe>/report.json, report.md and report.png, rewritten after every run from the stages'
markers and eval.json files (stages not yet complete are left out). Columns: greedy accuracy, pass@1
and cons@k over k samples, format and language-consistency rates, mean response length (tokens),
plus the stage's model, training steps, trained sequences and wall seconds. `compare` pairs (e.g.
distillation vs RL of the same student) get their own lines with the compute each used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from r1mega.recipe import markers
from r1mega.recipe.config import RecipeConfig
from r1mega.recipe.jobconfig import stage_dir

__all__ = ["collect_rows", "write_report", "METRIC_COLUMNS"]

METRIC_COLUMNS = ("accuracy", "pass@1", "cons@k", "format", "language_consistency", "mean_length")


def _read(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _cons_key(metrics: dict) -> Optional[str]:
    keys = sorted((k for k in metrics if k.startswith("cons@")), key=lambda k: int(k.split("@")[1]))
    return keys[-1] if keys else None


def collect_rows(recipe: RecipeConfig) -> list[dict[str, Any]]:
    rows = []
    for st in recipe.stages:
        d = stage_dir(recipe, st.name)
        marker = markers.read_marker(d)
        if marker is None or "eval" not in marker.get("artifacts", {}):
            continue
        ev = _read(markers.artifact_path(marker, "eval", recipe.run_dir))
        if ev is None:
            continue
        m = ev.get("all", {})
        greedy = _read(d / "eval" / "greedy" / "eval.json")
        cons = _cons_key(m)
        info = marker.get("info", {})
        rows.append({
            "stage": st.name, "kind": st.kind, "model": info.get("model_family"), "parameters": info.get("parameters"),
            "steps": info.get("steps"), "trained_sequences": info.get("trained_sequences"), "wall_s": marker.get("wall_s"),
            "accuracy": (greedy or {}).get("all", {}).get("pass@1"), "pass@1": m.get("pass@1"),
            "cons@k": m.get(cons) if cons else None, "k": int(cons.split("@")[1]) if cons else None,
            "format": m.get("format"), "language_consistency": m.get("language_consistency"),
            "mean_length": m.get("mean_length"), "prompts": m.get("prompts"),
            "general_check": info.get("general_check") or None,
        })
    return rows


def _fmt(v: Any, pct: bool = True) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{100 * v:.1f}" if pct else f"{v:.1f}"
    return str(v)


def _markdown(recipe: RecipeConfig, rows: list[dict], comparisons: list[dict]) -> str:
    k = next((r["k"] for r in rows if r["k"]), "k")
    head = ["stage", "kind", "model", "params", "steps", "trained seqs", "wall s", "accuracy %", "pass@1 %",
            f"cons@{k} %", "format %", "language %", "length"]
    lines = [f"# Recipe {recipe.name}: held-out evaluation after each stage", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["stage"], r["kind"], r["model"] or "", _fmt(r["parameters"]), _fmt(r["steps"]),
                 _fmt(r["trained_sequences"]), _fmt(r["wall_s"], pct=False), _fmt(r["accuracy"]), _fmt(r["pass@1"]),
                 _fmt(r["cons@k"]), _fmt(r["format"]), _fmt(r["language_consistency"]), _fmt(r["mean_length"], pct=False)]
        lines.append("| " + " | ".join(cells) + " |")
    checked = [r for r in rows if r.get("general_check")]
    if checked:
        lines += ["", "## Hidden rule on held-out general prompts (the RL stage's own evaluations, never an RM)", ""]
        for r in checked:
            g = r["general_check"]
            parts = [f"{name} {_fmt(g[key][0])}% -> {_fmt(g[key][1])}%"
                     for key, name in (("general_check_sampled", "sampled"), ("general_check", "greedy"),
                                       ("pass@1", "reasoning pass@1"), ("greedy_accuracy", "reasoning greedy"))
                     if key in g]
            lines.append(f"- {r['stage']} (step {g['first_step']} -> {g['last_step']}): " + "; ".join(parts))
    if comparisons:
        lines += ["", "## Comparisons", ""]
        for c in comparisons:
            a, b = c["a"], c["b"]
            lines.append(
                f"- {a['stage']} vs {b['stage']}: pass@1 {_fmt(a['pass@1'])}% vs {_fmt(b['pass@1'])}% "
                f"(trained sequences {_fmt(a['trained_sequences'])} vs {_fmt(b['trained_sequences'])}; "
                f"wall {_fmt(a['wall_s'], pct=False)} s vs {_fmt(b['wall_s'], pct=False)} s)"
            )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["stage"] for r in rows]
    titles = {"accuracy": "greedy accuracy", "pass@1": "pass@1", "cons@k": "cons@k", "format": "format rate",
              "language_consistency": "language consistency", "mean_length": "mean length (tokens)"}
    fig, axes = plt.subplots(3, 2, figsize=(max(8.0, 0.55 * len(names) * 2 + 2), 10.0))
    for ax, key in zip(axes.flat, METRIC_COLUMNS):
        values = [r[key] if r[key] is not None else 0.0 for r in rows]
        ax.bar(range(len(names)), values, color="#4C72B0")
        ax.set_title(titles[key], fontsize=10)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        if key != "mean_length":
            ax.set_ylim(0, 1.12)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.2f}" if key != "mean_length" else f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(recipe: RecipeConfig) -> Optional[Path]:
    """Write report.json/md/png for the evaluated stages; None when no stage has an evaluation yet."""
    rows = collect_rows(recipe)
    if not rows:
        return None
    by_name = {r["stage"]: r for r in rows}
    comparisons = [{"a": by_name[a], "b": by_name[b]} for a, b in recipe.compare if a in by_name and b in by_name]
    out = recipe.run_dir
    markers.write_json_atomic(out / "report.json", {"recipe": recipe.name, "stages": rows, "comparisons": comparisons})
    (out / "report.md").write_text(_markdown(recipe, rows, comparisons), encoding="utf-8")
    _plot(rows, out / "report.png")
    return out / "report.md"
