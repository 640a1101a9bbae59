"""`make bench` output: one line per figure with its baseline, results.json, and a PNG chart of the ratios."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# figure -> (label, ratio key, goal as (comparison, bound), what the ratio means)
FIGURES: dict[str, tuple[str, str, tuple[str, float] | None, str]] = {
    "orchestration": ("orchestration overhead", "ratio", ("<=", 1.2), "lethe time / bare Celery time"),
    "scaleout": ("scale-out 1 -> 4 workers", "ratio", None, "lethe speedup / bare Celery speedup"),
    "latency": ("small-request latency (p50)", "ratio_p50", None,
                "lethe submit-to-completed / bare Celery 4-task round trip"),
    "bulk": ("bulk scale", "ratio", ("<=", 1.5), "lethe time / bare Celery time"),
    "s3_purge": ("S3 purge rate", "rate_ratio", (">=", 0.9), "lethe rate / raw boto3 rate"),
    "flat_memory": ("flat memory", "ratio", ("<=", 1.1), "peak RSS large / small"),
    "events": ("event intake", "ratio", None, "lethe time / raw kombu time"),
    "feast_offline": ("Feast offline purge", "rate_ratio", (">=", 1.0), "lethe rate / pyarrow rewrite rate"),
    "lancedb": ("LanceDB purge", "compaction_cost_ratio", ("<=", 10.0),
                "lethe (compaction, cleanup) / bare delete time"),
    "qdrant": ("Qdrant purge (local mode)", "ratio", None, "lethe (VACUUM, reopen) / bare delete by filter time"),
    "delta": ("Delta purge", "ratio", None, "lethe (vacuum, log cut) time / bare delete time"),
    "sql": ("SQL purge", "ratio", None, "lethe (batches, verify aside) time / one bare DELETE's time"),
    "watch": ("resurrection watch window", "ratio", None, "1,000-entry window time / raw ListObjectVersions time"),
    "seed": ("seed withdrawal (3M photos + derived)", "rate_ratio", (">=", 0.9),
             "lethe photo deletes/s / raw DeleteObjects loop's"),
}


def met(figure: str, value: float) -> bool | None:
    goal = FIGURES[figure][2]
    if goal is None:
        return None
    return value <= goal[1] if goal[0] == "<=" else value >= goal[1]


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """results.json and ratios.png in ``out``; returns their paths. Figures of an earlier run that this one
    did not measure (``--only``) are kept, so figures can be run one at a time."""
    out.mkdir(parents=True, exist_ok=True)
    data = out / "results.json"
    if data.exists():
        results = {**json.loads(data.read_text()), **results}
    data.write_text(json.dumps(results, indent=2, default=str))
    return [data, write_chart(results, out / "ratios.png")]


def write_chart(results: dict[str, Any], path: Path) -> Path:
    """A horizontal bar per figure: its ratio, with the goal marked (green when met, red when not)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, float(results[name][FIGURES[name][1]])) for name in FIGURES if name in results]
    fig, ax = plt.subplots(figsize=(9, 0.7 * len(rows) + 1.4))
    for y, (name, value) in enumerate(rows):
        label, _, goal, meaning = FIGURES[name]
        ok = met(name, value)
        ax.barh(y, value, color={True: "#2e7d32", False: "#c62828", None: "#607d8b"}[ok])
        ax.text(value, y, f"  {value:.2f}x" + (f"  (goal {goal[0]} {goal[1]:g})" if goal else ""), va="center")
        if goal:
            ax.plot([goal[1], goal[1]], [y - 0.4, y + 0.4], color="black", linewidth=2)
        rows[y] = (f"{label}\n{meaning}", value)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ratio against the baseline measured in the same run (log scale)")
    ax.set_title("lethe `make bench`")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
