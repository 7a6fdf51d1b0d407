"""io.py's atomic writers: nothing half-written, and the modes the user's umask gives (not tempfile's 0600/0700)."""

from __future__ import annotations

import os
import stat

import pytest

from babelflow.io import atomic_dir, atomic_open, umask, write_text


@pytest.fixture(params=[0o022, 0o027, 0o002])
def user_umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_dirs_get_the_umask_mode(tmp_path, user_umask):
    assert umask() == user_umask and umask() == user_umask  # reading it leaves it as it was
    write_text(tmp_path / "a" / "info", "1\n")
    with atomic_open(tmp_path / "model.pt", "wb") as f:
        f.write(b"x")
    with atomic_dir(tmp_path / "graph") as d:
        (d / "HCLG.fst").write_bytes(b"y")
    assert _mode(tmp_path / "a" / "info") == 0o666 & ~user_umask
    assert _mode(tmp_path / "model.pt") == 0o666 & ~user_umask
    assert _mode(tmp_path / "graph") == 0o777 & ~user_umask
    assert _mode(tmp_path / "graph" / "HCLG.fst") == 0o666 & ~user_umask


def test_a_failed_write_leaves_nothing(tmp_path):
    (tmp_path / "keep.txt").write_text("old\n")
    with pytest.raises(RuntimeError), atomic_open(tmp_path / "keep.txt") as f:
        f.write("half")
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "dir") as d:
        (d / "x").write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "keep.txt").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_written_fsts_get_the_umask_mode(tmp_path, user_umask):
    from babelflow.decode.fstio import write_fst
    from babelflow.gmm.k2 import kaldifst

    fst = kaldifst.StdVectorFst()
    fst.add_state()
    fst.start = 0
    write_fst(fst, tmp_path / "G.fst")
    assert _mode(tmp_path / "G.fst") == 0o666 & ~user_umask


def test_what_a_killed_writer_left_is_cleared_by_the_next(tmp_path):
    (tmp_path / ".model.pt.abc123.tmp").write_bytes(b"half")  # SIGKILL runs no cleanup
    (tmp_path / ".graph.xyz.tmp").mkdir()
    (tmp_path / ".other.pt.abc.tmp").write_bytes(b"someone else's")
    with atomic_open(tmp_path / "model.pt", "wb") as f:
        f.write(b"x")
    with atomic_dir(tmp_path / "graph"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.abc.tmp", "graph", "model.pt"]


@pytest.mark.parametrize("how", ["atomic_open", "ark", "ark,scp"])
def test_pipes_and_devices_are_written_in_place(tmp_path, how):
    """`ark:/dev/null` (or a FIFO) must stay what it is: a rename of the temp file over it would put a plain
    file there (as root, in place of /dev/null). Tested on FIFOs, which fail the same way."""
    import stat
    import threading

    import numpy as np

    from babelflow.tables import open_matrix_writer

    fifos = [tmp_path / "out.ark"] + ([tmp_path / "out.scp"] if how == "ark,scp" else [])
    got = {}

    def drain(p):
        with open(p, "rb") as f:
            got[p.name] = f.read()
    for p in fifos:
        os.mkfifo(p)
    readers = [threading.Thread(target=drain, args=(p,)) for p in fifos]
    for r in readers:
        r.start()
    if how == "atomic_open":
        with atomic_open(fifos[0], "wb") as f:
            f.write(b"through the pipe")
    else:
        with open_matrix_writer(f"{how}:" + ",".join(map(str, fifos))) as w:
            w["utt1"] = np.ones((2, 3), dtype=np.float32)
    for r in readers:
        r.join(timeout=30)
    assert all(stat.S_ISFIFO(os.stat(p).st_mode) for p in fifos)
    assert not list(tmp_path.glob(".*.tmp"))
    assert got["out.ark"] == b"through the pipe" if how == "atomic_open" else got["out.ark"].startswith(b"utt1 ")
    if how == "ark,scp":
        assert got["out.scp"].decode().startswith("utt1 ")
