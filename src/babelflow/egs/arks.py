"""Kaldi archives read in place: matrices and vectors as views of the memory-mapped file, by scp offset."""

from __future__ import annotations

import contextlib
import mmap
import struct

import numpy as np


class KaldiArks:
    """Kaldi binary float matrices and int32 vectors by rxfilename (``ark:offset``, as in a scp),
    read as views of the memory-mapped archive: no read or parse per matrix, so reading a whole
    scp costs what touching its pages does. Anything else (compressed or text matrices, pipes,
    ranges) goes through kaldiio."""

    def __init__(self):
        self._maps: dict[str, _Map | None] = {}

    def _locate(self, rx: str, head: int) -> tuple[_Map | None, int]:
        path, sep, off = rx.rpartition(":")
        if not sep or not off.isdigit() or path.rstrip().endswith("|"):
            return None, 0
        m = self._maps.get(path, False)
        if m is False:
            m = self._maps[path] = _Map.open(path)
        off = int(off)
        return (m, off) if m is not None and off + head <= m.size else (None, 0)

    def matrix(self, rx: str) -> np.ndarray:
        """A float matrix (read-only; float32 from a ``FM`` matrix, as kaldiio.load_mat reads it)."""
        m, off = self._locate(rx, 15)
        if m is not None:
            tag, rows, four, cols = _MATRIX_HEAD.unpack_from(m.mm, off)
            end = off + 15 + 4 * rows * cols
            if tag == b"\0BFM \4" and four == 4 and rows >= 0 and cols >= 0 and end <= m.size:
                m.touch(off, end)
                return np.frombuffer(m.mm, "<f4", rows * cols, off + 15).reshape(rows, cols)
        import kaldiio

        return kaldiio.load_mat(rx)

    def int_vector(self, rx: str) -> np.ndarray:
        """An int32 vector (as kaldiio.load_mat reads it)."""
        m, off = self._locate(rx, 8)
        if m is not None:
            tag, size, four = _VECTOR_HEAD.unpack_from(m.mm, off)
            end = off + 7 + 5 * size  # each element: its size (4), then the value
            if tag == b"\0B\4" and 0 <= size and end <= m.size and (size == 0 or four == m.mm[end - 5] == 4):
                m.touch(off, end)
                return np.ndarray((size,), "<i4", m.mm, off + 8, (5,))
        import kaldiio

        return np.asarray(kaldiio.load_mat(rx), np.int32)

    def release(self) -> None:
        """Unmap the pages read since the last call from this process (they stay in the page cache,
        and the arrays returned stay valid: read again, a page maps back in)."""
        for m in self._maps.values():
            if m is not None:
                m.release()


_MATRIX_HEAD = struct.Struct("<6sibi")  # "\0BFM \4" rows "\4" cols
_VECTOR_HEAD = struct.Struct("<3sib")  # "\0B\4" size, then the first element's size


class _Map:
    """One memory-mapped archive, and the byte range read from it since the last release."""

    def __init__(self, mm: mmap.mmap):
        self.mm, self.size = mm, len(mm)
        self.lo, self.hi = self.size, 0

    @classmethod
    def open(cls, path: str) -> _Map | None:
        try:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # not a regular file, empty, ...: kaldiio reads it
            return None
        with contextlib.suppress(AttributeError, OSError):
            mm.madvise(mmap.MADV_SEQUENTIAL)  # scp order is usually archive order
        return cls(mm)

    def touch(self, lo: int, hi: int) -> None:
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)

    def release(self) -> None:
        if self.hi > self.lo:
            lo = self.lo - self.lo % mmap.PAGESIZE
            with contextlib.suppress(AttributeError, OSError):
                self.mm.madvise(mmap.MADV_DONTNEED, lo, self.hi - lo)
        self.lo, self.hi = self.size, 0
