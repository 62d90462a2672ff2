"""files.read_regular_file: the one bounded reader behind every input file (model, config, MNIST, test data,
calibration manifest, external data). Anything but a regular file within the limit is refused, with one
line naming the path, before a byte is read."""

import errno
import os
import re
import socket
import time

import pytest

from quant import files
from quant.errors import ConfigError, DataError, InputError, ModelError


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_reads_a_regular_file_up_to_the_limit(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 100)
    assert files.read_regular_file(p, "test file", 100) == b"x" * 100
    assert files.regular_file_size(p, "test file", 100) == 100
    with pytest.raises(InputError, match=r"/f: test file is 100 bytes, over the 99 byte limit$"):
        files.read_regular_file(p, "test file", 99)
    (tmp_path / "empty").write_bytes(b"")
    assert files.read_regular_file(tmp_path / "empty", "test file", 0) == b""


def test_a_symlink_to_a_regular_file_is_read(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    assert files.read_regular_file(tmp_path / "link", "test file", 10) == b"abc"


def _special(kind: str, tmp_path):
    if kind == "FIFO":
        os.mkfifo(tmp_path / "fifo")  # no writer: a plain open() would block forever
        return tmp_path / "fifo", "is a FIFO (named pipe), expected a regular file"
    if kind == "character device":
        return "/dev/zero", "is a character device, expected a regular file"  # read() would never end
    if kind == "directory":
        return tmp_path, "is a directory, expected a regular file"
    if kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(tmp_path / "sock"))
        s.close()
        return tmp_path / "sock", "is a socket, expected a regular file"
    if kind == "sparse 2 GiB file":
        with open(tmp_path / "sparse", "wb") as f:
            f.truncate(2 << 30)  # no disk used; never read
        return tmp_path / "sparse", "is 2147483648 bytes, over the 1048576 byte limit"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["FIFO", "character device", "directory", "socket", "sparse 2 GiB file"])
@pytest.mark.parametrize("error", [InputError, ConfigError, DataError, ModelError])
def test_refused_before_reading_with_the_callers_error(kind, error, tmp_path):
    path, words = _special(kind, tmp_path)
    fds, t0 = _open_fds(), time.monotonic()
    with pytest.raises(error) as e:
        files.read_regular_file(path, "input", 1 << 20, error)
    assert type(e.value) is error and str(e.value) == f"{path}: input {words}"
    assert time.monotonic() - t0 < 2 and _open_fds() == fds  # no hang, no descriptor left open


def test_path_problems_are_one_line_errors(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    cases = {
        tmp_path / "missing": "not found",
        tmp_path / ("x" * 300) / "m.onnx": "cannot be opened: a name in its path is longer than the system allows",
        tmp_path / ("x" * 300): "cannot be opened: a name in its path is longer than the system allows",
        tmp_path / "loop1": "cannot be opened: too many levels of symbolic links",
        tmp_path / "file" / "m.onnx": "cannot be opened: part of its path is not a folder",
        str(tmp_path / "nul\0byte"): "cannot be read (embedded null byte)",
    }
    for path, words in cases.items():
        with pytest.raises(ConfigError) as e:
            files.read_regular_file(path, "config file", 100, ConfigError)
        assert str(e.value) == f"{path}: config file {words}" and "\n" not in str(e.value)


@pytest.mark.parametrize("err,words", [(errno.EACCES, "is not readable (permission denied)"), (errno.EIO, "cannot be read (Input/output error)")])
def test_open_and_read_failures_are_mapped(tmp_path, monkeypatch, err, words):
    """(The real unreadable-file case runs without root's capabilities in test_hardening.py.)"""
    p = tmp_path / "f"
    p.write_bytes(b"x")

    def fail(*a):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(files.os, "open" if err == errno.EACCES else "read", fail)
    with pytest.raises(DataError, match="^" + re.escape(f"{p}: MNIST file {words}") + "$"):
        files.read_regular_file(p, "MNIST file", 100, DataError)


def test_a_file_that_grows_while_read_is_refused():
    """procfs files report size 0 and then deliver more: the read stops at limit + 1 bytes."""
    with pytest.raises(InputError, match="/proc/self/status: input grew past the 10 byte limit while being read"):
        files.read_regular_file("/proc/self/status", "input", 10)
    assert files.read_regular_file("/proc/self/status", "input", 1 << 20).startswith(b"Name:")


def test_a_stop_signal_during_the_commit_waits_for_it_and_says_the_outputs_were_written(tmp_path, monkeypatch):
    """SIGTERM arriving while outputs move into place (from any thread) is recorded, the commit completes,
    and the run ends with exit 143 saying the outputs were written; nothing hidden is left behind."""
    import signal

    from quant import files
    from quant.errors import Interrupted

    (tmp_path / "a.onnx").write_bytes(b"old")
    real = os.replace
    sent = []
    before = signal.getsignal(signal.SIGTERM)

    def replace_and_signal(src, dst):
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(src, dst)

    with files.Outputs() as out:
        out.bytes(tmp_path / "a.onnx", b"new")
        out.text(tmp_path / "a.json", "{}")
        monkeypatch.setattr(os, "replace", replace_and_signal)
        with pytest.raises(Interrupted) as e:
            out.commit()
    assert e.value.written and e.value.exit_code == 143 and "after the outputs were written" in e.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.onnx"] and (tmp_path / "a.onnx").read_bytes() == b"new"
    assert signal.getsignal(signal.SIGTERM) == before  # the caller's handler is back


def test_commit_never_replaces_a_folder_by_a_file(tmp_path):
    from quant import files
    from quant.errors import UsageError

    (tmp_path / "x.png" / "sub").mkdir(parents=True)
    with files.Outputs() as out:
        out.bytes(tmp_path / "x.png", b"png")
        with pytest.raises(UsageError, match="x.png: is a folder; refusing to replace it by a file"):
            out.commit()
    assert (tmp_path / "x.png" / "sub").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
