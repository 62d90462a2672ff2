"""Nothing of the user's is written, appended to or deleted at any moment, through the command line: a
folder the run replaces whole is checked again at commit time, aside and staging names are unguessable
and created exclusively, $GITHUB_STEP_SUMMARY is never a file the run uses, a full disk names the file."""

import os
import subprocess
import sys

from conftest import REPO, run_cli, synth_config
from helpers import mnist12_like, save

# Runs the command line after ``PATCH`` (Python code with ``files``, ``os`` and ``errno`` imported).
_WRAPPER = """
import errno, os, sys
from quant import cli, files
{patch}
sys.exit(cli.main(sys.argv[1:]))
"""

# A file of the user's appears in the test-data folder after the run's checks, just before its commit.
_ADD_BEFORE_COMMIT = """
_commit = files.Outputs.commit
def commit(self):
    target = os.environ["TEST_ADD_FILE"]
    with open(target, "w") as f:
        f.write("mine")
    return _commit(self)
files.Outputs.commit = commit
"""


def _run(patch: str, *args, env=None, cwd=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", _WRAPPER.format(patch=patch), *args], cwd=cwd or REPO, env=e,
                          capture_output=True, text=True, timeout=300)


def _one_line(r, code, *words):
    assert r.returncode == code, (r.returncode, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr and last.startswith("error: "), r.stderr
    for w in words:
        assert w in last, (w, r.stderr)


def _tree(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _old_test_data(folder):
    for i in range(2):
        (folder / f"test_data_set_{i}").mkdir(parents=True)
        (folder / f"test_data_set_{i}" / "input_0.pb").write_bytes(b"old in")
        (folder / f"test_data_set_{i}" / "output_0.pb").write_bytes(b"old out")


def test_a_file_added_to_the_test_data_folder_during_tune_is_kept_and_the_commit_refused(tmp_path, synth_dir):
    m = save(mnist12_like(), tmp_path / "m.onnx")
    cfg = synth_config(tmp_path, {"tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 2}})
    out = tmp_path / "out"
    _old_test_data(out / "int8_test_data")
    (out / "int8.onnx").write_bytes(b"old model")
    before = _tree(out)
    mine = out / "int8_test_data" / "test_data_set_0" / "notes.txt"
    r = _run(_ADD_BEFORE_COMMIT, "tune", f"--input_model={m}", f"--config={cfg}", f"--data_dir={synth_dir}",
             f"--output_model={out / 'int8.onnx'}", "--no_plots", env={"TEST_ADD_FILE": str(mine)})
    _one_line(r, 2, str(out / "int8_test_data"), "test_data_set_0/notes.txt", "added while it ran", "nothing was written")
    assert _tree(out) == {**before, "int8_test_data/test_data_set_0/notes.txt": b"mine"}  # old model, old sets, the user's file


def test_a_file_added_during_write_test_data_is_kept_and_the_commit_refused(tmp_path, synth_dir):
    m = save(mnist12_like(), tmp_path / "m.onnx")
    cfg = synth_config(tmp_path)
    dest = tmp_path / "sets"
    _old_test_data(dest)
    before = _tree(dest)
    r = _run(_ADD_BEFORE_COMMIT, "write-test-data", f"--input_model={m}", f"--config={cfg}", f"--data_dir={synth_dir}",
             f"--output_dir={dest}", env={"TEST_ADD_FILE": str(dest / "README")})
    _one_line(r, 2, "README", "added while it ran")
    assert _tree(dest) == {**before, "README": b"mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "mnist", "sets", "synth.yaml"]  # no staging or aside left


def test_aside_and_staging_names_cannot_be_guessed_from_the_pid(tmp_path, synth_dir):
    """As PID 1 in a container, ``.NAME.1.replaced`` was the aside name and a user's file of that name was deleted."""
    m = save(mnist12_like(), tmp_path / "m.onnx")
    cfg = synth_config(tmp_path)
    dest = tmp_path / "sets"
    _old_test_data(dest)
    for name in (".sets.1.replaced", ".sets.1.aside", ".sets.1.tmp"):
        (tmp_path / name).write_text("the user's")
    seen = []
    patch = """
os.getpid = lambda: 1
import secrets
_hex = secrets.token_hex
def token_hex(n):
    v = _hex(n)
    print("[test] name " + v, file=sys.stderr)
    return v
secrets.token_hex = token_hex
"""
    r = _run(patch, "write-test-data", f"--input_model={m}", f"--config={cfg}", f"--data_dir={synth_dir}", f"--output_dir={dest}")
    assert r.returncode == 0, r.stderr
    seen = [line.split()[-1] for line in r.stderr.splitlines() if line.startswith("[test] name ")]
    assert len(seen) >= 2 and all(len(v) == 16 for v in seen) and len(set(seen)) == len(seen), r.stderr
    for name in (".sets.1.replaced", ".sets.1.aside", ".sets.1.tmp"):
        assert (tmp_path / name).read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".sets")) == [".sets.1.aside", ".sets.1.replaced", ".sets.1.tmp"]


def test_step_summary_is_never_appended_to_a_file_the_run_reads(tmp_path, synth_dir):
    m = save(mnist12_like(), tmp_path / "m.onnx")
    base = save(mnist12_like(seed=1), tmp_path / "base.onnx")
    cfg = synth_config(tmp_path)
    link = tmp_path / "link.onnx"
    os.link(base, link)
    for target, what in ((base, "--baseline_model"), (link, "--baseline_model"), (m, "--input_model"), (cfg, "--config"),
                         (synth_dir / "t10k-labels-idx1-ubyte.gz", "MNIST file")):
        before = target.read_bytes()
        r = run_cli(f"--input_model={m}", f"--baseline_model={base}", f"--config={cfg}", f"--data_dir={synth_dir}", "--mode=all",
                    "--iterations=3", "--warmup=0", f"--report={tmp_path / 'b.json'}", "--no_plots", script="run_benchmark.sh",
                    env={"GITHUB_STEP_SUMMARY": str(target)})
        assert r.returncode in (0, 3), r.stderr
        assert target.read_bytes() == before, what
        assert f"$GITHUB_STEP_SUMMARY {target}: it is the {what}" in r.stderr and "summary not appended" in r.stderr, r.stderr
    ok = tmp_path / "summary.md"
    r = run_cli(f"--input_model={m}", f"--config={cfg}", f"--data_dir={synth_dir}", "--iterations=3", "--warmup=0",
                f"--report={tmp_path / 'b.json'}", "--no_plots", script="run_benchmark.sh", env={"GITHUB_STEP_SUMMARY": str(ok)})
    assert r.returncode == 0 and "file bytes" in ok.read_text(), r.stderr


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path, synth_dir):
    """ENOSPC from write or fsync carries no file name; the one line names the output."""
    m = save(mnist12_like(), tmp_path / "m.onnx")
    cfg = synth_config(tmp_path)
    patch = """
def fsync(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
os.fsync = fsync
"""
    r = _run(patch, "benchmark", f"--input_model={m}", f"--config={cfg}", f"--data_dir={synth_dir}", "--iterations=2",
             "--warmup=0", f"--report={tmp_path / 'r.json'}", "--no_plots")
    _one_line(r, 5, str(tmp_path / "r.json"), "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "mnist", "synth.yaml"]
