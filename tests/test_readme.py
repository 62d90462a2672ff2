"""The documentation runs verbatim: every ```bash and ```python block of README.md and docs/*.md, in that
order, then the ``run:`` steps of the GitHub Actions example, in a fresh copy of the repo.

Fences: ``bash`` and ``python`` blocks are commands and must run as written from the repo root with
``../shared`` beside it; ``text`` blocks are synopses (placeholders like INT8.onnx), ``yaml`` blocks are
shown, not run (a ``yaml`` block that starts with ``# examples/...`` must equal that file), and plain
fences are output. A block may be preceded by ``<!-- readme-test: skip REASON -->`` (the skipped blocks
are listed here, :data:`EXPECTED_SKIPS`, so a new skip is a deliberate change, never a silent one) or by
``<!-- readme-test: exit N -->`` for a command shown failing on purpose (the zoo's int8 model under
validate: exit 3). The workflow's steps run with its job ``env``, except that ``FP32_MODEL`` and
``MNIST_DIR`` point into ``../shared`` (the workflow fetches the zoo model and MNIST, which needs
internet). Every block runs even when an earlier one failed; the test then lists every failure.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

FENCE = re.compile(r"(?:<!-- readme-test: (?:skip (?P<skip>[^>]*?)|exit (?P<exit>\d+)) -->\n)?^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```",
                   re.S | re.M)
PLACEHOLDER = re.compile(r"\bINT8\.onnx\b|\bFP32\.onnx\b|\bM\.onnx\b|\.\.\.\s*(#|$)|\[--\w")
EXPECTED_SKIPS = {"needs internet": 1}
# The quick start's second command is this test suite itself (CI runs it as its test command).
SELF = "bash run_tests.sh"
WORKFLOW = "examples/github-actions/int8-gate.yml"
WORKFLOW_ENV = {"FP32_MODEL": "../shared/models/mnist-12.onnx", "MNIST_DIR": "../shared/data/mnist"}


def doc_files() -> list[str]:
    return ["README.md"] + sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))


def blocks() -> list[dict]:
    out = []
    for name in doc_files():
        text = (REPO / name).read_text()
        for m in FENCE.finditer(text):
            out.append({"file": name, "lang": m.group("lang"), "body": m.group("body"), "skip": m.group("skip"),
                        "exit": int(m.group("exit") or 0), "line": text.count("\n", 0, m.start("body"))})
    return out


def workflow_steps() -> list[dict]:
    wf = yaml.safe_load((REPO / WORKFLOW).read_text())
    (job,) = wf["jobs"].values()
    return [{"file": WORKFLOW, "lang": "bash", "body": s["run"], "skip": None, "exit": 0, "line": s.get("name", "?"),
             "env": {**{k: str(v) for k, v in job.get("env", {}).items()}, **WORKFLOW_ENV}}
            for s in job["steps"] if "run" in s]


def test_every_command_block_is_runnable_as_written():
    runnable = [b for b in blocks() if b["lang"] in ("bash", "python")]
    assert len(runnable) >= 8
    assert {b["file"] for b in runnable} >= {"README.md", "docs/validate.md", "docs/benchmarks.md"}
    bad = [f"{b['file']}:{b['line']}: {line}" for b in runnable for line in b["body"].splitlines() if PLACEHOLDER.search(line)]
    assert not bad, "placeholders in runnable blocks (fence synopses as ```text): " + "; ".join(bad)
    unknown = sorted({b["lang"] for b in blocks()} - {"bash", "python", "text", "yaml", ""})
    assert not unknown, f"fence languages the README test does not know: {unknown}"
    skips: dict[str, int] = {}
    for b in runnable:
        if b["skip"]:
            skips[b["skip"]] = skips.get(b["skip"], 0) + 1
    assert skips == EXPECTED_SKIPS


def test_shown_example_files_are_the_files():
    shown = [b for b in blocks() if b["lang"] == "yaml" and b["body"].startswith("# examples/")]
    assert any(b["body"].startswith(f"# {WORKFLOW}\n") for b in shown), f"the README shows {WORKFLOW}"
    for b in shown:
        name = b["body"].splitlines()[0][2:].strip()
        assert b["body"] == (REPO / name).read_text(), f"{b['file']}:{b['line']} differs from {name}"


def test_the_workflow_has_the_steps_a_ci_gate_needs():
    text = (REPO / WORKFLOW).read_text()
    steps = workflow_steps()
    assert "${{" not in "".join(s["body"] for s in steps), "run: steps must run as written (no expressions)"
    for words in ("run_tuning.sh", "run_benchmark.sh", "--max_accuracy_drop", "quant validate", "actions/upload-artifact",
                  "actions/setup-python"):
        assert words in text, words


def _copy_repo(dest: Path) -> None:
    """The repo as a fresh clone would have it (tracked and new, non-ignored files), without .venv."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.mark.realdata
def test_readme_runs_verbatim(tmp_path, mnist_dir, models_dir):
    shared = mnist_dir.parent.parent
    assert (shared / "models").resolve() == models_dir.resolve(), "the README's ../shared must hold both the data and the models"
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_repo(repo)
    (tmp_path / "shared").symlink_to(shared)
    (repo / ".venv").symlink_to(Path(sys.prefix))  # the README's .venv/bin/python: this test's environment
    env = {**os.environ, "QUANT_PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    env.pop("MNIST_DIR", None)  # the README's commands name ../shared themselves
    env.pop("QUANT_MODELS_DIR", None)
    ran, failures = 0, []
    for b in blocks() + workflow_steps():
        if b["lang"] not in ("bash", "python") or b["skip"]:
            continue
        body = b["body"].replace(SELF + "\n", ": " + SELF + "  # this test suite itself\n") if b["lang"] == "bash" else b["body"]
        cmd = ["bash", "-e", "-o", "pipefail", "-c", body] if b["lang"] == "bash" else [str(repo / ".venv/bin/python"), "-c", body]
        r = subprocess.run(cmd, cwd=repo, env={**env, **b.get("env", {})}, capture_output=True, text=True, timeout=1200)
        if r.returncode != b["exit"]:
            failures.append(f"{b['file']}:{b['line']} ({b['lang']} block starting {b['body'].splitlines()[0]!r}) exited "
                            f"{r.returncode}, expected {b['exit']}:\n{r.stderr[-1500:]}")
        ran += 1
    assert not failures, f"{len(failures)} of {ran} blocks failed:\n\n" + "\n\n".join(failures)
    assert ran >= 8
    assert (repo / "mnist-12-int8.onnx").is_file() and (repo / "reports").is_dir()
