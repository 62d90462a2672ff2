"""Install from anywhere, and the set-up of scripts/env.sh: the same model from a non-editable install
in another folder, a copied config, an unsupported Python refused at once, a failed set-up cleaned up."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from helpers import DEFAULT_MNIST12_INT8_SHA256

from quant.files import sha256_bytes


def _env_without_overrides(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("QUANT_PYTHON", "PYTHON")}
    env.update(extra)
    return env


def test_env_sh_python_range_is_requires_python():
    req = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    lo, hi = re.fullmatch(r">=3\.(\d+),<3\.(\d+)", req).groups()
    text = (REPO / "scripts" / "env.sh").read_text()
    assert f"QUANT_PY_MIN={lo} QUANT_PY_MAX={int(hi) - 1}" in text


def test_unsupported_python_is_refused_at_once_with_one_line(tmp_path):
    """A Python outside 3.11-3.13 fails before anything is created (here a stand-in that says 3.10.13)."""
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\ncase "$2" in *python_version*) echo 3.10.13;; *) exit 1;; esac\n')
    fake.chmod(0o755)
    before = sorted(p.name for p in REPO.iterdir())
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(REPO / "run_tuning.sh"), "--help"], env=_env_without_overrides(PYTHON=str(fake)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Python 3.10.13" in r.stderr and "3.11-3.13" in r.stderr
    assert time.monotonic() - t0 < 30  # no install attempted (set-up takes a minute or more)
    assert sorted(p.name for p in REPO.iterdir()) == before


def test_a_failed_setup_leaves_no_venv(tmp_path):
    """A copy of the set-up whose lock cannot be installed: exit 1, one message, no .venv left."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for f in ("scripts/env.sh", "run_tests.sh", "pyproject.toml"):
        shutil.copy(REPO / f, repo / f)
    (repo / "requirements.lock").write_text("no-such-package-mnist-quant==0.0.1 --hash=sha256:" + "0" * 64 + "\n")
    r = subprocess.run(["bash", str(repo / "run_tests.sh")], env=_env_without_overrides(PYTHON=sys.executable),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "setting up" in r.stderr and "removed it, so the next run starts clean" in r.stderr
    assert not (repo / ".venv").exists() and not list(repo.glob(".venv-*")) and not list(repo.glob(".venv.link.*"))


@pytest.mark.realdata
def test_a_copied_config_works_from_another_folder(tmp_path, models_dir, mnist_dir):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(REPO / "mnist.yaml", elsewhere / "my.yaml")
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    r = run_cli("tune", f"--input_model={models_dir / 'mnist-12.onnx'}", "--config=my.yaml", f"--output_model={out}",
                f"--data_dir={mnist_dir}", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert sha256_bytes(out.read_bytes()) == DEFAULT_MNIST12_INT8_SHA256


@pytest.mark.realdata
def test_a_non_editable_install_works_from_any_folder(tmp_path, models_dir, mnist_dir):
    """pip-installed wheel (config and manifest inside the package), no --config, run from an unrelated
    folder: the same bytes as the checkout. The new venv borrows this environment's dependencies
    through a .pth line (nested .pth files such as the checkout's editable install are not read)."""
    wheels = tmp_path / "wheels"
    b = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
                       capture_output=True, text=True, timeout=600)
    assert b.returncode == 0, b.stderr
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    vpy = venv / "bin" / "python"
    site = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "borrowed-deps.pth").write_text("\n".join(deps) + "\n")
    i = subprocess.run([str(vpy), "-m", "pip", "install", "-q", "--no-deps", *map(str, wheels.glob("*.whl"))],
                       capture_output=True, text=True, timeout=300)
    assert i.returncode == 0, i.stderr
    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run([str(vpy), "-c", "import quant; print(quant.__file__)"], cwd=work, capture_output=True, text=True)
    assert where.stdout.strip().startswith(site), where  # the installed copy, not the checkout
    env = _env_without_overrides()
    r = subprocess.run([str(venv / "bin" / "mnist-quant"), "tune", f"--input_model={models_dir / 'mnist-12.onnx'}",
                        "--output_model=m.onnx", f"--data_dir={mnist_dir}"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "manifest calib_manifest.json" in r.stderr  # the packaged calibration-set definition was used
    assert sha256_bytes((work / "m.onnx").read_bytes()) == DEFAULT_MNIST12_INT8_SHA256
