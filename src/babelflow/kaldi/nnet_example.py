"""Kaldi nnet3 training examples (``NnetExample``, "egs"): objects and archives, binary and text.

Byte-compatible with ``nnet3-get-egs``/``nnet3-copy-egs`` so babelflow can train on Kaldi egs
and hand its own egs to Kaldi tools. Layout (nnet3/nnet-example.cc, nnet-common.cc)::

    <Nnet3Eg> <NumIo> n  [<NnetIo> name <I1V> size [Index x size] GeneralMatrix </NnetIo>] x n  </Nnet3Eg>

Indexes (n, t, x) are ``<I1> n t x`` in text; in binary each is one signed byte when it only
moves t by less than 125 from the previous index (t itself for the first, if n = x = 0), else
the escape byte 127 and three int32s, so merged minibatches escape at every change of n.

A compressed input is decoded on reading, but its original bytes are kept (``NnetIo.compressed``)
and written back unchanged while the features still equal them, as ``nnet3-copy-egs`` copies a
CompressedMatrix verbatim instead of re-quantising it.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from ..errors import BabelflowError
from .basic_io import KaldiFormatError, _read_exact, _read_word, _where, peek, read_int32, write_int32, write_token
from .general_matrix import (
    COMPRESSED_TOKENS,
    SparseMatrix,
    decompress_matrix,
    read_general_matrix_raw,
    write_general_matrix,
)
from .table import iter_table, write_table

__all__ = ["NnetIo", "NnetExample", "read_egs", "write_egs", "egs_to_text"]

_ESCAPE = 127
_CORRUPT = (struct.error, ValueError, IndexError, OverflowError, UnicodeDecodeError, MemoryError)


# ----------------------------------------------------------------------------- index vectors
def _token(f: BinaryIO, expected: str | None = None) -> str:
    """Kaldi ReadToken/ExpectToken: a word and the one whitespace byte after it, which must be
    there (so an archive cut right after ``</Nnet3Eg>`` is an error, as in Kaldi)."""
    start = _where(f)
    tok = _read_word(f, "a token")
    if not f.read(1):
        raise KaldiFormatError(f"unexpected end of file after token {tok[:40]!r} (truncated?){start}")
    if expected is not None and tok != expected and tok != expected[1:]:
        raise KaldiFormatError(f"expected token {expected}, got {tok[:40]!r}{start}")
    return tok


def _read_indexes(f: BinaryIO, binary: bool) -> np.ndarray:
    _token(f, "<I1V>")
    size = read_int32(f, binary)
    if size < 0:
        raise KaldiFormatError(f"negative index-vector size {size}{_where(f)}")
    if not binary:
        rows = []
        for _ in range(size):
            _token(f, "<I1>")
            rows.append((read_int32(f, binary), read_int32(f, binary), read_int32(f, binary)))
        return np.array(rows, dtype=np.int32).reshape(size, 3)
    head = np.frombuffer(peek(f, size), dtype=np.int8)
    if len(head) == size and np.all(np.abs(head.astype(np.int32)) < 125):  # all compact: n = x = 0
        f.read(size)
        out = np.zeros((size, 3), dtype=np.int64)
        out[:, 1] = np.cumsum(head, dtype=np.int64)
        return out.astype(np.int32)
    rows, n, t, x = [], 0, 0, 0  # (size is not trusted for an allocation: it may be corrupt)
    for i in range(size):
        c = struct.unpack("b", _read_exact(f, 1, "an index"))[0]
        if abs(c) < 125:
            n, t, x = (0, c, 0) if i == 0 else (n, (t + c + 2**31) % 2**32 - 2**31, x)  # int32 wraps
        elif c == _ESCAPE:
            n, t, x = read_int32(f, True), read_int32(f, True), read_int32(f, True)
        else:
            raise KaldiFormatError(f"unexpected byte {c} in an index vector{_where(f)}")
        rows.append((n, t, x))
    return np.array(rows, dtype=np.int32).reshape(size, 3)


def _write_indexes(f: BinaryIO, binary: bool, idx: np.ndarray) -> None:
    write_token(f, binary, "<I1V>")
    write_int32(f, binary, len(idx))
    if not binary:
        f.write("".join(f"<I1> {n} {t} {x} " for n, t, x in idx.tolist()).encode())
        return
    v = idx.astype(np.int64)
    step = np.diff(v[:, 1], prepend=0)
    prev_nx = np.vstack([[0, 0], v[:-1, [0, 2]]]) if len(v) else np.zeros((0, 2), np.int64)
    compact = np.all(v[:, [0, 2]] == prev_nx, axis=1) & (np.abs(step) < 125)
    if compact.all():
        f.write(step.astype(np.int8).tobytes())
        return
    for (n, t, x), d, ok in zip(v.tolist(), step.tolist(), compact.tolist()):
        f.write(struct.pack("b", d) if ok else b"\x7f" + struct.pack("<bibibi", 4, n, 4, t, 4, x))


# ----------------------------------------------------------------------------- objects
@dataclass(eq=False)
class NnetIo:
    """One named input or output of an eg: indexes (size, 3) int32 columns n, t, x, and one
    feature row per index (full float32 matrix or SparseMatrix)."""

    name: str
    indexes: np.ndarray
    features: np.ndarray | SparseMatrix
    compressed: bytes | None = field(default=None, repr=False)  # original CM/CM2/CM3 bytes, if any

    def __post_init__(self) -> None:
        idx = np.asarray(self.indexes, dtype=np.int64).reshape(-1, 3)
        if idx.size and (idx.min() < -(2**31) or idx.max() >= 2**31):
            raise ValueError(f"io '{self.name}': index out of int32 range")
        self.indexes = idx.astype(np.int32)
        if not isinstance(self.features, SparseMatrix):
            self.features = np.asarray(self.features, dtype=np.float32)
            if self.features.ndim != 2:
                raise ValueError(f"io '{self.name}': features must be 2-D, got shape {self.features.shape}")

    @classmethod
    def frames(cls, name: str, t_begin: int, features: np.ndarray | SparseMatrix, t_stride: int = 1) -> NnetIo:
        """Kaldi's NnetIo constructor: one row per frame, indexes (0, t_begin + i*t_stride, 0)."""
        rows = features.shape[0]
        idx = np.zeros((rows, 3), dtype=np.int64)
        idx[:, 1] = t_begin + t_stride * np.arange(rows)
        return cls(name, idx, features)

    @property
    def num_rows(self) -> int:
        return self.features.shape[0]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NnetIo):
            return NotImplemented
        a, b = self.features, other.features
        if isinstance(a, SparseMatrix) != isinstance(b, SparseMatrix):
            return False
        same = a == b if isinstance(a, SparseMatrix) else np.array_equal(a, b)
        return self.name == other.name and np.array_equal(self.indexes, other.indexes) and same

    def _kept_compressed(self, compress: str | None) -> bytes | None:
        """The original compressed bytes, if still valid and compatible with ``compress``."""
        raw = self.compressed
        if raw is None or isinstance(self.features, SparseMatrix):
            return None
        if compress not in (None, "auto", raw.split(b" ", 1)[0].decode()):
            return None
        dec = decompress_matrix(raw)
        return raw if dec.shape == self.features.shape and np.array_equal(dec, self.features) else None

    @classmethod
    def read(cls, f: BinaryIO, binary: bool) -> NnetIo:
        _token(f, "<NnetIo>")
        name = _token(f)
        indexes = _read_indexes(f, binary)
        features, raw = read_general_matrix_raw(f, binary)
        if features.shape[0] != len(indexes):
            raise KaldiFormatError(f"io '{name}' has {len(indexes)} indexes but its matrix has "
                                   f"{features.shape[0]} rows{_where(f)}")
        _token(f, "</NnetIo>")
        return cls(name, indexes, features, raw)

    def write(self, f: BinaryIO, binary: bool, compress: str | None = None) -> None:
        if self.num_rows != len(self.indexes):
            raise BabelflowError(f"io '{self.name}' has {len(self.indexes)} indexes but {self.num_rows} feature rows")
        write_token(f, binary, "<NnetIo>")
        write_token(f, binary, self.name)
        _write_indexes(f, binary, self.indexes)
        kept = self._kept_compressed(compress)
        if kept is not None and binary:
            f.write(kept)
        elif kept is not None:  # text: the decoded values, which the features still are
            write_general_matrix(f, False, self.features)
        else:
            write_general_matrix(f, binary, self.features, compress)
        write_token(f, binary, "</NnetIo>")


@dataclass
class NnetExample:
    """Kaldi nnet3 ``NnetExample``: a list of NnetIo (e.g. ``input``, ``ivector``, ``output``)."""

    io: list[NnetIo]

    @classmethod
    def read(cls, f: BinaryIO, binary: bool) -> NnetExample:
        _token(f, "<Nnet3Eg>")
        _token(f, "<NumIo>")
        size = read_int32(f, binary)
        if not 0 < size <= 1_000_000:
            raise KaldiFormatError(f"invalid <NumIo> {size}{_where(f)}")
        ios = [NnetIo.read(f, binary) for _ in range(size)]
        _token(f, "</Nnet3Eg>")
        return cls(ios)

    def write(self, f: BinaryIO, binary: bool, compress: str | None = None) -> None:
        """Kaldi NnetExample::Write; ``compress`` (auto/CM/CM2/CM3) as ``nnet3-get-egs --compress``."""
        if not self.io:
            raise BabelflowError("cannot write an NnetExample without any NnetIo")
        write_token(f, binary, "<Nnet3Eg>")
        write_token(f, binary, "<NumIo>")
        write_int32(f, binary, len(self.io))
        for nio in self.io:
            nio.write(f, binary, compress)
        write_token(f, binary, "</Nnet3Eg>")

    def to_text(self, compress: str | None = None) -> str:
        """Kaldi's text form of this eg (what follows ``key `` in an ``ark,t`` archive)."""
        buf = io.BytesIO()
        self.write(buf, False, compress)
        return buf.getvalue().decode()


def egs_to_text(key: str, eg: NnetExample) -> str:
    """One ``ark,t`` entry as ``nnet3-copy-egs ... ark,t:-`` prints it: ``key <Nnet3Eg> ... </Nnet3Eg> ``
    (no newline after the object: the next key follows on the same line)."""
    return f"{key} {eg.to_text()}"


# ----------------------------------------------------------------------------- tables
def _read_eg(f: BinaryIO, binary: bool, loc: str) -> NnetExample:
    try:
        return NnetExample.read(f, binary)
    except _CORRUPT as e:
        raise BabelflowError(f"{loc}: corrupt eg data ({type(e).__name__}: {e}){_where(f)}") from None


def read_egs(rspecifier: str) -> Iterator[tuple[str, NnetExample]]:
    """Iterate a Kaldi egs table: ``ark:``/``scp:`` (binary or text, files, ``-``, ``cmd|`` pipes,
    ``file:offset`` scp entries). Corrupt or truncated input is a BabelflowError naming the key."""
    return iter_table(rspecifier, _read_eg)


def write_egs(wspecifier: str, items: Iterable[tuple[str, NnetExample]], compress: str | None = None) -> int:
    """Write a Kaldi egs table (``ark[,t]:x``, ``ark,scp[,t]:a,b``, ``-``, ``| cmd``); files are
    written atomically. ``compress`` as in :meth:`NnetExample.write`. Returns the number written."""
    if compress not in (None, "auto", *COMPRESSED_TOKENS):
        raise ValueError(f"unknown compression method {compress!r}")
    return write_table(wspecifier, items, lambda f, binary, eg: eg.write(f, binary, compress))
