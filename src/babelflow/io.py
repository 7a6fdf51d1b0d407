"""Small I/O helpers shared by all steps: atomic writes and Kaldi table text files.

Every artifact is written under a temporary name in the same directory and renamed
into place, so an interrupted job never leaves a half-written file behind that a
later step (or Snakemake) could mistake for a finished one. The temporary names come
from ``tempfile`` (0600 files, 0700 dirs); they get the mode the user's umask gives
before the rename, so colleagues on a shared file system can read the models. A target
that is a device, pipe or socket (Kaldi's ``ark:/dev/null``, a FIFO) is written in place:
a rename would put a plain file where it was (as root, in place of /dev/null).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO

from .errors import BabelflowError, where

_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process's umask (reading it means setting it, so it is put straight back)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def clear_stale_temps(path: Path) -> None:
    """Remove ``.{name}.*.tmp`` beside ``path``: what a killed writer of ``path`` left (SIGKILL runs no
    cleanup). Only one job ever writes a given path, so any such file is stale when that job starts."""
    for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()


def mkstemp_for(path: Path) -> tuple[int, str]:
    """A temp file beside ``path`` (same file system: the rename is atomic), mode as ``open`` would give."""
    clear_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~umask())
    return fd, tmp


def is_special_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` exists and is no regular file or directory (a device, pipe or socket): written in place."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open ``path`` for writing through a temp file that is renamed on success (a device or pipe: directly)."""
    path = Path(path)
    if is_special_file(path):
        with open(path, mode) as f:
            yield f
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp_for(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temp name, then swap it into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~umask())  # as mkdir would make it
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a small text file (e.g. an ``info/`` entry)."""
    with atomic_open(path, "w") as f:
        f.write(text)


def read_info(path: str | os.PathLike) -> dict[str, str]:
    """The ``info/`` dir of an artifact dir ``path`` as {file name: stripped text} (name order);
    ``{}`` when there is no ``info/``."""
    info = Path(path) / "info"
    if not info.is_dir():
        return {}
    return {p.name: p.read_text().strip() for p in sorted(info.iterdir()) if p.is_file()}


def write_info(path: str | os.PathLike, mapping: Mapping[str, object]) -> None:
    """Write ``path/info/<name>`` for each item: the value and a newline, one file per value, atomically."""
    for name, value in mapping.items():
        write_text(Path(path) / "info" / name, f"{value}\n")


def write_table(path: str | os.PathLike, rows: Iterable[tuple[str, ...] | list[str]]) -> None:
    """Atomically write a Kaldi table text file: one ``key value...`` line per row."""
    with atomic_open(path, "w") as f:
        for row in rows:
            f.write(" ".join(str(x) for x in row) + "\n")


def read_lines(path: str | os.PathLike, what: str = "file") -> list[str]:
    """A UTF-8 text file's lines, as Kaldi's tools would take them: a missing file, a byte-order mark, CR LF
    line ends (Kaldi would keep the CR in the last field) or bytes that are not UTF-8 are one error naming
    the file, the line and its key (``what``: e.g. lexicon)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BabelflowError(f"{path}: {what} not found") from None
    except OSError as e:
        raise BabelflowError(f"{path}: cannot read ({e.strerror})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        raise BabelflowError(f"{where(path, 1, _key(data[3:]))}: starts with a UTF-8 byte-order mark, which Kaldi "
                             "reads as part of the first key: remove it")
    # whole-file checks on the common path; the line is looked for only to name it in an error
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        n = data.count(b"\n", 0, e.start) + 1
        raw = data.split(b"\n")[n - 1]
        col = len(raw[:e.start - (data.rfind(b"\n", 0, e.start) + 1)].decode("utf-8", "replace")) + 1
        raise BabelflowError(f"{where(path, n, _key(raw))}: not UTF-8 ({e.reason} at column {col})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if "\r\n" in text or text.endswith("\r"):
        n = next(i for i, line in enumerate(lines, 1) if line.endswith("\r"))
        raise BabelflowError(f"{where(path, n, _key(lines[n - 1].encode()))}: Windows line end (CR LF), which "
                             "Kaldi keeps in the last field: convert the file with dos2unix")
    return lines


def _key(raw: bytes) -> str | None:
    return raw.split(None, 1)[0].decode("utf-8", "replace") if raw.strip() else None


def read_table(path: str | os.PathLike, min_fields: int = 2,
               max_fields: int | None = None) -> list[tuple[int, str, list[str]]]:
    """Read a Kaldi ``key value...`` text file as (line number, key, fields) triples.

    Blank lines and wrong field counts are errors naming the file and line.
    """
    path = Path(path)
    out = []
    for n, line in enumerate(read_lines(path), 1):
        fields = line.split()
        if not fields:
            raise BabelflowError(f"{where(path, n)}: empty line")
        if len(fields) < min_fields:
            raise BabelflowError(f"{where(path, n, fields[0])}: expected at least {min_fields} fields, "
                                 f"got {len(fields)}")
        if max_fields is not None and len(fields) > max_fields:
            raise BabelflowError(f"{where(path, n, fields[0])}: expected at most {max_fields} fields, "
                                 f"got {len(fields)}")
        out.append((n, fields[0], fields[1:]))
    return out


def read_scalar(path: str | os.PathLike) -> str:
    """Read a one-value file such as ``num_jobs`` or ``info/feat_dim``."""
    path = Path(path)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise BabelflowError(f"{path}: file not found") from None


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Environment variables set for the processes started inside the block (e.g. single-threaded BLAS in
    worker pools), restored after it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def write_skipped(path: str | os.PathLike, skipped: list[tuple[str, str]]) -> None:
    """A step's skip list: one ``utterance<TAB>reason`` line per skipped key, under a header."""
    write_text(path, "utterance\treason\n" + "".join(f"{k}\t{r}\n" for k, r in sorted(skipped)))


def read_skipped(path: str | os.PathLike) -> dict[str, str]:
    lines = read_lines(path)[1:] if Path(path).is_file() else []
    return dict(line.split("\t", 1) for line in lines if line)
