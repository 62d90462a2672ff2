"""Text a model brings (producer, metadata, node and tensor names) is data: bounded, parsed with limits,
validated, and escaped wherever it is printed or written into a report."""

import json

import onnx
import pytest
from conftest import run_cli, synth_config
from helpers import mnist12_like, save

KEY = "mnist_quant.preprocessing"
GOOD = {"scale": "1/255", "mean": 0.0, "std": 1.0, "layout": "NCHW"}
UNUSABLE = {
    "division by zero": json.dumps({**GOOD, "scale": "1/0"}),
    "1e999": json.dumps(GOOD).replace("0.0", "1e999"),
    "NaN": json.dumps(GOOD).replace("0.0", "NaN"),
    "deep nesting": "[" * 100_000 + "]" * 100_000,
    "nesting within the size limit": "[" * 2000 + "]" * 2000,
    "10 MB value": "1" * 10_000_000,
    "not an object": "[1, 2]",
    "std 0": json.dumps({**GOOD, "std": 0.0}),
    "a huge integer": json.dumps(GOOD).replace("0.0", "9" * 5000),
}
FORGED = "evil\nPASS all checks\r\nerror: forged\x1b[2J\u202e"


def _model(tmp_path, name="m.onnx", meta=None, producer=None, seed=0):
    m = mnist12_like(seed=seed)
    if meta is not None:
        onnx.helper.set_model_props(m, {KEY: meta})
    if producer is not None:
        m.producer_name = producer
    return save(m, tmp_path / name)


def _no_forged_lines(text: str):
    for line in text.splitlines():
        assert not line.startswith(("PASS", "error: forged")) and "\x1b" not in line and "\u202e" not in line, line


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_validate_refuses_unusable_preprocessing_metadata_in_one_line(case, tmp_path, synth_dir):
    m = _model(tmp_path, meta=UNUSABLE[case], producer=FORGED)
    base = _model(tmp_path, "base.onnx")
    for extra in ([], [f"--config={synth_config(tmp_path)}"]):
        r = run_cli("validate", f"--input_model={m}", f"--baseline_model={base}", f"--data_dir={synth_dir}", "--samples=10",
                    f"--report={tmp_path / 'v.json'}", *extra, timeout=120)
        assert r.returncode == 4, (case, r.returncode, r.stderr[-500:])
        assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"error: {m}: {KEY} is unusable ("), r.stderr[:500]
        assert len(r.stderr) < 1000 and not (tmp_path / "v.json").exists()


def test_a_forged_producer_and_a_10_mb_value_stay_one_short_line(tmp_path, synth_dir):
    """A newline in producer_name forged PASS/error lines; 10 MB made stderr and both reports 10 MB."""
    meta = json.dumps({**GOOD, "scale": "1"})  # usable, but disagrees with the config: a warning naming the producer
    m = _model(tmp_path, meta=meta, producer=FORGED + "x" * 10_000_000)
    cfg = synth_config(tmp_path)
    r = run_cli("benchmark", f"--input_model={m}", f"--config={cfg}", f"--data_dir={synth_dir}", "--mode=all", f"--baseline_model={m}",
                "--iterations=2", "--warmup=0", f"--report={tmp_path / 'b.json'}", "--no_plots", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    warning = [line for line in r.stderr.splitlines() if line.startswith("[warning]")]
    assert warning and "evil\\nPASS all checks\\r\\nerror: forged\\x1b[2J\\u202e" in warning[0], r.stderr[:3000]
    assert "characters)" in warning[0] and len(r.stderr) < 20_000
    _no_forged_lines(r.stderr)
    for name in ("b.json", "b.md"):
        text = (tmp_path / name).read_text()
        assert len(text) < 200_000, (name, len(text))
        _no_forged_lines(text)
    r = run_cli("tune", f"--input_model={m}", f"--config={cfg}", f"--data_dir={synth_dir}", f"--output_model={tmp_path / 'q.onnx'}",
                "--no_plots", timeout=300)
    assert r.returncode in (0, 3), r.stderr[-2000:]
    assert len(r.stderr) < 20_000 and len(r.stdout) < 200_000
    _no_forged_lines(r.stderr)
    _no_forged_lines(r.stdout)


NAMES = {"a newline": "conv\nPASS all checks", "an escape sequence": "conv\x1b[31m", "a bidi override": "conv\u202egnp.exe",
         "5,000 characters": "c" * 5000}


@pytest.mark.parametrize("case", list(NAMES))
@pytest.mark.parametrize("cmd", ["tune", "benchmark", "validate"])
def test_node_and_tensor_names_with_control_characters_or_oversized_are_refused(cmd, case, tmp_path, synth_dir):
    m = mnist12_like()
    node = m.graph.node[0]
    old = node.output[0]
    node.name = NAMES[case]
    renamed = NAMES[case] + "_out"
    node.output[0] = renamed
    for n in m.graph.node[1:]:
        for i, t in enumerate(n.input):
            if t == old:
                n.input[i] = renamed
    p = save(m, tmp_path / "m.onnx")
    good = _model(tmp_path, "good.onnx")
    common = [f"--config={synth_config(tmp_path)}", f"--data_dir={synth_dir}"]
    if cmd == "tune":
        args = ["tune", f"--input_model={p}", f"--output_model={tmp_path / 'q.onnx'}", *common]
    else:
        args = [cmd, f"--input_model={p}", f"--baseline_model={good}", f"--report={tmp_path / 'r.json'}", *common]
    r = run_cli(*args, timeout=120)
    assert r.returncode == 4, r.stderr[-1000:]
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"error: {p}: ") and "name" in r.stderr, r.stderr[:1000]
    assert len(r.stderr) < 1000
    _no_forged_lines(r.stderr)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["good.onnx", "m.onnx", "mnist", "synth.yaml"]


def test_a_line_break_in_a_model_path_stays_inside_its_markdown_table_cell(tmp_path, synth_dir):
    m = save(mnist12_like(), tmp_path / "m\nPASS.onnx")
    r = run_cli("benchmark", f"--input_model={m}", f"--config={synth_config(tmp_path)}", f"--data_dir={synth_dir}", "--iterations=2",
                "--warmup=0", f"--report={tmp_path / 'b.json'}", "--no_plots", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    md = (tmp_path / "b.md").read_text()
    assert "m\\nPASS.onnx" in md and not any(line.startswith("PASS") for line in md.splitlines()), md[:2000]
    _no_forged_lines(r.stderr)


def test_a_line_break_in_a_path_never_starts_a_markdown_line_in_any_report(tmp_path, synth_dir):
    d = tmp_path / "a\nPASS"
    d.mkdir()
    m = save(mnist12_like(), d / "m.onnx")
    cfg = synth_config(tmp_path, {"tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 2}})
    common = [f"--config={cfg}", f"--data_dir={synth_dir}"]
    r = run_cli("tune", f"--input_model={m}", f"--output_model={d / 'q.onnx'}", "--no_plots", *common, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r2 = run_cli("validate", f"--input_model={d / 'q.onnx'}", f"--baseline_model={m}", f"--report={d / 'v.json'}", "--samples=5",
                 *common, timeout=300)
    assert r2.returncode in (0, 3), r2.stderr[-2000:]
    for text in (r.stdout, (d / "q.report.md").read_text(), (d / "v.md").read_text(), r2.stdout):
        assert "a\\nPASS" in text and not any(line.startswith("PASS") for line in text.splitlines()), text[:3000]
