"""Kaldi alignments: int32-vector tables, ``ali-to-pdf`` and alignment directories.

Training targets come from Kaldi alignment dirs (``ali.N.gz`` of transition-ids plus
``final.mdl``). We parse the int32-vector archives ourselves rather than through
``kaldiio.ReadHelper``: kaldiio reads binary vectors and ``gunzip -c x.gz|`` pipes, but it
yields nothing (no error) when the pipe command fails, misreads an empty text vector
(``key \\n``) by swallowing the next line, and reports corruption through ``assert``.
Here a failed command, a truncated archive or a bad value is a BabelflowError naming the
rspecifier (or file) and the utterance.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from ..errors import BabelflowError, where
from ..io import atomic_open, read_scalar, read_table
from .basic_io import read_bytes
from .transition_model import TransitionModel, read_transition_model

log = logging.getLogger(__name__)

_WS = b" \t\n\v\f\r"
_RSPEC = re.compile(r"^(ark|scp)((?:,[a-z]+)*):(.*)$", re.S)
_ROPTS = {"o", "no", "s", "ns", "cs", "ncs", "p", "np", "b", "t", "bg"}
_BIN_REC = np.dtype([("size", "i1"), ("value", "<i4")])  # Kaldi WriteBasicType<int32> per element
_EMPTY = np.zeros(0, dtype=np.int32)


def _parse_rspecifier(rspec: str) -> tuple[str, str]:
    m = _RSPEC.match(rspec)
    opts = set(m.group(2).split(",")[1:]) if m else set()
    if not m or not m.group(3) or not opts <= _ROPTS:
        raise BabelflowError(f"{rspec!r}: not a Kaldi rspecifier (expected ark:<rxfilename> or scp:<rxfilename>)")
    return m.group(1), m.group(3)


@contextlib.contextmanager
def _open_rx(rx: str, loc: str) -> Iterator[BinaryIO]:
    """Open a Kaldi rxfilename: ``-`` (stdin), ``command |`` (its stdout) or a file."""
    if rx == "-":
        yield sys.stdin.buffer
        return
    if rx.rstrip().endswith("|"):
        cmd = rx.rstrip()[:-1]
        with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty command cannot deadlock us
            proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=err)
            try:
                yield proc.stdout
            except BabelflowError as e:  # bad data is often the symptom of a failed command
                rc = _finish(proc)
                if rc != 0:
                    raise BabelflowError(_cmd_failed(loc, cmd, rc, err)) from e
                raise
            except BaseException:
                _finish(proc)
                raise
            rc = _finish(proc)
            if rc != 0:
                raise BabelflowError(_cmd_failed(loc, cmd, rc, err))
        return
    try:
        f = open(rx, "rb")
    except OSError as e:
        raise BabelflowError(f"{loc}: cannot open {rx} ({e.strerror})") from None
    with f:
        yield f


def _finish(proc: subprocess.Popen) -> int:
    proc.stdout.close()
    return proc.wait()


def _cmd_failed(loc: str, cmd: str, rc: int, err: BinaryIO) -> str:
    err.seek(0)
    msg = err.read()[-1000:].decode("utf-8", "replace").strip()
    return f"{loc}: command '{cmd.strip()}' failed (exit status {rc})" + (f": {msg}" if msg else "")


def _read_key(f: BinaryIO) -> tuple[str, bytes] | None:
    """Archive key and the byte that ended it; None at a clean end of archive."""
    c = f.read(1)
    while c and c in _WS:
        c = f.read(1)
    if not c:
        return None
    key = bytearray()
    while c and c not in _WS:
        key += c
        c = f.read(1)
    return key.decode("utf-8", "backslashreplace"), c


def _read_value(f: BinaryIO, sep: bytes, loc: str) -> np.ndarray:
    """One int32 vector after its key: binary (``\\0B``...) or a text line."""
    if sep == b"\n":  # Kaldi leaves the newline to the holder: an empty text vector
        return _EMPTY.copy()
    if sep not in (b" ", b"\t"):
        raise BabelflowError(f"{loc}: expected a space after the key (truncated or not an archive?)")
    c = f.read(1)
    if c == b"\0":
        if f.read(1) != b"B":
            raise BabelflowError(f"{loc}: bad binary header (expected '\\0B')")
        head = f.read(5)
        if len(head) != 5:
            raise BabelflowError(f"{loc}: unexpected end of data (truncated archive?)")
        if head[0] != 4:
            raise BabelflowError(f"{loc}: not an int32 vector (size byte {head[0]})")
        n = struct.unpack("<i", head[1:])[0]
        if n < 0:
            raise BabelflowError(f"{loc}: negative vector length {n}")
        data = read_bytes(f, 5 * n)
        if len(data) != 5 * n:
            raise BabelflowError(f"{loc}: unexpected end of data (truncated archive?)")
        rec = np.frombuffer(data, dtype=_BIN_REC)
        if n and not np.all(rec["size"] == 4):
            raise BabelflowError(f"{loc}: not an int32 vector (element size byte != 4)")
        return rec["value"].astype(np.int32)
    if not c:
        raise BabelflowError(f"{loc}: unexpected end of data after the key (truncated archive?)")
    if c == b"\n":  # "key \n": an empty vector in text form
        return _EMPTY.copy()
    line = c + f.readline()
    try:
        vals = np.array([int(t) for t in line.split()], dtype=np.int64)
    except ValueError:
        raise BabelflowError(f"{loc}: not a line of integers: {line[:60]!r}") from None
    if vals.size and (vals.min() < -(2**31) or vals.max() >= 2**31):
        raise BabelflowError(f"{loc}: value out of int32 range")
    return vals.astype(np.int32)


def _iter_archive(f: BinaryIO, name: str) -> Iterator[tuple[str, np.ndarray]]:
    while (kc := _read_key(f)) is not None:
        key, sep = kc
        if not sep:
            raise BabelflowError(f"{where(name, key=key)}: archive ends right after the key (truncated?)")
        yield key, _read_value(f, sep, where(name, key=key))


def _iter_scp(rspec: str, scp: str) -> Iterator[tuple[str, np.ndarray]]:
    with _open_rx(scp, rspec) as lines:
        entries = []
        for n, raw in enumerate(lines.read().decode("utf-8", "replace").splitlines(), 1):
            fields = raw.strip().split(None, 1)
            if not fields:
                continue
            if len(fields) != 2:
                raise BabelflowError(f"{where(scp, n, fields[0])}: expected 'key rxfilename'")
            entries.append((n, *fields))
    with contextlib.ExitStack() as stack:
        cur_name, cur = None, None
        for n, key, rx in entries:
            loc = where(scp, n, key)
            m = re.match(r"^(.*):(\d+)$", rx)
            if rx.endswith("|") or not m:
                with _open_rx(rx, loc) as f:
                    yield key, _read_value(f, b" ", loc)
                continue
            path, offset = m.group(1), int(m.group(2))
            if path != cur_name:  # consecutive entries usually share one archive: keep it open
                stack.close()
                cur = stack.enter_context(_open_rx(path, loc))
                cur_name = path
            cur.seek(offset)
            yield key, _read_value(cur, b" ", loc)


def read_int_vectors(rspecifier: str) -> Iterator[tuple[str, np.ndarray]]:
    """Iterate a Kaldi int32-vector table (``ark:``/``scp:``, binary or text, files or pipes)."""
    kind, rx = _parse_rspecifier(rspecifier)
    if kind == "scp":
        yield from _iter_scp(rspecifier, rx)
        return
    with _open_rx(rx, rspecifier) as f:
        yield from _iter_archive(f, rspecifier)


def _encode(key: str, v: np.ndarray, binary: bool, loc: str) -> bytes:
    if not key or any(ch.isspace() for ch in key):
        raise BabelflowError(f"{loc}: invalid key {key!r} (must be non-empty, without whitespace)")
    v = np.asarray(v)
    if v.ndim != 1 or not (v.size == 0 or np.issubdtype(v.dtype, np.integer)):
        raise BabelflowError(f"{where(loc, key=key)}: expected a 1-D integer vector, got {v.dtype} {v.shape}")
    if v.size and (v.min() < -(2**31) or v.max() >= 2**31):
        raise BabelflowError(f"{where(loc, key=key)}: value out of int32 range")
    if not binary:
        return (key + " " + "".join(f"{x} " for x in v.tolist()) + "\n").encode()
    rec = np.empty(v.size, dtype=_BIN_REC)
    rec["size"] = 4
    rec["value"] = v
    return key.encode() + b" \0B\x04" + struct.pack("<i", v.size) + rec.tobytes()


@contextlib.contextmanager
def _open_wx(wx: str, loc: str) -> Iterator[BinaryIO]:
    """Open a Kaldi wxfilename: ``-`` (stdout), ``| command`` or a file (written atomically)."""
    if wx == "-":
        sys.stdout.flush()
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    if wx.lstrip().startswith("|"):
        cmd = wx.lstrip()[1:]
        proc = subprocess.Popen(cmd, shell=True, stdin=subprocess.PIPE)
        try:
            yield proc.stdin
        finally:
            proc.stdin.close()
            rc = proc.wait()
        if rc != 0:
            raise BabelflowError(f"{loc}: command '{cmd.strip()}' failed (exit status {rc})")
        return
    try:
        with atomic_open(wx, "wb") as f:
            yield f
    except OSError as e:
        raise BabelflowError(f"{loc}: cannot write {wx} ({e.strerror or e})") from None


def write_int_vectors(wspecifier: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
    """Write a Kaldi int32-vector table: ``ark[,t|b]:x`` or ``ark,scp[,t]:ark_file,scp_file``."""
    m = re.match(r"^([a-z,]+):(.*)$", wspecifier, re.S)
    opts = m.group(1).split(",") if m else []
    kinds = [o for o in opts if o in ("ark", "scp")]
    if not m or not m.group(2) or kinds not in (["ark"], ["ark", "scp"]) or \
            not set(opts) - {"ark", "scp"} <= {"b", "t", "f", "nf", "p"}:
        raise BabelflowError(f"{wspecifier!r}: unsupported wspecifier (expected ark[,t]:<wxfilename> "
                             "or ark,scp[,t]:<archive>,<scp>)")
    binary = True
    for o in opts:  # the last of b/t wins, binary by default, as in Kaldi
        binary = {"b": True, "t": False}.get(o, binary)
    ark, scp = m.group(2), None
    if kinds == ["ark", "scp"]:
        ark, _, scp = ark.partition(",")
        if not scp or ark == "-" or ark.lstrip().startswith("|"):
            raise BabelflowError(f"{wspecifier!r}: bad wspecifier: ark,scp needs a real archive file and a script file")
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(_open_wx(ark, wspecifier))
        scp_out = stack.enter_context(_open_wx(scp, wspecifier)) if scp else None
        pos = 0
        for key, vec in items:
            data = _encode(key, vec, binary, wspecifier)
            out.write(data)
            if scp_out is not None:  # the offset points just past "key ", at the object itself
                scp_out.write(f"{key} {ark}:{pos + len(key.encode()) + 1}\n".encode())
            pos += len(data)


def _to_pdfs(table: np.ndarray, ali: np.ndarray, loc: str) -> np.ndarray:
    bad = (ali < 1) | (ali >= table.size)
    if bad.any():
        i = int(np.argmax(bad))
        raise BabelflowError(f"{loc}: transition-id {int(ali[i])} at frame {i} is out of range "
                             f"1..{table.size - 1} of the model")
    return table[ali]


def ali_to_pdf(model_path: str | os.PathLike, ali_rspecifier: str, pdf_wspecifier: str) -> int:
    """Kaldi ``ali-to-pdf``: map transition-id alignments to pdf-ids; returns the utterance count."""
    table = read_transition_model(model_path).transition_id_to_pdf()
    count = 0

    def converted() -> Iterator[tuple[str, np.ndarray]]:
        nonlocal count
        for key, ali in read_int_vectors(ali_rspecifier):
            yield key, _to_pdfs(table, ali, f"{where(ali_rspecifier, key=key)} (model {model_path})")
            count += 1

    write_int_vectors(pdf_wspecifier, converted())
    log.info("Converted %d alignments to pdf sequences.", count)
    return count


class AlignmentDir:
    """A Kaldi alignment dir (``ali.N.gz`` for N=1..num_jobs, ``final.mdl``, ``num_jobs``).

    Everything is validated up front so a broken dir fails before training starts, with
    the name of the missing or corrupt file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise BabelflowError(f"{self.path}: alignment directory not found")
        nj_file = self.path / "num_jobs"
        text = read_scalar(nj_file)
        if not text.isdigit() or int(text) < 1:
            raise BabelflowError(f"{nj_file}: expected a positive integer, got {text!r}")
        self.num_jobs = int(text)
        self.ali_files = [self.path / f"ali.{n}.gz" for n in range(1, self.num_jobs + 1)]
        missing = [p.name for p in self.ali_files if not p.is_file()]
        if missing:
            raise BabelflowError(f"{self.path / missing[0]}: file not found ({nj_file} says "
                                 f"{self.num_jobs} jobs; missing: {', '.join(missing)})")
        self.transition_model: TransitionModel = read_transition_model(self.path / "final.mdl")
        self.num_pdfs: int = self.transition_model.num_pdfs
        self.phones: dict[int, str] | None = None
        if (self.path / "phones.txt").is_file():
            self.phones = self._read_phones(self.path / "phones.txt")

    def _read_phones(self, path: Path) -> dict[int, str]:
        phones: dict[int, str] = {}
        for n, sym, (num,) in read_table(path, 2, 2):
            if not num.isdigit():
                raise BabelflowError(f"{where(path, n, sym)}: expected a non-negative integer id, got {num!r}")
            phones[int(num)] = sym
        absent = sorted(set(self.transition_model.topology.phones) - phones.keys())
        if absent:
            raise BabelflowError(f"{path}: phone ids {absent} of final.mdl are missing (phones.txt from another lang?)")
        return phones

    def _job(self, ali: Path) -> Iterator[tuple[str, np.ndarray]]:
        try:
            with gzip.open(ali, "rb") as f:
                yield from _iter_archive(f, str(ali))
        except (OSError, EOFError, zlib.error) as e:
            raise BabelflowError(f"{ali}: corrupt or truncated gzip archive ({e})") from None

    def transition_alignments(self) -> Iterator[tuple[str, np.ndarray]]:
        """All utterances' transition-ids, job by job, in archive order."""
        for ali in self.ali_files:
            yield from self._job(ali)

    def pdf_alignments(self) -> Iterator[tuple[str, np.ndarray]]:
        """All utterances' pdf-ids (int32), what the nnet is trained on."""
        table = self.transition_model.transition_id_to_pdf()
        for ali in self.ali_files:
            for key, tids in self._job(ali):
                yield key, _to_pdfs(table, tids, f"{where(ali, key=key)} (model {self.path / 'final.mdl'})")


def read_pdf_alignments(source: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """pdf-id targets from an alignment dir or from an ``ark:``/``scp:`` table of ready pdf-ids."""
    text = os.fspath(source)
    if _RSPEC.match(text):
        return read_int_vectors(text)
    if os.path.isdir(text):
        return AlignmentDir(text).pdf_alignments()
    raise BabelflowError(f"{text}: neither an alignment directory nor an ark:/scp: rspecifier")
