"""quant.report.plots: figures from hand-built report dicts and arrays (valid, deterministic PNGs of the expected
shape and content), and the benchmark/tune wiring when matplotlib is missing."""

import re
import sys

import numpy as np
import pytest

from quant.report import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CPU = {"model": "Test CPU", "cores": 2, "int8_flags": {"avx2": True, "avx512f": False, "avx512_vnni": False}}


def _entry(path, nbytes, acc, p50s, seed):
    rng = np.random.default_rng(seed)
    cm = np.diag(rng.integers(80, 100, 10))
    cm[3, 5] = 4
    return {"path": path, "bytes": nbytes, "accuracy": acc,
            "accuracy_stats": {"top1": acc, "images": int(cm.sum()), "confusion_matrix": cm.tolist()},
            "by_batch": {bs: {"latency_ms": {"p50": p50}} for bs, p50 in p50s.items()}}


def _bench_doc(n_models=2, sizes=(1, 64), baseline=True, mode="all"):
    scale = {str(bs): 0.05 * bs ** 0.8 for bs in sizes}
    models = [_entry(f"/some/folder/model{i}-int8.onnx", 10_000 + 500 * i, 0.985 - 0.01 * i, {bs: v * (0.6 + 0.3 * i) for bs, v in scale.items()}, i)
              for i in range(n_models)]
    if mode == "performance":
        for m in models:
            del m["accuracy"], m["accuracy_stats"]
    doc = {"mode": mode, "models": models, "baseline": _entry("fp32.onnx", 26_143, 0.989, scale, 99) if baseline else None,
           "environment": {"cpu": CPU},
           "timing": {"batch_size": sizes[0], "extra_batch_sizes": list(sizes[1:]), "iterations": 300, "warmup": 20, "threads": 1}}
    if baseline and mode == "performance":
        del doc["baseline"]["accuracy"], doc["baseline"]["accuracy_stats"]
    return doc


def _samples(doc, iterations=300):
    """Per-run ns per batch size, in plots.columns order: log-normal around each entry's p50, a few outliers."""
    rng = np.random.default_rng(0)
    out = {}
    for bs in [doc["timing"]["batch_size"], *doc["timing"]["extra_batch_sizes"]]:
        runs = []
        for e in plots.columns(doc):
            v = e["by_batch"][str(bs)]["latency_ms"]["p50"] * 1e6 * rng.lognormal(0, 0.15, iterations)
            v[:3] *= 40  # outliers that would squash a plain histogram
            runs.append(v.astype(np.int64))
        out[str(bs)] = runs
    return out


def _tune_doc(trials):
    return {"model_name": "mnist-12", "passed": True, "criterion": {"kind": "relative", "tolerance": 0.01, "min_accuracy": 0.9791},
            "fp32": {"accuracy": 0.989}, "int8": {"accuracy": 0.9891}, "evaluation": {"images": 10000},
            "precision_plan": {"keep_fp32": {"Conv1": "1 input channel"}}, "quantization": {"nodes_to_keep_fp32": []},
            "tuning": {"strategy": "basic", "objective": "accuracy", "per_trial": trials}}


FAKE_TRIALS = [
    {"trial": 0, "accuracy": 0.989, "fp32_layers": ["Conv1", "Conv2", "Gemm"], "int8_layers": []},
    {"trial": 1, "accuracy": 0.5452, "fp32_layers": ["Conv1"], "int8_layers": ["Conv2", "Gemm"]},  # far below: drawn at the edge
    {"trial": 2, "accuracy": 0.9795, "fp32_layers": ["Conv1", "Gemm"], "int8_layers": ["Conv2"]},
]


def _image(png):
    import io

    import matplotlib.image

    assert png[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(io.BytesIO(png), format="png")


@pytest.fixture(autouse=True)
def _needs_matplotlib(request):
    if "without_matplotlib" not in request.node.name:
        pytest.importorskip("matplotlib")


@pytest.mark.parametrize("name", ["summary", "latency", "confusion", "trials"])
def test_figures_are_valid_deterministic_pngs_of_a_readable_size(name):
    doc = _tune_doc(FAKE_TRIALS) if name == "trials" else _bench_doc()
    draw = {"summary": lambda: plots.summary_png(doc), "latency": lambda: plots.latency_png(doc, _samples(doc)),
            "confusion": lambda: plots.confusion_png(doc), "trials": lambda: plots.trials_png(doc)}[name]
    png = draw()
    img = _image(png)
    h, w = img.shape[:2]
    assert 500 <= w <= 2000 and 300 <= h <= 2000, (w, h)  # pasteable: neither a thumbnail nor a poster
    assert draw() == png  # same inputs, same bytes
    assert b"matplotlib" not in png.lower() and b"Date" not in png[:200]  # no version or date metadata
    assert b"Software\x00mnist-quant" in png[:128]  # known as this toolkit's figure (report.is_replaceable)


def test_summary_has_size_accuracy_and_a_panel_per_batch_size_with_ratios_and_the_cpu_flags():
    doc = _bench_doc(n_models=2, sizes=(1, 8, 64))
    fig = plots._summary(doc)
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_visible()]
    assert titles[0] == "file size (kB)" and titles[1].startswith("top-1 accuracy (%)")
    assert [t.split(",")[1].split("(")[0].strip() for t in titles[2:]] == ["batch 1", "batch 8", "batch 64"]
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    ratio = doc["models"][0]["bytes"] / 1000 / (doc["baseline"]["bytes"] / 1000)
    assert f"({ratio:.2f}×)" in " ".join(texts)  # size ratio to the baseline on the bar
    assert any("pp)" in t for t in texts)  # top-1 difference in percentage points
    title = fig._suptitle.get_text()
    assert "int8 flags: avx2 (lacks avx512f, avx512_vnni)" in title and "plain onnxruntime session" in title


def test_summary_without_baseline_or_accuracy_draws_no_ratios():
    doc = _bench_doc(n_models=1, sizes=(1,), baseline=False, mode="performance")
    fig = plots._summary(doc)
    assert [ax.get_title(loc="left") for ax in fig.axes if ax.get_visible()] == ["file size (kB)", "p50 latency, batch 1 (µs per batch)"]
    assert not any("×" in t.get_text() for ax in fig.axes for t in ax.texts)
    _image(plots.summary_png(doc))


@pytest.mark.parametrize("n_models,sizes", [(1, (1,)), (4, (1, 8, 64))])
def test_latency_has_one_panel_per_batch_size_with_every_model_and_its_p50(n_models, sizes):
    doc = _bench_doc(n_models=n_models, sizes=sizes)
    samples = _samples(doc)
    fig = plots._latency(doc, samples)
    assert [ax.get_title(loc="left") for ax in fig.axes] == [f"batch {bs}" for bs in sizes]
    for ax, bs in zip(fig.axes, sizes):
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert len(labels) == n_models + 1 and labels[0].startswith("fp32.onnx (baseline)\np50 ")
        p50 = np.median(samples[str(bs)][1]) / 1e6
        unit, k = ("µs", 1e3) if max(np.median(v) / 1e6 for v in samples[str(bs)]) < 1 else ("ms", 1)
        assert f"p50 {k * p50:,.1f} {unit}" in labels[1] or f"p50 {k * p50:,.3f} {unit}" in labels[1]
        assert "×)" in labels[1]  # the ratio to the baseline
        lo, hi = ax.get_xlim()
        biggest = max(v.max() for v in samples[str(bs)]) / 1e6 * k
        assert hi < biggest / 5  # the 40x outliers are cut off, not squashing the panel ...
        cut = re.search(r"p99: (\d+) of ([\d,]+) runs beyond it not drawn", ax.get_xlabel())  # ... and the cut is stated
        assert cut and int(cut[1]) >= 3 * (n_models + 1) and cut[2] == f"{300 * (n_models + 1):,}"


def test_confusion_keeps_one_matrix_per_model_and_counts():
    doc = _bench_doc(n_models=2)
    fig = plots._confusion(doc)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 3 and shown[0].get_title().startswith("fp32.onnx (baseline)\ntop-1 98.90 %")
    assert "4" in [t.get_text() for t in shown[0].texts]  # the off-diagonal count is written in its cell


def test_trials_figure_shows_accuracy_against_the_floor_and_the_fp32_layers_of_each_trial():
    fig = plots._trials(_tune_doc(FAKE_TRIALS))
    acc_ax, grid_ax = fig.axes[:2]
    lines = sorted(round(line.get_ydata()[0], 4) for line in acc_ax.get_lines() if len(line.get_ydata()) == 2)
    assert lines == [97.91, 98.9]  # the floor and the fp32 baseline
    lo, _ = acc_ax.get_ylim()
    assert lo > 90  # the 54.52 % trial does not squash the axis ...
    assert "54.52 (off scale)" in [t.get_text() for t in acc_ax.texts]  # ... it is drawn at the edge with its value
    assert [t.get_text() for t in grid_ax.get_yticklabels()] == ["Conv1 (fp32 by the precision plan)", "Conv2", "Gemm"]
    grid = grid_ax.images[0].get_array()
    assert grid.tolist() == [[0, 0, 0], [0, 1, 1], [0, 1, 0]]  # 0 fp32, 1 int8: rows layers, columns trials
    assert [t.get_text() for t in grid_ax.get_xticklabels()] == ["fp32", "1", "2"]


def test_many_trials_stay_readable():
    trials = [FAKE_TRIALS[0]] + [{**FAKE_TRIALS[2], "trial": i, "accuracy": 0.975 + 0.0001 * i} for i in range(1, 80)]
    png = plots.trials_png(_tune_doc(trials))
    h, w = _image(png).shape[:2]
    assert w <= 2000 and h <= 2000
    fig = plots._trials(_tune_doc(trials))
    assert len(fig.axes[1].get_xticks()) <= 26  # thinned tick labels


def test_path_for_names_figures_beside_the_report(tmp_path):
    assert plots.path_for(tmp_path / "b.json", "latency") == tmp_path / "b.latency.png"
    assert plots.path_for(tmp_path / "m8.report.json", "trials") == tmp_path / "m8.report.trials.png"


def test_without_matplotlib_benchmark_skips_plots_with_one_line(tmp_path, synth_dir, monkeypatch):
    from conftest import synth_config
    from helpers import api_options, mnist12_like, save

    from quant.workflows import benchmark

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert not plots.available()
    m = save(mnist12_like(), tmp_path / "m.onnx")
    logs = []
    doc = benchmark.benchmark_models([str(m)], None, config=synth_config(tmp_path), data_dir=str(synth_dir), log=logs.append,
                                     **api_options(benchmark.BenchmarkOptions, {"iterations": 3, "warmup": 0, "report_path": str(tmp_path / "b.json")}))
    assert doc["plots"] == plots.SKIPPED and not list(tmp_path.glob("*.png"))
    assert [line for line in logs if "not installed" in line] == [
        "[benchmark] matplotlib is not installed: plots skipped (pip install 'mnist-quant[plots]')"]
