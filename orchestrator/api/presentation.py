"""How the dashboard shows things: durations, deadlines, a request's row, bar charts, audit lines.

Pure functions of status objects and times, no I/O; ``dashboard`` renders what they return.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from orchestrator.ledger import DONE_TASK, FINISHED, Waiting
from orchestrator.ledger.aggregates import DUE_SOON


# -- formatting --------------------------------------------------------------------------------------------
def span(seconds: float) -> str:
    """A short human duration: 3d 4h, 5h 12m, 12m, 40s."""
    s = int(abs(seconds))
    days, hours, minutes = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m" if minutes else f"{s}s"


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def deadline(status: dict[str, Any], at: datetime) -> tuple[str, str]:
    """(text, css class) of the time left to due_at: overdue and due within 3 days are highlighted."""
    due = parse_time(status["due_at"])
    assert due is not None
    if status["status"] in FINISHED:
        done = parse_time(status["completed_at"])
        if status["status"] == "completed" and done is not None:
            if done > due:
                return f"finished {span((done - due).total_seconds())} late", "late"
            return "met", "met"
        return "—", ""
    left = (due - at).total_seconds()
    if left < 0:
        return f"overdue by {span(left)}", "overdue"
    if left < DUE_SOON.total_seconds():
        return f"{span(left)} left", "due-soon"
    return f"{span(left)} left", ""


def progress(waiting: Waiting | None, at: datetime, lease: float) -> dict[str, Any]:
    """Texts of an unfinished request's last progress and next re-send; ``stalled`` when nothing happened
    for longer than a lease (a healthy task renews its lease well before that)."""
    if waiting is None:
        return {"last_progress": "—", "next_resend": "—", "stalled": False}
    quiet = max(0.0, (at - waiting.last_progress).total_seconds())
    if waiting.next_resend is None:
        resend = "—"
    elif waiting.next_resend <= at:
        resend = "due now"
    else:
        resend = f"in {span((waiting.next_resend - at).total_seconds())}"
    return {"last_progress": f"{span(quiet)} ago", "next_resend": resend, "stalled": quiet > lease,
            "last_progress_at": waiting.last_progress.isoformat(),
            "next_resend_at": waiting.next_resend.isoformat() if waiting.next_resend else ""}


def row(status: dict[str, Any], at: datetime, waiting: Waiting | None = None,
        lease: float = 600.0) -> dict[str, Any]:
    tasks = status["tasks"]
    received = parse_time(status["received_at"])
    assert received is not None
    due_text, due_class = deadline(status, at)
    shown = progress(waiting, at, lease)
    not_dispatched = int(status.get("not_dispatched") or 0)
    if not_dispatched and waiting is not None:  # the broker refused them: reconcile's next pass, not the lease
        shown["next_resend"] = "next reconcile pass"
    return {**shown, "not_dispatched": not_dispatched,
        "id": status["id"], "status": status["status"], "dry_run": status["dry_run"],
        "regime": status["regime"], "age": span((at - received).total_seconds()),
        "received_at": status["received_at"], "due_at": status["due_at"], "due_text": due_text,
        "due_class": due_class, "done": sum(1 for t in tasks if t["status"] in DONE_TASK), "total": len(tasks),
        "failed": sum(1 for t in tasks if t["status"] == "failed"),
    }


def chart(series: list[tuple[str, str, list[int]]], hours: list[datetime],
          width: int = 720, height: int = 180) -> dict[str, Any]:
    """Geometry of a grouped bar chart (inline SVG): one group per hour, one bar per series."""
    left, bottom, top = 44, 22, 10
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max([1, *(v for _, _, values in series for v in values)])
    group = plot_w / max(1, len(hours))
    bar_w = max(1.0, (group - 2) / max(1, len(series)))
    bars = []
    for si, (name, css, values) in enumerate(series):
        for i, v in enumerate(values):
            h = plot_h * v / peak
            bars.append({"x": round(left + i * group + 1 + si * bar_w, 1), "y": round(top + plot_h - h, 1),
                         "w": round(bar_w, 1), "h": round(h, 1), "css": css,
                         "title": f"{hours[i]:%H:00} UTC: {v} {name}"})
    ticks = [{"x": round(left + i * group + group / 2, 1), "label": f"{h:%H}"}
             for i, h in enumerate(hours) if i % 3 == 0]
    grid = [{"y": round(top + plot_h - plot_h * f, 1), "label": _tick_label(peak * f)} for f in (0, 0.5, 1)]
    return {"width": width, "height": height, "bars": bars, "ticks": ticks, "grid": grid, "left": left,
            "right": width - 8, "base": top + plot_h, "legend": [(name, css) for name, css, _ in series]}


def _tick_label(v: float) -> str:
    return f"{v / 1000:.1f}k" if v >= 10000 else f"{v:.0f}" if v >= 10 or v == int(v) else f"{v:.1f}"


def audit_summary(detail: dict[str, Any]) -> str:
    """One line of an audit entry's detail (hashes are shortened; there is no raw identifier to show)."""
    parts = []
    for key, value in detail.items():
        if value is None:
            continue
        if key == "subject_hashes" and isinstance(value, dict):
            value = ", ".join(f"{k}:{str(v)[:10]}…" for k, v in value.items())
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif key in ("data_map_digest", "sha256") and isinstance(value, str):
            value = value[:12] + "…"
        parts.append(f"{key}={value}")
    text = "; ".join(parts)
    return text if len(text) <= 240 else text[:239] + "…"
