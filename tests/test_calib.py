import json

import numpy as np
import pytest

from conftest import REPO, synth_config
from quant import calib, config, data
from quant.errors import ConfigError, DataError


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
    cs = calib.build(cfg, train)
    assert cs.x.shape == (50, 1, 28, 28) and cs.x.dtype == np.float32 and cs.x.max() <= 1.0
    assert cs.definition["source"].startswith("ad hoc") and cs.sha256 == calib.array_sha256(cs.x)
    # record it in a manifest, then a config pointing there uses (and checks) that entry
    m = tmp_path / "manifest.json"
    calib.write_manifest(m, [calib.manifest_entry(cs, "s50")])
    cfg2 = config.load(synth_config(tmp_path, {"quantization": {"calibration": {"manifest": str(m), "sampling_size": 50}}}))
    cs2 = calib.build(cfg2, train)
    assert cs2.definition["name"] == "s50" and cs2.sha256 == cs.sha256
    # the data changed under the manifest -> loud failure
    doc = json.loads(m.read_text())
    doc["sets"][0]["sha256"] = "0" * 64
    m.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="differs from the manifest"):
        calib.build(cfg2, train)


def test_sampling_size_larger_than_split(tmp_path, synth_dir):
    cfg = config.load(synth_config(tmp_path, {"quantization": {"calibration": {"manifest": None, "sampling_size": 5000}}}))
    with pytest.raises(ConfigError, match="larger than the train split"):
        calib.build(cfg, data.load_split(synth_dir, "train", verify=False))


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


@pytest.mark.realdata
def test_committed_manifest_matches_real_data(splits, tmp_path):
    cfg = config.load(REPO / "mnist.yaml")
    cs = calib.build(cfg, splits["train"])  # raises if the sha256 differs
    assert cs.definition["name"] == "train-100-seed9527" and cs.definition["source"].startswith("manifest")
    out = calib.save_array(cs, tmp_path)
    assert np.array_equal(np.load(out), cs.x)
