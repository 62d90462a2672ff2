"""Figures for a pull request: PNG bytes drawn from plain data (the report dicts and latency arrays).

The only module that imports matplotlib, which stays optional (``pip install 'mnist-quant[plots]'``);
:func:`available` says whether it is installed and callers skip their plots with one log line when
it is not. Callers stage the returned bytes through :class:`quant.files.Outputs` like any output.

No pyplot and no global state: each figure is a ``matplotlib.figure.Figure`` drawn under
matplotlib's default style (a user's matplotlibrc changes nothing) and rendered by Agg with no
date and a constant Software text ("mnist-quant", no version), so the same inputs give the same bytes
and a figure is known as this toolkit's (a report never replaces a user's PNG of the same name).

Benchmark figures (``<report stem>.<name>.png`` beside the benchmark report):

- ``summary``: file size, top-1 and p50 latency per batch size, one bar per model, each labelled with
  its ratio to the baseline;
- ``latency``: one panel per batch size, the distribution of each model's timed runs;
- ``confusion``: the confusion matrix of each model.

Tuning figure (``<report stem>.trials.png`` beside the tuning report): ``trials``, the accuracy of
every INC trial against the criterion, and which quantizable layers each trial left in fp32.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np

BENCHMARK = ("summary", "latency", "confusion")
TUNE = ("trials",)
SKIPPED = "skipped (matplotlib not installed)"
INSTALL_HINT = "pip install 'mnist-quant[plots]'"
DPI = 110

BASELINE_COLOR = "#8c8c8c"
MODEL_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
FP32_COLOR, INT8_COLOR, ABSENT_COLOR = "#f4a259", "#3d7ab8", "#eeeeee"
GOOD, BAD = "#2a9d3f", "#c0392b"


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib
    except ImportError:
        return False
    return matplotlib is not None


SOFTWARE = "mnist-quant"  # the PNG's Software text: constant (no version, no date), so a figure is known as ours


def path_for(json_path: str | os.PathLike, name: str) -> Path:
    """``<report stem>.<name>.png`` beside the JSON report."""
    p = Path(json_path)
    stem = p.name[:-5] if p.name.endswith(".json") else p.name
    return p.with_name(f"{stem}.{name}.png")


# ----------------------------------------------------------------------------------- helpers
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15, metadata={"Software": SOFTWARE})
    return buf.getvalue()


def _draw(build, *args) -> bytes:
    """``build(*args)`` under matplotlib's default style (never the user's rc), rendered to PNG bytes."""
    import matplotlib.style

    with matplotlib.style.context("default"):
        return _png(build(*args))


def columns(doc: dict) -> list[dict]:
    """A benchmark report's model entries in figure order: the baseline first, then the models as given."""
    return ([doc["baseline"]] if doc.get("baseline") else []) + list(doc["models"])


def _labels(doc: dict) -> list[str]:
    """Short model names (file names; the path as given when two file names are alike), the baseline marked."""
    cols = columns(doc)
    names = [os.path.basename(e["path"]) or e["path"] for e in cols]
    if len(set(names)) < len(names):
        names = [e["path"] for e in cols]
    return [f"{n} (baseline)" if e is doc.get("baseline") else n for n, e in zip(names, cols)]


def _colors(doc: dict) -> list[str]:
    cols = columns(doc)
    out, i = [], 0
    for e in cols:
        if e is doc.get("baseline"):
            out.append(BASELINE_COLOR)
        else:
            out.append(MODEL_COLORS[i % len(MODEL_COLORS)])
            i += 1
    return out


def _batch_sizes(doc: dict) -> list[str]:
    t = doc.get("timing") or {}
    return [str(b) for b in [t["batch_size"], *t.get("extra_batch_sizes", [])]] if t else []


def _time_unit(ms_values) -> tuple[str, float]:
    """("us", 1000) when every value is under 1 ms, else ("ms", 1): a unit whose numbers read easily."""
    return ("µs", 1e3) if max(ms_values) < 1.0 else ("ms", 1.0)


def _ratio(x: float) -> str:
    return f"{x:.2f}×" if x < 10 else f"{x:.1f}×"


def _signed(x: float, fmt: str = ".2f") -> str:
    return f"{x:+{fmt}}".replace("-", "\u2212")  # a real minus sign


def _machine_line(doc: dict) -> str:
    """The CPU and which of its int8-relevant flags it has (and lacks: no VNNI means no fast u8s8 dot products)."""
    env = doc.get("environment") or {}
    cpu = env.get("cpu") or {}
    flags = cpu.get("int8_flags") or {}
    has = ", ".join(k for k, v in flags.items() if v) or "none"
    lacks = ", ".join(k for k, v in flags.items() if not v)
    cores = f", {cpu['cores']} cores" if cpu.get("cores") else ""
    return f"CPU: {cpu.get('model', 'unknown')}{cores}; int8 flags: {has}" + (f" (lacks {lacks})" if lacks else "")


def _timing_line(doc: dict) -> str:
    t = doc.get("timing")
    if not t:
        return "no timings (accuracy mode)"
    threads = t.get("threads", 1)
    return (f"timings: a plain onnxruntime session (default options, {threads} thread{'s' if threads != 1 else ''}), "
            f"{t['iterations']} runs after {t['warmup']} warm-up, models interleaved")


# --------------------------------------------------------------------------- benchmark: summary
def summary_png(doc: dict) -> bytes:
    """File size, top-1 and p50 latency per batch size: one panel each, one bar per model, ratios to the baseline."""
    return _draw(_summary, doc)


def _summary(doc: dict):
    cols, labels, colors = columns(doc), _labels(doc), _colors(doc)
    base = doc.get("baseline")
    panels = [("file size (kB)", [e["bytes"] / 1000 for e in cols], lambda v: f"{v:,.1f} kB", "ratio")]
    if "accuracy" in cols[0]:
        images = cols[0].get("accuracy_stats", {}).get("images")
        panels.append(("top-1 accuracy (%)" + (f", {images:,} test images" if images else ""),
                       [100 * e["accuracy"] for e in cols], lambda v: f"{v:.2f} %", "pp"))
    for bs in _batch_sizes(doc):
        p50 = [e["by_batch"][bs]["latency_ms"]["p50"] for e in cols]
        unit, k = _time_unit(p50)
        panels.append((f"p50 latency, batch {bs} ({unit} per batch)", [k * v for v in p50],
                       (lambda v: f"{v:,.1f}") if unit == "µs" else (lambda v: f"{v:,.3f}"), "ratio"))
    n = len(panels)
    ncols = 2 if n in (2, 4) else min(n, 3)  # 2x2 rather than 3 + 1
    nrows = math.ceil(n / ncols)
    row_h = 0.42 * len(cols) + 0.75
    fig = _figure(4.0 * ncols + 1.4, row_h * nrows + 1.3)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    y = np.arange(len(cols))[::-1]
    for i, (title, values, fmt, kind) in enumerate(panels):
        ax = axes[i // ncols][i % ncols]
        ax.barh(y, values, color=colors, height=0.62)
        top = max(values) or 1.0
        for yy, v, e in zip(y, values, cols):
            text = fmt(v)
            if base is not None and e is not base:
                b = values[0]
                text += f"  ({_signed(v - b)} pp)" if kind == "pp" else (f"  ({_ratio(v / b)})" if b else "")
            ax.text(v + 0.02 * top, yy, text, va="center", ha="left", fontsize=9)
        ax.set_xlim(0, top * 1.6)  # room for the labels; the values are written on the bars, so no x axis
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_yticks(y)
        ax.set_yticklabels(labels if i % ncols == 0 else [], fontsize=9)
        ax.set_xticks([])
        ax.tick_params(axis="y", length=0)
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    base_note = ("in brackets: the ratio to the baseline (size, latency: lower is better), for top-1 the difference "
                 "in percentage points") if base is not None else "no baseline given: no ratios"
    names = ", ".join(labels[1:] if base is not None else labels)
    head = f"Benchmark: {names}" + (f" vs {labels[0]}" if base is not None else "")
    lines = [head, _machine_line(doc), _timing_line(doc)]
    gate = doc.get("gate")
    fig.suptitle("\n".join(lines), fontsize=10.5, x=0.01, ha="left")
    verdicts = []  # every model under test has its own verdict: one line each
    if gate:
        per_model = gate.get("models") or [{"path": None, "verdict": gate["verdict"], "passed": gate["passed"]}]
        verdicts = [(m["verdict"] if len(per_model) == 1 else f"{Path(m['path']).name}: {m['verdict']}",
                     GOOD if m["passed"] else BAD, "bold") for m in per_model]
    foot = verdicts + [(base_note, "#444444", "normal")]
    height = fig.get_figheight()
    for k, (line, color, weight) in enumerate(foot):  # below the panels, 0.22 in apart
        fig.text(0.01, -0.22 * k / height, line, fontsize=9, color=color, weight=weight, ha="left", va="top")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- benchmark: latency
CLIP_PERCENTILE = 99


def latency_png(doc: dict, samples: dict[str, list[np.ndarray]]) -> bytes:
    """One panel per batch size: each model's distribution of timed runs (violin, quartile bar, p50 tick).

    ``samples`` maps a batch size (as in the report's ``by_batch``) to one array of per-run times in
    nanoseconds per model, in :func:`columns` order. Each panel's axis ends at the slowest model's p99
    (the number of runs beyond it is stated); the p50 of every model is in its label.
    """
    return _draw(_latency, doc, samples)


def _violin(ax, data, positions, widths):
    import matplotlib

    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    kw = {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}
    return ax.violinplot(data, positions=positions, widths=widths, showextrema=False, points=200, **kw)


def _latency(doc: dict, samples: dict[str, list[np.ndarray]]):
    cols, labels, colors = columns(doc), _labels(doc), _colors(doc)
    sizes = [bs for bs in _batch_sizes(doc) if bs in samples] or sorted(samples, key=int)
    per_model_h = 0.55
    heights = [per_model_h * len(cols) + 0.9 for _ in sizes]
    fig = _figure(9.0, sum(heights) + 1.0)
    axes = fig.subplots(len(sizes), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    y = np.arange(len(cols))[::-1].astype(float)
    for ax, bs in zip(axes, sizes):
        ms = [np.asarray(v, dtype=np.float64) / 1e6 for v in samples[bs]]
        unit, k = _time_unit([float(np.median(v)) for v in ms])
        vals = [k * v for v in ms]
        hi = max(float(np.percentile(v, CLIP_PERCENTILE)) for v in vals)
        lo = min(float(v.min()) for v in vals)
        shown = [v[v <= hi] for v in vals]
        beyond = sum(int(np.sum(v > hi)) for v in vals)
        total = sum(len(v) for v in vals)
        parts = _violin(ax, shown, y, 0.8)
        for body, c in zip(parts["bodies"], colors):
            body.set_facecolor(c)
            body.set_edgecolor(c)
            body.set_alpha(0.45)
        ticks, base_p50 = [], None
        for yy, v, c, lab, e in zip(y, vals, colors, labels, cols):
            q1, p50, q3 = (float(x) for x in np.percentile(v, [25, 50, 75]))
            ax.hlines(yy, q1, q3, color=c, linewidth=5, alpha=0.95)
            ax.vlines(p50, yy - 0.3, yy + 0.3, color="black", linewidth=1.6)
            text = f"{lab}\np50 " + (f"{p50:,.1f} {unit}" if unit == "µs" else f"{p50:,.3f} {unit}")
            if e is doc.get("baseline"):
                base_p50 = p50
            elif base_p50:
                text += f" ({_ratio(p50 / base_p50)})"
            ticks.append(text)
        ax.set_yticks(y)
        ax.set_yticklabels(ticks, fontsize=8.5)
        ax.tick_params(axis="y", length=0)
        ax.set_ylim(y.min() - 0.6, y.max() + 0.6)
        right = max(float(v.max()) for v in shown if len(v))  # the largest value drawn (p99 may interpolate into an outlier)
        span = right - lo or right or 1.0
        ax.set_xlim(max(0.0, lo - 0.04 * span), right + 0.03 * span)
        ax.set_xlabel(f"{unit} per batch of {bs} image{'s' if bs != '1' else ''}  —  axis ends at the slowest model's "
                      f"p{CLIP_PERCENTILE}: {beyond} of {total:,} runs beyond it not drawn", fontsize=8.5)
        ax.set_title(f"batch {bs}", fontsize=10, loc="left")
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", color="#e0e0e0", linewidth=0.6)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.suptitle("Latency per timed run, by batch size (violin: distribution; thick bar: p25–p75; black tick: p50"
                 + ("; in brackets: p50 ratio to the baseline" if doc.get("baseline") else "") + ")\n"
                 f"{_machine_line(doc)}\n{_timing_line(doc)}", fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------- benchmark: confusion
def confusion_png(doc: dict) -> bytes:
    """The confusion matrix of every model with accuracy statistics (rows true, columns predicted)."""
    return _draw(_confusion, doc)


def _confusion(doc: dict):
    cms = [(lab, e) for lab, e in zip(_labels(doc), columns(doc)) if "accuracy_stats" in e]
    ncols = min(len(cms), 3)
    nrows = math.ceil(len(cms) / ncols)
    fig = _figure(4.2 * ncols, 4.3 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, (lab, e) in enumerate(cms):
        ax = axes[i // ncols][i % ncols]
        cm = np.array(e["accuracy_stats"]["confusion_matrix"])
        ax.imshow(np.log1p(cm), cmap="Blues")
        vmax = np.log1p(cm).max() or 1.0
        for r in range(cm.shape[0]):
            for c in range(cm.shape[1]):
                if cm[r, c]:
                    ax.text(c, r, str(cm[r, c]), ha="center", va="center", fontsize=6,
                            color="white" if np.log1p(cm[r, c]) > 0.7 * vmax else "black")
        ax.set_title(f"{lab}\ntop-1 {100 * e['accuracy']:.2f} %", fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(cm.shape[1]))
        ax.set_yticks(range(cm.shape[0]))
    for j in range(len(cms), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    images = cms[0][1]["accuracy_stats"].get("images")
    fig.suptitle("Confusion matrices" + (f" on {images:,} test images" if images else "")
                 + " (colour: log scale)", fontsize=10.5)
    fig.tight_layout()
    return fig


def benchmark_figures(doc: dict, samples: dict[str, list[np.ndarray]], names=BENCHMARK) -> dict[str, bytes]:
    """The benchmark figures among ``names`` that ``doc`` has data for: {name: PNG bytes}."""
    out = {}
    if "summary" in names:
        out["summary"] = summary_png(doc)
    if "latency" in names and samples:
        out["latency"] = latency_png(doc, samples)
    if "confusion" in names and any("accuracy_stats" in e for e in columns(doc)):
        out["confusion"] = confusion_png(doc)
    return out


# ------------------------------------------------------------------------------- tuning: trials
def trials_png(doc: dict) -> bytes:
    """A tuning report's trials: top-1 of each against the fp32 baseline and the criterion's floor (top), and
    which quantizable layers each trial kept in fp32 (bottom). Reads ``doc['tuning']['per_trial']``."""
    return _draw(_trials, doc)


def _trials(doc: dict):
    per = doc["tuning"]["per_trial"]
    layers: list[str] = []
    for t in per:
        for name in [*t["fp32_layers"], *t.get("int8_layers", [])]:
            if name not in layers:
                layers.append(name)

    width = min(max(6.5, 2.6 + 0.32 * len(per)), 16.0)
    grid_h = 0.3 * max(len(layers), 1) + 0.7
    fig = _figure(width, 3.2 + grid_h + 0.9)
    ax, gx = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3.2, grid_h]})
    _trial_accuracy(ax, doc)
    _trial_precision(gx, doc, layers)

    t = doc["tuning"]
    q = doc["int8"]
    base = 100 * doc["fp32"]["accuracy"]
    fig.suptitle(f"Tuning {doc.get('model_name', '')}: {len(per) - 1} INC trial(s), strategy {t['strategy']}, objective {t['objective']}"
                 f"\nwritten model: int8 top-1 {100 * q['accuracy']:.2f} % vs fp32 {base:.2f} % "
                 f"({'PASSED' if doc['passed'] else 'FAILED'}; independent re-evaluation)",
                 fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig


def _trial_accuracy(ax, doc: dict) -> None:
    """The trials figure's top panel: accuracy per trial; far-off trials are drawn at the bottom edge with their value."""
    from matplotlib.lines import Line2D

    per = doc["tuning"]["per_trial"]
    crit = doc["criterion"]
    base = 100 * doc["fp32"]["accuracy"]
    floor = 100 * crit["min_accuracy"]
    acc = np.array([100 * t["accuracy"] for t in per])
    gap = max(base - floor, 0.05)
    lo_lim = min(floor - 1.5 * gap, min(acc) - 0.3 * gap) if min(acc) >= floor - 6 * gap else floor - 1.5 * gap
    hi_lim = max(base, max(acc)) + 0.8 * gap
    ax.axhspan(lo_lim, floor, color=BAD, alpha=0.07, linewidth=0)
    ax.axhline(base, color="#555555", linewidth=1.2, label=f"fp32 baseline {base:.2f} %")
    ax.axhline(floor, color=BAD, linewidth=1.2, linestyle="--",
               label=f"accuracy floor {floor:.2f} % ({crit['kind']} {crit['tolerance']:g})")
    meets = acc >= floor - 1e-9
    for i, a in zip(np.arange(len(per)), acc):
        shown = max(a, lo_lim + 0.08 * gap)
        if i == 0:
            ax.plot(i, shown, "D", color="#555555", markersize=7, zorder=3)
        else:
            ax.plot(i, shown, "o" if a >= lo_lim else "v", color=GOOD if meets[i] else BAD, markersize=7, zorder=3)
        if len(per) <= 16 or a < lo_lim:
            ax.annotate(f"{a:.2f}" + (" (off scale)" if a < lo_lim else ""), (i, shown), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=7.5)
    ax.set_ylim(lo_lim, hi_lim)
    ax.set_ylabel("top-1 (%)" + (f", {doc['evaluation']['images']:,} test images" if doc.get("evaluation") else ""))
    marker = dict(linestyle="none", markersize=7)
    ax.legend(handles=[*ax.get_legend_handles_labels()[0],
                       Line2D([], [], marker="D", color="#555555", label="fp32 model (trial 0)", **marker),
                       Line2D([], [], marker="o", color=GOOD, label="int8 trial at or above the floor", **marker),
                       Line2D([], [], marker="o", color=BAD, label="int8 trial below the floor", **marker)],
              fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=2, frameon=False)
    ax.grid(axis="y", color="#e6e6e6", linewidth=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _trial_precision(gx, doc: dict, layers: list[str]) -> None:
    """The trials figure's bottom panel: the precision of every quantizable layer in every trial."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    per = doc["tuning"]["per_trial"]
    plan = set(((doc.get("precision_plan") or {}).get("keep_fp32") or {}))
    user = set(doc.get("quantization", {}).get("nodes_to_keep_fp32") or [])
    grid = np.full((max(len(layers), 1), len(per)), 2)
    for j, t in enumerate(per):
        fp32, int8 = set(t["fp32_layers"]), set(t.get("int8_layers", []))
        for i, name in enumerate(layers):
            grid[i, j] = 0 if name in fp32 else 1 if name in int8 else 2
    gx.imshow(grid, aspect="auto", cmap=ListedColormap([FP32_COLOR, INT8_COLOR, ABSENT_COLOR]), vmin=0, vmax=2,
              interpolation="nearest", extent=(-0.5, len(per) - 0.5, len(layers) - 0.5, -0.5))
    for j in range(len(per) + 1):
        gx.axvline(j - 0.5, color="white", linewidth=1)
    for i in range(len(layers) + 1):
        gx.axhline(i - 0.5, color="white", linewidth=1)
    gx.set_yticks(range(len(layers)))
    gx.set_yticklabels([n + (" (fp32 by the precision plan)" if n in plan else " (fp32 by the config)" if n in user else "")
                        for n in layers], fontsize=8.5)
    step = max(1, math.ceil(len(per) / 25))
    ticks = [i for i in np.arange(len(per)) if i % step == 0]
    gx.set_xticks(ticks)
    gx.set_xticklabels(["fp32" if i == 0 else str(i) for i in ticks], fontsize=8)
    gx.set_xlabel("trial (0: the fp32 model INC evaluates first)")
    gx.legend(handles=[Patch(color=FP32_COLOR, label="fp32"), Patch(color=INT8_COLOR, label="int8")],
              fontsize=7.5, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False)
    for side in ("top", "right", "bottom", "left"):
        gx.spines[side].set_visible(False)
    gx.tick_params(length=0)
