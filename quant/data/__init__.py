"""MNIST data: IDX reading with validation, locating and downloading the files (the preprocessing of the
images is quant.config.preprocessing).

The four canonical LeCun files are read gzip-compressed or raw. Every read checks the IDX magic
number, the dimensions and the byte count; labels must be 0..9 and images/labels must agree in
count. With ``verify=True`` the md5 of each canonical file is checked too. A file is read only if it
is a regular file of at most :data:`MAX_IDX_BYTES`, and a gzip file is inflated only as far as its
IDX header declares (itself at most :data:`MAX_IDX_BYTES`), so a gzip bomb costs no more than a real file.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import stat
import struct
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from quant.errors import DataError, InputError
from quant.files import atomic_write_bytes, read_regular_file, sha256_bytes

# name -> (md5 of the .gz, md5 of the uncompressed file); from LeCun's page / ../shared SOURCES.md
CANONICAL_MD5 = {
    "train-images-idx3-ubyte": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES = {"train": 60000, "test": 10000}

# Public HTTPS mirrors of the canonical gzip files (the ones torchvision uses).
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# The ONNX Model Zoo's mnist-12.onnx and its sha256 (../shared/models/SOURCES.md).
ZOO_MODELS = {
    "mnist-12.onnx": (
        "https://github.com/onnx/models/raw/main/validated/vision/classification/mnist/model/mnist-12.onnx",
        "5c688690f8bacf667d4c2074af5ad0646ca328d7ab03eccf944a65b320171bdd",
    ),
}
MAX_DOWNLOAD_BYTES = 64 << 20  # every file we fetch is < 10 MB
# The largest canonical file, train images, holds 47,040,016 bytes (60000x28x28 + header): 64 MiB leaves room
# for it and caps what a file, or what its IDX header declares (inflated from gzip), can make us hold.
MAX_IDX_BYTES = 64 << 20
ENV_DATA_DIR = "MNIST_DIR"

_IDX_DTYPES = {0x08: np.uint8}  # MNIST uses only unsigned bytes


# ----------------------------------------------------------------------------------------- IDX
def _parse_idx(take: Callable[[int], bytes], name: str) -> np.ndarray:
    """An IDX array from ``take(n)`` (the next at most ``n`` bytes of the uncompressed file): the data size the
    header declares is checked against MAX_IDX_BYTES before any data is read (or inflated)."""
    magic = take(4)
    if len(magic) < 4:
        raise DataError(f"{name}: not an IDX file (only {len(magic)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", magic)
    if zero != 0 or dtype_code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise DataError(f"{name}: wrong IDX magic number 0x{bytes(magic).hex()} (expected 0x0000080N, unsigned bytes)")
    head = take(4 * ndim)
    if len(head) < 4 * ndim:
        raise DataError(f"{name}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, head)
    count = math.prod(dims)  # Python ints: uint32 dimensions overflow int64
    if count > MAX_IDX_BYTES:
        raise DataError(f"{name}: header declares {dims} = {count} bytes of data, over the {MAX_IDX_BYTES} byte limit "
                        "(the largest MNIST file holds 47,040,000)")
    body = take(count + 1)
    if len(body) != count:
        what, has = ("truncated", len(body)) if len(body) < count else ("has trailing bytes", "more")
        raise DataError(f"{name}: {what}: header says {dims} = {count} bytes of data, file has {has}")
    return np.frombuffer(body, dtype=_IDX_DTYPES[dtype_code]).reshape(dims)


def read_idx_bytes(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse an IDX file's (uncompressed) bytes; raise DataError naming ``name`` on any defect."""
    view, pos = memoryview(raw), 0

    def take(n: int) -> memoryview:
        nonlocal pos
        pos += n
        return view[pos - n:pos]

    return _parse_idx(take, name)


def _read_gzip_idx(raw: bytes, name: str) -> np.ndarray:
    """Parse a gzip-compressed IDX file, inflating only what its header declares (plus one byte, to see
    trailing data): a gzip bomb is refused after at most MAX_IDX_BYTES of output."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # one gzip member
    rest = raw

    def take(n: int) -> bytes:
        nonlocal rest
        parts, got = [], 0
        while got < n and not d.eof:
            part = d.decompress(rest, n - got)
            rest = d.unconsumed_tail
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    try:
        arr = _parse_idx(take, name)
    except zlib.error as e:
        raise DataError(f"{name}: corrupt gzip file ({e})") from None
    if not d.eof:
        raise DataError(f"{name}: corrupt gzip file (the compressed stream ends early)")
    if d.unused_data:
        raise DataError(f"{name}: has {len(d.unused_data)} bytes after the gzip stream")
    return arr


def read_idx(path: str | os.PathLike, expected_md5: tuple[str, ...] | None = None) -> np.ndarray:
    """Read an IDX file, gzip-compressed (known by its first two bytes) or raw. ``expected_md5``: accepted md5s of the file."""
    p = Path(path)
    raw = read_regular_file(p, "MNIST file", MAX_IDX_BYTES, DataError)
    if expected_md5:
        got = hashlib.md5(raw).hexdigest()
        if got not in expected_md5:
            raise DataError(f"{p}: md5 {got} does not match the canonical MNIST file ({expected_md5[0]})")
    return _read_gzip_idx(raw, str(p)) if raw[:2] == b"\x1f\x8b" else read_idx_bytes(raw, str(p))


def find_file(root: Path, stem: str) -> Path | None:
    """``stem.gz`` or ``stem`` in ``root``, whatever kind of file it is: the reader refuses (and names) a FIFO or
    a folder in its place, where skipping it would report it missing (and download over it)."""
    for cand in (root / f"{stem}.gz", root / stem):
        if os.path.lexists(cand):
            return cand
    return None


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, 28, 28]
    labels: np.ndarray  # uint8 [N]
    files: tuple[str, str]


def load_split(root: str | os.PathLike, split: str, verify: bool = True) -> Split:
    """Load ``split`` ('train' or 'test') from ``root`` with full validation."""
    root = Path(root)
    if not os.path.isdir(root):
        raise DataError(f"{root}: MNIST folder not found")
    img_stem, lbl_stem = SPLIT_FILES[split]
    paths = []
    for stem in (img_stem, lbl_stem):
        p = find_file(root, stem)
        if p is None:
            raise DataError(f"{root}: missing MNIST file {stem}.gz (or {stem})")
        paths.append(p)
    md5 = (lambda s: CANONICAL_MD5[s]) if verify else (lambda s: None)
    images = read_idx(paths[0], md5(img_stem))
    labels = read_idx(paths[1], md5(lbl_stem))
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{paths[0]}: expected images of shape [N, 28, 28], got {list(images.shape)}")
    if labels.ndim != 1:
        raise DataError(f"{paths[1]}: expected a 1-D label file, got shape {list(labels.shape)}")
    if len(images) != len(labels):
        raise DataError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
    if not len(labels):
        raise DataError(f"{paths[1]}: holds no images (0 labels)")
    if labels.max() > 9:
        raise DataError(f"{paths[1]}: label {int(labels.max())} outside 0..9")
    return Split(images, labels, (str(paths[0]), str(paths[1])))


# ---------------------------------------------------------------------------- locating / fetch
def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mnist-quant"


def resolve_data_dir(flag: str | None, config_root: str | None) -> tuple[Path, str]:
    """The MNIST folder to use and where that choice came from.

    Order: ``--data_dir`` flag, config ``dataset.root``, ``$MNIST_DIR``, the user cache folder.
    The first one given wins (no silent fall-through to another folder).
    """
    for value, source in ((flag, "--data_dir"), (config_root, "dataset.root"), (os.environ.get(ENV_DATA_DIR), ENV_DATA_DIR)):
        if value:
            return Path(value).expanduser(), source
    return default_cache_dir() / "mnist", "cache"


def missing_files(root: Path, splits=("train", "test")) -> list[str]:
    """The canonical stems of ``splits`` that ``root`` lacks."""
    return [stem for stem in CANONICAL_MD5 if stem in _stems(splits) and find_file(root, stem) is None]


def _stems(splits) -> set[str]:
    return {stem for s in splits for stem in SPLIT_FILES[s]}


Opener = Callable[..., object]


def fetch_url(url: str, dest: Path, digest: str, algo: str, opener: Opener = urllib.request.urlopen, timeout: float = 30) -> None:
    """Download ``url`` over HTTPS to ``dest``; the checksum is verified before the file is moved in."""
    if urllib.parse.urlparse(url).scheme != "https":
        raise InputError(f"refusing to download {url}: only https:// URLs are allowed")
    h = hashlib.new(algo)
    chunks = []
    size = 0
    with opener(url, timeout=timeout) as resp:
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_DOWNLOAD_BYTES:
                raise InputError(f"{url}: larger than {MAX_DOWNLOAD_BYTES} bytes, refusing")
            h.update(chunk)
            chunks.append(chunk)
    if h.hexdigest() != digest:
        raise InputError(f"{url}: {algo} {h.hexdigest()} does not match the expected {digest}")
    atomic_write_bytes(dest, b"".join(chunks))


def download_mnist(root: Path, mirrors=MNIST_MIRRORS, opener: Opener = urllib.request.urlopen, log=print,
                   splits=("train", "test")) -> None:
    """Download the missing canonical files into ``root``, trying each mirror, md5-verified. Folders it
    had to create are removed again when a download fails (a failed run leaves nothing)."""
    created = [p for p in (root, *root.parents) if not p.exists()]
    root.mkdir(parents=True, exist_ok=True)
    try:
        _download_missing(root, mirrors, opener, log, splits)
    except BaseException:
        for p in created:  # deepest first; only if still empty
            try:
                p.rmdir()
            except OSError:
                break
        raise


def _download_missing(root: Path, mirrors, opener: Opener, log, splits=("train", "test")) -> None:
    for stem in missing_files(root, splits):
        name = f"{stem}.gz"
        errors = []
        for mirror in mirrors:
            url = mirror + name
            try:
                log(f"downloading {url}")
                fetch_url(url, root / name, CANONICAL_MD5[stem][0], "md5", opener=opener)
                break
            except (OSError, InputError) as e:  # URLError is an OSError
                errors.append(f"{url}: {getattr(e, 'reason', None) or e}")
        else:
            raise DataError(
                f"MNIST file {name} is missing in {root} and could not be downloaded ({'; '.join(errors)}); "
                f"set --data_dir, dataset.root in the config, or {ENV_DATA_DIR} to a folder with the four MNIST IDX files"
            )


def ensure_data_dir(flag: str | None, config_root: str | None, download: bool = True,
                    mirrors=MNIST_MIRRORS, opener: Opener = urllib.request.urlopen, log=print, splits=("train", "test")) -> Path:
    """Resolve the MNIST folder and make sure the files of ``splits`` are there (downloading if allowed): a
    command that reads only the test split neither requires nor downloads the train split."""
    root, source = resolve_data_dir(flag, config_root)
    try:
        if not stat.S_ISDIR(os.stat(root).st_mode):
            raise DataError(f"{root} (from {source}): not a folder")
    except FileNotFoundError:
        pass
    except OSError as e:  # a name over 255 bytes, a file as a parent folder, a symlink loop
        raise DataError(f"{root} (from {source}): cannot open the MNIST folder ({e.strerror})") from None
    missing = missing_files(root, splits) if root.is_dir() else [s for s in CANONICAL_MD5 if s in _stems(splits)]
    if missing:
        if not download:
            raise DataError(
                f"{root} (from {source}): missing MNIST file(s) {', '.join(m + '.gz' for m in missing)}; "
                f"set --data_dir, dataset.root or {ENV_DATA_DIR}, or enable dataset.download"
            )
        try:
            download_mnist(root, mirrors=mirrors, opener=opener, log=log, splits=splits)
        except PermissionError as e:
            raise DataError(f"{root} (from {source}): cannot write downloaded files ({e.strerror})") from None
    return root


def fetch_model(name: str, dest_dir: Path, opener: Opener = urllib.request.urlopen, log=print) -> Path:
    """Download a zoo model (sha256-verified) into ``dest_dir`` unless a verified copy is there."""
    url, sha = ZOO_MODELS[name]
    dest = dest_dir / name
    if os.path.exists(dest):
        if sha256_bytes(read_regular_file(dest, f"zoo model {name}", MAX_DOWNLOAD_BYTES)) == sha:
            return dest
        raise InputError(f"{dest}: exists but its sha256 does not match the zoo's {name}; remove it or choose another folder")
    created = [p for p in (dest_dir, *dest_dir.parents) if not p.exists()]  # removed again when the download fails
    dest_dir.mkdir(parents=True, exist_ok=True)
    log(f"downloading {url}")
    try:
        fetch_url(url, dest, sha, "sha256", opener=opener)
    except BaseException as e:
        for p in created:  # deepest first; only if still empty
            try:
                p.rmdir()
            except OSError:
                break
        if isinstance(e, OSError):
            raise InputError(f"could not download {url} ({getattr(e, 'reason', None) or e}); pass --input_model with a local copy") from None
        raise
    return dest


def fetch(data_dir: str | None = None, models_dir: str | None = None, log=None) -> Path:
    """Download what the toolkit reads, checksum-verified: the four MNIST files into ``data_dir`` (else
    ``$MNIST_DIR``, else the user cache) and the zoo's mnist-12.onnx into ``models_dir`` (else the user
    cache). Files already there are verified, not downloaded again. Returns the model's path.
    Raises DataError/InputError (exit 4) when a download fails or a file's checksum does not match."""
    log = log or logging.getLogger("quant").info
    root = ensure_data_dir(data_dir, None, download=True, log=log)
    for split in ("train", "test"):
        s = load_split(root, split, verify=True)
        log(f"[fetch] {split}: {len(s.labels)} images, md5 verified, in {root}")
    return fetch_model("mnist-12.onnx", Path(models_dir) if models_dir else default_cache_dir() / "models", log=log)


# ------------------------------------------------------------------------------ preprocessing
