import gzip
import hashlib
import io
import os
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import idx_bytes, write_idx, write_mnist

from quant import data
from quant.config import preprocessing
from quant.errors import DataError, InputError


def test_read_idx_gz_and_raw_roundtrip(tmp_path):
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    assert np.array_equal(data.read_idx(write_idx(tmp_path / "a.gz", arr, gz=True)), arr)
    assert np.array_equal(data.read_idx(write_idx(tmp_path / "a", arr, gz=False)), arr)


@pytest.mark.parametrize("raw,words", [
    (b"\x00\x00\x09\x01" + b"\x00" * 8, "magic"),
    (b"\x01\x00\x08\x01\x00\x00\x00\x02ab", "magic"),
    (b"\x00\x00", "not an IDX"),
    (idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-5], "truncated"),
    (idx_bytes(np.zeros((3,), np.uint8)) + b"xx", "trailing"),
])
def test_read_idx_rejects_bad_bytes(raw, words):
    with pytest.raises(DataError, match=words):
        data.read_idx_bytes(raw, "f")


def test_corrupt_gzip_named(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((5,), np.uint8)))
    p = tmp_path / "x.gz"
    p.write_bytes(good[:10] + b"\xff" * 8 + good[18:])
    with pytest.raises(DataError, match=r"x\.gz: corrupt gzip"):
        data.read_idx(p)


def test_md5_mismatch_is_reported(tmp_path):
    p = write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(10, np.uint8))
    with pytest.raises(DataError, match="md5 .* does not match"):
        data.read_idx(p, data.CANONICAL_MD5["t10k-labels-idx1-ubyte"])


def test_load_split_validation(tmp_path):
    root = write_mnist(tmp_path / "m", n_train=30, n_test=20)
    s = data.load_split(root, "test", verify=False)
    assert s.images.shape == (20, 28, 28) and s.labels.shape == (20,)
    # canonical md5 check fails on synthetic files
    with pytest.raises(DataError, match="md5"):
        data.load_split(root, "test", verify=True)
    # count mismatch
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))
    with pytest.raises(DataError, match="20 images but .* 19 labels"):
        data.load_split(root, "test", verify=False)
    # label out of range
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.full(20, 12, np.uint8))
    with pytest.raises(DataError, match="label 12 outside 0..9"):
        data.load_split(root, "test", verify=False)
    # a missing file is named
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing MNIST file t10k-labels-idx1-ubyte"):
        data.load_split(root, "test", verify=False)
    with pytest.raises(DataError, match="folder not found"):
        data.load_split(tmp_path / "nope", "test")


def test_raw_files_are_accepted(tmp_path):
    root = write_mnist(tmp_path / "raw", n_train=10, n_test=10, gz=False)
    assert len(data.load_split(root, "train", verify=False).labels) == 10


def test_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_DIR", "/env/dir")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.resolve_data_dir("/flag", "/cfg") == (Path("/flag"), "--data_dir")
    assert data.resolve_data_dir(None, "/cfg") == (Path("/cfg"), "dataset.root")
    assert data.resolve_data_dir(None, None) == (Path("/env/dir"), "MNIST_DIR")
    monkeypatch.delenv("MNIST_DIR")
    assert data.resolve_data_dir(None, None) == (tmp_path / "cache" / "mnist-quant" / "mnist", "cache")


class FakeOpener:
    """Serves bytes for URLs like a urlopen() would; records what was asked."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.asked = files, []

    def __call__(self, url, timeout=None):
        self.asked.append(url)
        if url not in self.files:
            raise OSError(f"unreachable {url}")
        return io.BytesIO(self.files[url])


def test_download_verifies_md5_and_falls_back_to_next_mirror(tmp_path, monkeypatch):
    payloads = {stem: gzip.compress(idx_bytes(np.zeros(3, np.uint8)) + stem.encode()[:0]) for stem in data.CANONICAL_MD5}
    monkeypatch.setattr(data, "CANONICAL_MD5", {s: (hashlib.md5(b).hexdigest(), "") for s, b in payloads.items()})
    files = {f"https://m2.example/{s}.gz": b for s, b in payloads.items()}
    opener = FakeOpener(files)
    root = data.ensure_data_dir(str(tmp_path / "dl"), None, mirrors=("https://m1.example/", "https://m2.example/"),
                                opener=opener, log=lambda m: None)
    assert sorted(p.name for p in root.iterdir()) == sorted(f"{s}.gz" for s in payloads)
    assert any(u.startswith("https://m1.example/") for u in opener.asked)  # tried first, failed, fell back


def test_download_with_bad_checksum_leaves_nothing(tmp_path):
    opener = FakeOpener({f"https://m.example/{s}.gz": b"not mnist" for s in data.CANONICAL_MD5})
    with pytest.raises(DataError, match="could not be downloaded.*md5.*MNIST_DIR"):
        data.ensure_data_dir(str(tmp_path / "dl"), None, mirrors=("https://m.example/",), opener=opener, log=lambda m: None)
    assert not (tmp_path / "dl").exists()  # the folder it created for the download is gone again
    (tmp_path / "mine").mkdir()  # a folder of the user's stays
    with pytest.raises(DataError):
        data.ensure_data_dir(str(tmp_path / "mine"), None, mirrors=("https://m.example/",), opener=opener, log=lambda m: None)
    assert list((tmp_path / "mine").iterdir()) == []


def test_http_is_refused(tmp_path):
    with pytest.raises(InputError, match="only https"):
        data.fetch_url("http://example.com/x", tmp_path / "x", "0", "md5", opener=FakeOpener({}))


def test_no_network_gives_clear_message(tmp_path):
    # a real urlopen against a closed local port: the message must say what to set
    with pytest.raises(DataError, match=r"--data_dir, dataset.root in the config, or MNIST_DIR"):
        data.ensure_data_dir(str(tmp_path / "dl"), None, mirrors=("https://127.0.0.1:9/",), log=lambda m: None)


def test_download_disabled_names_the_folder(tmp_path):
    with pytest.raises(DataError, match=r"from --data_dir\): missing MNIST file"):
        data.ensure_data_dir(str(tmp_path / "empty"), None, download=False)


def test_fetch_model_checks_sha256(tmp_path, monkeypatch):
    body = b"onnx bytes"
    monkeypatch.setitem(data.ZOO_MODELS, "mnist-12.onnx", ("https://z.example/m.onnx", hashlib.sha256(body).hexdigest()))
    p = data.fetch_model("mnist-12.onnx", tmp_path, opener=FakeOpener({"https://z.example/m.onnx": body}), log=lambda m: None)
    assert p.read_bytes() == body
    p.write_bytes(b"tampered")
    with pytest.raises(InputError, match="sha256 does not match"):
        data.fetch_model("mnist-12.onnx", tmp_path, opener=FakeOpener({}), log=lambda m: None)


@pytest.mark.parametrize("layout,shape", [("NCHW", (2, 1, 28, 28)), ("NHWC", (2, 28, 28, 1)), ("flat", (2, 784))])
def test_preprocess_layouts_and_values(layout, shape):
    imgs = np.zeros((2, 28, 28), np.uint8)
    imgs[0, 3, 5] = 255
    x = preprocessing.apply(imgs, 1 / 255, 0.0, 1.0, layout)
    assert x.shape == shape and x.dtype == np.float32 and x.max() == 1.0 and x.min() == 0.0
    assert x.reshape(2, 28, 28)[0, 3, 5] == 1.0
    y = preprocessing.apply(imgs, 1 / 255, 0.1307, 0.3081, layout)
    assert np.isclose(y.reshape(2, 784)[1, 0], -0.1307 / 0.3081)



# ------------------------------------------------------------------ hostile files (issue 13)
def idx_header(*dims: int) -> bytes:
    return struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(">" + "I" * len(dims), *dims)


def write_raw(path: Path, raw: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return path


def gzip_bomb(path: Path, header: bytes, mib: int) -> Path:
    """A valid gzip of ``header`` + ``mib`` MiB of zeros, about 1 kB per MiB, built in a blink: after a full
    flush deflate's output for a MiB of zeros no longer depends on what came before, so it is repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    end = c.flush()[:-8]  # the final block; the trailer is recomputed for the whole content
    crc = zlib.crc32(header)
    for _ in range(mib):
        crc = zlib.crc32(bytes(1 << 20), crc)
    path.write_bytes(head + block * mib + end + struct.pack("<II", crc, (len(header) + (mib << 20)) & 0xFFFFFFFF))
    return path


def test_gzip_bomb_builder_makes_a_valid_gzip(tmp_path):
    assert gzip.decompress(gzip_bomb(tmp_path / "b.gz", b"head", 3).read_bytes()) == b"head" + bytes(3 << 20)


def test_gzip_bomb_stops_at_what_the_header_declares(tmp_path):
    """1 MB of gzip inflating to 1 GiB behind a canonical train-images header: inflation stops one byte past
    the 47,040,000 declared bytes, fast and within bounded memory, with no md5 check to rely on."""
    bomb = gzip_bomb(tmp_path / "train-images-idx3-ubyte.gz", idx_header(60000, 28, 28), 1024)
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(DataError, match=r"idx3-ubyte.gz: has trailing bytes: header says \(60000, 28, 28\) = 47040000 bytes"):
            data.read_idx(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - t0 < 10 and peak < 150 << 20, peak  # inflating it whole would take 1 GiB


@pytest.mark.parametrize("gz", [False, True])
def test_declared_size_over_the_limit_is_refused_before_the_data(tmp_path, gz):
    """Four dimensions of 0xFFFFFFFF: their product overflows int64 (np.prod wraps around); Python ints do not."""
    p = write_raw(tmp_path / "x", idx_header(*[0xFFFFFFFF] * 4) + bytes(100), gz)
    with pytest.raises(DataError, match=r"header declares \(4294967295, 4294967295, 4294967295, 4294967295\) = "
                                        r"340282366604025813516997721482669850625 bytes of data, over the 67108864 byte limit"):
        data.read_idx(p)


def test_sparse_2_gib_idx_file_is_refused_unread(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte"
    with open(p, "wb") as f:
        f.write(idx_header(60000, 28, 28))
        f.truncate(2 << 30)  # sparse: no disk used
    with pytest.raises(DataError, match="idx3-ubyte: MNIST file is 2147483648 bytes, over the 67108864 byte limit"):
        data.read_idx(p)


@pytest.mark.parametrize("tail,words", [(b"junk", "has 4 bytes after the gzip stream"), (None, "has 30 bytes after the gzip stream"),
                                        (-4, "corrupt gzip file \\(the compressed stream ends early\\)")])
def test_gzip_framing_defects(tmp_path, tail, words):
    good = gzip.compress(idx_bytes(np.zeros(5, np.uint8)), mtime=0)
    raw = good[:tail] if isinstance(tail, int) else good + (tail or good)  # None: a second gzip member
    with pytest.raises(DataError, match=f"x.gz: {words}"):
        data.read_idx(write_raw(tmp_path / "x.gz", raw, gz=False))


def test_a_fifo_in_place_of_an_mnist_file_is_named_not_missing(tmp_path):
    root = write_mnist(tmp_path / "m", n_train=10, n_test=10)
    (root / "t10k-images-idx3-ubyte.gz").unlink()
    os.mkfifo(root / "t10k-images-idx3-ubyte.gz")
    assert data.missing_files(root) == []  # so it is never downloaded over
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: MNIST file is a FIFO"):
        data.load_split(root, "test", verify=False)


def test_a_data_folder_that_cannot_be_opened_is_named(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    for d, why in ((tmp_path / ("x" * 300), "File name too long"), (tmp_path / "file" / "mnist", "Not a directory")):
        with pytest.raises(DataError, match=f"from --data_dir\\): cannot open the MNIST folder \\({why}\\)"):
            data.ensure_data_dir(str(d), None, mirrors=(), log=lambda m: None)



def test_an_existing_zoo_model_copy_is_read_bounded(tmp_path):
    os.mkfifo(tmp_path / "mnist-12.onnx")  # checked, not silently downloaded over or read forever
    with pytest.raises(InputError, match="mnist-12.onnx: zoo model mnist-12.onnx is a FIFO"):
        data.fetch_model("mnist-12.onnx", tmp_path, opener=FakeOpener({}), log=lambda m: None)


@pytest.mark.realdata
def test_real_mnist_files(splits):
    assert splits["train"].images.shape == (60000, 28, 28)
    assert splits["test"].images.shape == (10000, 28, 28)
    # class counts from ../shared/data/mnist/SOURCES.md
    assert np.bincount(splits["train"].labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(splits["test"].labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
