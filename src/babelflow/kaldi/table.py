"""Kaldi tables (util/kaldi-table): rspecifiers, wspecifiers, rx/wxfilenames, archives and scp files.

The generic half of every table reader and writer; what an object looks like is left to a
``read_object``/``write_object`` callback, so one table layer serves int32 vectors, egs, ...

- rxfilename: ``-`` (stdin), ``command |`` (its stdout) or a file; a failed command is an
  error naming it, not an empty table;
- wxfilename: ``-`` (stdout), ``| command`` or a file, written atomically;
- archive: ``key`` then one space and the object; a binary object starts with ``\\0B``. As in
  Kaldi a newline after the key is left to the object (``key\\n``: a text object that starts with
  the newline, e.g. an empty int vector);
- scp: ``key rxfilename`` lines, where ``file:offset`` points at the object inside an archive.

Errors are :class:`BabelflowError`\\ s naming the rspecifier/wspecifier (or file) and the key.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, TypeVar

from ..errors import BabelflowError, where
from ..io import atomic_open
from .basic_io import KaldiFormatError, peek, read_binary_header

__all__ = ["looks_like_rspecifier", "parse_rspecifier", "parse_wspecifier", "open_rxfilename",
           "open_wxfilename", "read_archive", "iter_table", "write_table"]

T = TypeVar("T")
ReadObject = Callable[[BinaryIO, bool, str], T]  # (stream, binary, location for errors) -> object
WriteObject = Callable[[BinaryIO, bool, T], None]  # (stream, binary, object); the "\0B" is already written

_WS = b" \t\n\v\f\r"
_KEY_END = re.compile(rb"[ \t\n\v\f\r]")
_RSPEC = re.compile(r"^(ark|scp)((?:,[a-z]+)*):(.*)$", re.S)
_ROPTS = {"o", "no", "s", "ns", "cs", "ncs", "p", "np", "b", "t", "bg"}
_WOPTS = {"b", "t", "f", "nf", "p"}


# ----------------------------------------------------------------------------- specifiers
def looks_like_rspecifier(text: str) -> bool:
    """Whether ``text`` has the form of an rspecifier (``ark...:`` or ``scp...:``); not validated."""
    return _RSPEC.match(text) is not None


def parse_rspecifier(rspecifier: str) -> tuple[str, str]:
    """``ark[,opts]:rx`` or ``scp[,opts]:rx`` -> (``"ark"`` or ``"scp"``, rxfilename)."""
    m = _RSPEC.match(rspecifier)
    opts = set(m.group(2).split(",")[1:]) if m else set()
    if not m or not m.group(3) or not opts <= _ROPTS:
        raise BabelflowError(f"{rspecifier!r}: not a Kaldi rspecifier (expected ark:<rxfilename> or scp:<rxfilename>)")
    return m.group(1), m.group(3)


def parse_wspecifier(wspecifier: str) -> tuple[str, str | None, bool]:
    """``ark[,t|b]:x`` or ``ark,scp[,t]:a,s`` -> (archive wxfilename, scp wxfilename or None, binary).
    The last of ``b``/``t`` wins, binary by default, as in Kaldi."""
    m = re.match(r"^([a-z,]+):(.*)$", wspecifier, re.S)
    opts = m.group(1).split(",") if m else []
    kinds = [o for o in opts if o in ("ark", "scp")]
    if not m or not m.group(2) or kinds not in (["ark"], ["ark", "scp"]) or not set(opts) - {"ark", "scp"} <= _WOPTS:
        raise BabelflowError(f"{wspecifier!r}: unsupported wspecifier (expected ark[,t]:<wxfilename> "
                             "or ark,scp[,t]:<archive>,<scp>)")
    binary = True
    for o in opts:
        binary = {"b": True, "t": False}.get(o, binary)
    ark, scp = m.group(2), None
    if kinds == ["ark", "scp"]:
        ark, _, scp = ark.partition(",")
        if not scp or ark == "-" or ark.lstrip().startswith("|"):
            raise BabelflowError(f"{wspecifier!r}: bad wspecifier: ark,scp needs a real archive file and a script file")
    return ark, scp, binary


# ----------------------------------------------------------------------------- rx/wxfilenames
@contextlib.contextmanager
def open_rxfilename(rx: str, loc: str | None = None) -> Iterator[BinaryIO]:
    """Open a Kaldi rxfilename for reading: ``-`` (stdin), ``command |`` (its stdout) or a file.
    A command that exits non-zero is an error (also when the data it gave looked bad);
    ``loc`` (default: ``rx``) prefixes the errors."""
    loc = rx if loc is None else loc
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


@contextlib.contextmanager
def open_wxfilename(wx: str, loc: str | None = None) -> Iterator[BinaryIO]:
    """Open a Kaldi wxfilename for writing: ``-`` (stdout), ``| command`` or a file, written
    atomically (it appears, complete, only if the block succeeds); ``loc`` prefixes the errors."""
    loc = wx if loc is None else loc
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


# ----------------------------------------------------------------------------- reading
def _read_key(f: BinaryIO) -> tuple[str, bytes] | None:
    """Archive key and the byte after it (consumed if a space or tab, b"" at EOF); None at a
    clean end of archive."""
    c = f.read(1)
    while c and c in _WS:
        c = f.read(1)
    if not c:
        return None
    key = bytearray(c)
    while chunk := peek(f, 64):  # the rest of the key, up to (not into) the byte after it
        end = _KEY_END.search(chunk)
        key += f.read(end.start() if end else len(chunk))
        if end:
            break
    c = chunk[end.start():end.start() + 1] if chunk else b""
    if c in (b" ", b"\t"):
        f.read(1)
    return key.decode("utf-8", "backslashreplace"), c


def _read_object(f: BinaryIO, loc: str, read_object: ReadObject[T]) -> T:
    """Kaldi's holder Read: an optional ``\\0B`` header, then the object; format errors get ``loc``."""
    try:
        return read_object(f, read_binary_header(f), loc)
    except KaldiFormatError as e:
        raise BabelflowError(f"{loc}: {e}") from None


def read_archive(f: BinaryIO, name: str, read_object: ReadObject[T]) -> Iterator[tuple[str, T]]:
    """Iterate the (key, object) pairs of an archive on an open stream; ``name`` is for errors."""
    while (kc := _read_key(f)) is not None:
        key, sep = kc
        loc = where(name, key=key)
        if not sep:
            raise BabelflowError(f"{loc}: archive ends right after the key (truncated?)")
        if sep not in (b" ", b"\t", b"\n"):
            raise BabelflowError(f"{loc}: expected a space after the key (truncated or not an archive?)")
        yield key, _read_object(f, loc, read_object)


def _iter_scp(rspec: str, scp: str, read_object: ReadObject[T]) -> Iterator[tuple[str, T]]:
    with open_rxfilename(scp, rspec) as lines:
        text = lines.read().decode("utf-8", "replace")
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split(None, 1)
        if not fields:
            continue
        if len(fields) != 2:
            raise BabelflowError(f"{rspec}: {where(scp, n, fields[0])}: expected 'key rxfilename'")
        entries.append((fields[0], fields[1].strip()))
    with contextlib.ExitStack() as stack:
        cur_path, cur = None, None
        for key, rx in entries:
            loc = f"{where(rspec, key=key)} ({rx})"
            m = re.match(r"^(.*):(\d+)$", rx)
            if rx.endswith("|") or not m:
                with open_rxfilename(rx, loc) as f:
                    yield key, _read_object(f, loc, read_object)
                continue
            if m.group(1) != cur_path:  # consecutive entries usually share one archive: keep it open
                stack.close()
                cur, cur_path = stack.enter_context(open_rxfilename(m.group(1), loc)), m.group(1)
            cur.seek(int(m.group(2)))
            yield key, _read_object(cur, loc, read_object)


def iter_table(rspecifier: str, read_object: ReadObject[T]) -> Iterator[tuple[str, T]]:
    """Iterate a Kaldi table (``ark:``/``scp:``; binary or text; files, ``-``, ``cmd |`` pipes,
    ``file:offset`` scp entries). ``read_object(f, binary, loc)`` reads one object after its
    ``\\0B`` header (if any) and raises BabelflowError (prefixed with ``loc``) or KaldiFormatError."""
    kind, rx = parse_rspecifier(rspecifier)
    if kind == "scp":
        yield from _iter_scp(rspecifier, rx, read_object)
        return
    with open_rxfilename(rx, rspecifier) as f:
        yield from read_archive(f, rspecifier, read_object)


# ----------------------------------------------------------------------------- writing
def write_table(wspecifier: str, items: Iterable[tuple[str, T]], write_object: WriteObject[T]) -> int:
    """Write a Kaldi table (``ark[,t|b]:x``, ``ark,scp[,t]:a,s``; ``-``, ``| cmd`` or files written
    atomically). ``write_object(f, binary, obj)`` writes one object after ``key `` and the ``\\0B``
    header; its BabelflowError/ValueError is re-raised naming the key. Returns the number written."""
    ark, scp, binary = parse_wspecifier(wspecifier)
    count = pos = 0
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open_wxfilename(ark, wspecifier))
        scp_out = stack.enter_context(open_wxfilename(scp, wspecifier)) if scp else None
        for key, obj in items:
            if not key or any(ch.isspace() for ch in key):
                raise BabelflowError(f"{wspecifier}: invalid key {key!r} (must be non-empty, without whitespace)")
            buf = io.BytesIO()
            buf.write(key.encode() + (b" \0B" if binary else b" "))
            try:
                write_object(buf, binary, obj)
            except (BabelflowError, ValueError) as e:
                raise BabelflowError(f"{where(wspecifier, key=key)}: {e}") from None
            data = buf.getvalue()
            out.write(data)
            if scp_out is not None:  # the offset points just past "key ", at the object itself
                scp_out.write(f"{key} {ark}:{pos + len(key.encode()) + 1}\n".encode())
            pos += len(data)
            count += 1
    return count
