import json
import os
import re

import numpy as np
import pytest
from conftest import REPO, synth_config

from quant import config, data
from quant.data import calib
from quant.errors import ConfigError, DataError
from quant.workflows import inputs


def test_select_indices_deterministic_distinct_sorted():
    a = calib.select_indices(60000, 100, 9527)
    assert a == calib.select_indices(60000, 100, 9527)
    assert a != calib.select_indices(60000, 100, 1)
    assert len(set(a)) == 100 and a == sorted(a) and 0 <= min(a) and max(a) < 60000
    with pytest.raises(ConfigError):
        calib.select_indices(10, 11, 0)


def test_build_ad_hoc_and_from_manifest(tmp_path, synth_dir):
    cfg = config.load(synth_config(tmp_path))
    train = data.load_split(synth_dir, "train", verify=False)
    cs = inputs.calibration_set(cfg, train)
    assert cs.x.shape == (50, 1, 28, 28) and cs.x.dtype == np.float32 and cs.x.max() <= 1.0
    assert cs.definition["source"].startswith("ad hoc") and cs.sha256 == calib.array_sha256(cs.x)
    # record it in a manifest, then a config pointing there uses (and checks) that entry
    m = tmp_path / "manifest.json"
    calib.write_manifest(m, [calib.manifest_entry(cs, "s50")])
    cfg2 = config.load(synth_config(tmp_path, {"quantization": {"calibration": {"manifest": str(m), "sampling_size": 50}}}))
    cs2 = inputs.calibration_set(cfg2, train)
    assert cs2.definition["name"] == "s50" and cs2.sha256 == cs.sha256
    # the data changed under the manifest -> loud failure
    doc = json.loads(m.read_text())
    doc["sets"][0]["sha256"] = "0" * 64
    m.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="differs from the manifest"):
        inputs.calibration_set(cfg2, train)


def test_sampling_size_larger_than_split(tmp_path, synth_dir):
    cfg = config.load(synth_config(tmp_path, {"quantization": {"calibration": {"manifest": None, "sampling_size": 5000}}}))
    with pytest.raises(ConfigError, match="larger than the train split"):
        inputs.calibration_set(cfg, data.load_split(synth_dir, "train", verify=False))


def test_dataloader_is_inc_compatible():
    x = np.zeros((5, 1, 28, 28), np.float32)
    dl = calib.CalibDataLoader(x, np.arange(5), batch_size=2)
    batches = list(dl)
    assert dl.batch_size == 2 and len(dl) == 3
    assert [b[0].shape[0] for b in batches] == [2, 2, 1] and batches[2][1].tolist() == [4]


def test_committed_manifest_has_no_pixels():
    doc = json.loads(calib.BUILTIN_MANIFEST.read_text())
    for s in doc["sets"]:
        assert set(s) == {"name", "split", "count", "seed", "preprocessing", "shape", "sha256", "indices"}
        assert s["split"] == "train" and len(s["indices"]) == s["count"]


@pytest.mark.parametrize("change,words", [
    (lambda e: e.update(indices=e["indices"][:-1] + [60000]), "index 60000 is outside the train split (0..59999)"),
    (lambda e: e.update(indices=e["indices"][:-1] + [-1]), "index -1 is outside the train split"),
    (lambda e: e.update(indices=e["indices"][:-1] + [e["indices"][0]]), "repeats an index"),
    (lambda e: e.update(indices=e["indices"][:-1]), "has 99 indices but count 100"),
    (lambda e: e.pop("sha256"), "missing 'sha256'"),
    (lambda e: e.update(sha256=12), "sha256 must be 64 hex digits, got 12"),
    (lambda e: e.update(count="100"), 'count must be an integer >= 1, got "100"'),
    (lambda e: e.update(indices=[0.5] * 100), "indices must be a list of integers"),
])
def test_malformed_manifest_entries_are_named_config_errors(tmp_path, change, words):
    """A manifest edited by hand: every field build() relies on is checked when read (exit 2), never an IndexError."""
    doc = json.loads(calib.BUILTIN_MANIFEST.read_text())
    change(doc["sets"][0])
    p = tmp_path / "m.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=re.escape(f"m.json: set 'train-100-seed9527': {words}")):
        calib.read_manifest(p)


def test_hostile_manifests_are_config_errors(tmp_path):
    """Read bounded like every input (files.read_regular_file); malformed content is one ConfigError, never exit 1."""
    os.mkfifo(tmp_path / "fifo.json")
    with open(tmp_path / "huge.json", "wb") as f:
        f.truncate(calib.MAX_MANIFEST_BYTES + 1)  # sparse: never read
    (tmp_path / "deep.json").write_text("[" * 100_000)  # json.loads raises RecursionError
    (tmp_path / "not_sets.json").write_text('{"sets": [1, 2]}')
    for name, words in (("fifo.json", "calibration manifest (quantization.calibration.manifest) is a FIFO"),
                        ("huge.json", f"is {calib.MAX_MANIFEST_BYTES + 1} bytes, over the {calib.MAX_MANIFEST_BYTES} byte limit"),
                        ("missing.json", "calibration manifest (quantization.calibration.manifest) not found"),
                        ("deep.json", "is not a readable JSON manifest (maximum recursion depth exceeded"),
                        ("not_sets.json", "has no 'sets' list of set definitions")):
        with pytest.raises(ConfigError) as e:
            calib.read_manifest(tmp_path / name)
        assert name in str(e.value) and words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.realdata
def test_committed_manifest_matches_real_data(splits, tmp_path):
    cfg = config.load(REPO / "mnist.yaml")
    cs = inputs.calibration_set(cfg, splits["train"])  # raises if the sha256 differs
    assert cs.definition["name"] == "train-100-seed9527" and cs.definition["source"].startswith("manifest")
    out = calib.save_array(cs, tmp_path)
    assert np.array_equal(np.load(out), cs.x)
