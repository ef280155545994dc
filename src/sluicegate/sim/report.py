"""Reports: a terminal table (one run, or two side by side with deltas) and a self-contained
HTML report with matplotlib plots embedded as base64 PNGs.

matplotlib is optional and imported only by :func:`html_report`. Figures are built with the
object API (``matplotlib.figure.Figure`` on the Agg canvas), never ``pyplot``: no global state,
no GUI backend, nothing to leak between reports.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import Any

from sluicegate.sim.metrics import ClassStats, RunResult

Pair = tuple[RunResult, RunResult | None]


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds < 1.0:
        return f"{seconds * 1000:.0f}ms"
    return f"{seconds:.1f}s"


def _tokens(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


#: Lead columns are measured against the demand (the same for every policy); the rest per
#: call and attempt the policy induced (see ``sluicegate.sim.metrics``).
_COLUMNS: tuple[tuple[str, int], ...] = (
    ("demand", 6), ("done", 6), ("tasks ok", 8), ("in SLA", 7), ("p50", 6), ("p95", 6),
    ("calls", 6), ("ampl", 5), ("429 gw", 6), ("429 up", 6), ("gave up", 7),
)  # fmt: skip


def _cells(s: ClassStats) -> list[str]:
    return [
        str(s.demand), _pct(s.goodput), _pct(s.task_success),
        _pct(s.within_sla) + ("" if s.meets_sla else "!"), _ms(s.p50), _ms(s.p95),
        str(s.calls), f"{s.retry_amplification:.2f}", str(s.refused), str(s.upstream_refused),
        str(s.gave_up),
    ]  # fmt: skip


def _pct(share: float) -> str:
    return f"{share * 100:.0f}%" if share >= 0.9995 or share == 0 else f"{share * 100:.1f}%"


def _summary(r: RunResult) -> str:
    quota = r.quota_tokens_per_min
    ratio = r.peak_tokens_per_min / quota if quota else math.nan
    top = sorted(r.refused_by.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    by = ", ".join(f"{name} {n}" for name, n in top) or "nothing"
    done = r.done / r.demand if r.demand else 1.0
    return (
        f"  [{r.policy}] done {r.done} of {r.demand} demanded calls ({done:.1%}); "
        f"{r.calls} calls, {r.attempts} attempts, {r.refused} refused (by {by}), "
        f"{r.upstream_refused} provider 429s; tokens {_tokens(r.tokens)} "
        f"({_tokens(quota)}/min quota), busiest minute {ratio:.2f}x the quota"
        + (f", {_tokens(r.wasted_tokens)} sent over it" if r.wasted_tokens else "")
    )


def text_report(a: RunResult, b: RunResult | None = None) -> str:
    """One scenario as a table: per group and class, each metric (and with two runs, each
    metric of both and the delta of the SLA share)."""
    lines = [f"scenario {a.scenario} (seed {a.seed}, {a.duration:g}s virtual)"]
    label_w = max([len(f"{s.group} {s.workload_class}") for s in a.stats] + [14])
    head = "group class".ljust(label_w) + " " + "policy".ljust(8)
    head += " ".join(name.rjust(width) for name, width in _COLUMNS)
    if b is not None:
        head += "  " + "Δ done".rjust(7) + " " + "Δ in SLA".rjust(8)
    lines.append(head)
    lines.append("-" * len(head))
    b_stats = {(s.group, s.workload_class): s for s in (b.stats if b else [])}
    keys = [(s.group, s.workload_class) for s in a.stats]
    keys += [k for k in b_stats if k not in set(keys)]
    a_stats = {(s.group, s.workload_class): s for s in a.stats}
    for key in keys:
        label = f"{key[0]} {key[1]}".ljust(label_w)
        runs = [(a, a_stats.get(key))] + ([(b, b_stats.get(key))] if b is not None else [])
        for i, (run, s) in enumerate(runs):
            name = run.policy if len(run.policy) <= 8 else run.policy[-8:]
            row = (label if i == 0 else " " * label_w) + " " + name.ljust(8)
            if s is None:
                row += "(no calls)"
            else:
                row += " ".join(c.rjust(w) for c, (_, w) in zip(_cells(s), _COLUMNS, strict=True))
            if b is not None and i == 1:
                sa, sb = a_stats.get(key), b_stats.get(key)
                if sa is not None and sb is not None:
                    d_done = (sb.goodput - sa.goodput) * 100
                    d_sla = (sb.within_sla - sa.within_sla) * 100
                    row += "  " + f"{d_done:+.1f}pt".rjust(7) + " " + f"{d_sla:+.1f}pt".rjust(8)
            lines.append(row)
    lines.append(_summary(a))
    if b is not None:
        lines.append(_summary(b))
    lines += [f"  note: {note}" for note in _notes(a, b)]
    return "\n".join(lines)


def _notes(a: RunResult, b: RunResult | None) -> list[str]:
    """Notes of one or two runs; a note only one run has names its policy."""
    if b is None:
        return list(a.notes)
    out = [n if n in b.notes else f"[{a.policy}] {n}" for n in a.notes]
    return out + [f"[{b.policy}] {n}" for n in b.notes if n not in a.notes]


# -- HTML -------------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _timeline(runs: Sequence[RunResult]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(runs), 3.4), layout="constrained")
    axes = fig.subplots(1, len(runs), squeeze=False, sharey=True)[0]
    for ax, run in zip(axes, runs, strict=True):
        n_bins = run.active_bins
        xs = [(i + 0.5) * run.bin_width for i in range(n_bins)]
        per_s = 1.0 / run.bin_width
        for n, group in enumerate(sorted(run.admitted_series)[:8]):
            colour = f"C{n}"
            adm = [v * per_s for v in run.admitted_series[group][:n_bins]]
            ref = [v * per_s for v in run.refused_series[group][:n_bins]]
            ax.plot(xs, adm, color=colour, lw=1.2, label=f"{group} admitted")
            ax.plot(xs, ref, color=colour, lw=1.0, ls="--", label=f"{group} 429s")
        ax.set_title(run.policy, fontsize=9)
        ax.set_xlabel("virtual time (s)")
        ax.set_ylabel("attempts / s")
        ax.legend(fontsize=6, loc="upper right")
    return _png(fig)


def _cdfs(runs: Sequence[RunResult]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.4), layout="constrained")
    ax = fig.subplots()
    styles = ("-", "--")
    plotted = False
    classes = sorted({k for run in runs for k in run.latencies})
    for r, run in enumerate(runs):
        for c, klass in enumerate(classes):
            values = run.latencies.get(klass, [])
            if not values:
                continue
            n = len(values)
            xs = [max(v, 1e-3) for v in values]
            ys = [(i + 1) / n for i in range(n)]
            if n > 2000:  # thin the curve: 2,000 points draw the same picture
                step = n / 2000
                idx = sorted({min(n - 1, int(i * step)) for i in range(2000)} | {n - 1})
                xs = [xs[i] for i in idx]
                ys = [ys[i] for i in idx]
            ax.step(xs, ys, where="post", color=f"C{c}", ls=styles[r % 2],
                    label=f"{klass} [{run.policy}]")  # fmt: skip
            plotted = True
    for c, klass in enumerate(classes):
        sla = next((s.sla for run in runs for s in run.stats if s.workload_class == klass), None)
        if sla:
            ax.axvline(sla, color=f"C{c}", lw=0.8, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlim(1e-3, None)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("added latency (s, log; 1 ms = none); vertical lines: class sla_p95")
    ax.set_ylabel("share of succeeded calls")
    if plotted:
        ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def _token_plot(runs: Sequence[RunResult]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.2), layout="constrained")
    ax = fig.subplots()
    for r, run in enumerate(runs):
        n_bins = run.active_bins
        xs = [(i + 1) * run.bin_width for i in range(n_bins)]
        ax.plot(xs, run.tokens_last_minute()[:n_bins], color=f"C{r}", lw=1.2,
                label=f"served [{run.policy}]")  # fmt: skip
    ax.axhline(runs[0].quota_tokens_per_min, color="k", ls=":", label="provider quota / min")
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("tokens in the trailing minute")
    ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


def _table_html(a: RunResult, b: RunResult | None) -> str:
    runs = [a] + ([b] if b is not None else [])
    head = "".join(f"<th>{html.escape(n)}</th>" for n, _ in _COLUMNS)
    rows = []
    for run in runs:
        for s in run.stats:
            cells = "".join(f"<td>{html.escape(c)}</td>" for c in _cells(s))
            rows.append(
                f"<tr><td>{html.escape(run.policy)}</td><td>{html.escape(s.group)}</td>"
                f"<td>{html.escape(s.workload_class)}</td>{cells}</tr>"
            )
    return (
        f"<table><tr><th>policy</th><th>group</th><th>class</th>{head}</tr>"
        + "".join(rows)
        + "</table>"
    )


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
td:nth-child(-n+3),th{text-align:left}
pre{background:#f6f6f6;padding:.6em;font-size:11px;overflow-x:auto}
img{max-width:100%;margin:.3em 0}
.note{color:#8a5a00}
"""


def html_report(pairs: Sequence[Pair], title: str = "sluicegate simulation") -> str:
    """A self-contained HTML page (images inline) for one or more scenarios."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p>The clients are closed-loop, so the lead figures are measured against the "
        "<em>demand</em>: the calls each caller's script would make in the run if every call "
        "succeeded at once, the same for both policies. <q>done</q>: share of the demand that "
        "succeeded; <q>tasks ok</q>: share of its tasks (a burst, a sub-agent's job, a start-up) "
        "whose every call succeeded; <q>in SLA</q>: share of the demand that succeeded within "
        "the class's sla_p95 (<q>!</q>: below 95 %). Added latency is the time the limiter "
        "added to a call: deferred admission, client backoff and Retry-After waits.</p>",
    ]
    for a, b in pairs:
        runs = [a] + ([b] if b is not None else [])
        parts.append(f"<h2>{html.escape(a.scenario)}</h2>")
        parts.append(_table_html(a, b))
        for run in runs:
            parts.append(f"<p>{html.escape(_summary(run).strip())}</p>")
        for note in _notes(a, b):
            parts.append(f"<p class='note'>note: {html.escape(note)}</p>")
        parts.append("<h3>Admitted vs refused (429s) over time, per group</h3>")
        parts.append(f"<img alt='timeline' src='data:image/png;base64,{_timeline(runs)}'>")
        parts.append("<h3>Added latency CDF per class</h3>")
        parts.append(f"<img alt='latency CDF' src='data:image/png;base64,{_cdfs(runs)}'>")
        parts.append("<h3>Token consumption vs provider quota</h3>")
        parts.append(f"<img alt='tokens' src='data:image/png;base64,{_token_plot(runs)}'>")
        parts.append(f"<pre>{html.escape(text_report(a, b))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
