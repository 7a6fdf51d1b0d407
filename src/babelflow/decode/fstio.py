"""OpenFst binary I/O in numpy, and an isomorphism check (``fstisomorphic``) for graph tests.

Kaldi writes ``HCLG.fst`` as a *const* FST, which kaldifst 1.7.17 cannot read, and kaldifst has
no mutable arc iterator, so rewriting arc weights or labels arc by arc from Python costs a few
microseconds per arc. Here FSTs travel as flat numpy arrays (:class:`FstArrays`): read from
OpenFst's const layout (header, 20-byte states, 16-byte arcs) and written in its vector layout,
which kaldifst reads back; both are exact (float32 weights, no text round trip).
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BabelflowError
from ..io import is_special_file, mkstemp_for

__all__ = ["FstArrays", "read_fst", "write_fst", "fst_to_arrays", "arrays_to_fst", "isomorphism_mismatch"]

_FST_MAGIC = 2125659606
_SYMTAB_MAGIC = 2125658996
_HAS_ISYMBOLS, _HAS_OSYMBOLS, _IS_ALIGNED = 1, 2, 4
_STATE = np.dtype([("final", "<f4"), ("pos", "<u4"), ("narcs", "<u4"), ("niepsilons", "<u4"), ("noepsilons", "<u4")])
_ARC = np.dtype([("ilabel", "<i4"), ("olabel", "<i4"), ("weight", "<f4"), ("nextstate", "<i4")])


@dataclass
class FstArrays:
    """A standard-arc FST as arrays: per state ``final`` (float32, ``inf`` = not final), and the arcs
    grouped by source state in their stored order (``src`` is non-decreasing)."""

    start: int
    final: np.ndarray
    src: np.ndarray
    ilabel: np.ndarray
    olabel: np.ndarray
    weight: np.ndarray
    dst: np.ndarray

    @property
    def num_states(self) -> int:
        return int(self.final.size)

    @property
    def num_arcs(self) -> int:
        return int(self.src.size)

    def offsets(self) -> np.ndarray:
        """First arc of each state, plus the end: state ``s`` owns arcs ``offsets[s]:offsets[s+1]``."""
        return np.searchsorted(self.src, np.arange(self.num_states + 1)).astype(np.int64)

    def replace(self, **arrays: np.ndarray) -> FstArrays:
        fields = {k: getattr(self, k) for k in ("start", "final", "src", "ilabel", "olabel", "weight", "dst")}
        return FstArrays(**{**fields, **arrays})


def _kaldifst():
    from ..gmm.k2 import kaldifst  # import order: see gmm/k2.py

    return kaldifst


class _Reader:
    def __init__(self, data: bytes, path: object) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise BabelflowError(f"{self.path}: truncated FST file")
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out[0] if len(out) == 1 else out

    def string(self) -> str:
        n = self.take("<i")
        if not 0 <= n < 1 << 20 or self.pos + n > len(self.data):
            raise BabelflowError(f"{self.path}: not an OpenFst file (bad header string)")
        s = self.data[self.pos:self.pos + n].decode("latin-1")
        self.pos += n
        return s

    def skip_symbol_table(self) -> None:
        if self.take("<i") != _SYMTAB_MAGIC:
            raise BabelflowError(f"{self.path}: bad symbol table in FST header")
        self.string()
        _, size = self.take("<qq")
        for _ in range(size):
            self.string()
            self.take("<q")

    def align(self) -> None:
        self.pos += -self.pos % 16  # OpenFst's kFileAlign

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        end = self.pos + dtype.itemsize * count
        if count < 0 or end > len(self.data):
            raise BabelflowError(f"{self.path}: truncated FST file ({count} records expected)")
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos = end
        return out


def _header(r: _Reader) -> tuple[str, int, int, int, int]:
    if len(r.data) < 4 or r.take("<i") != _FST_MAGIC:
        raise BabelflowError(f"{r.path}: not a binary OpenFst file (bad magic number)")
    fst_type, arc_type = r.string(), r.string()
    version, flags, _properties, start, num_states, num_arcs = r.take("<iiQqqq")
    if arc_type != "standard":
        raise BabelflowError(f"{r.path}: FST arc type '{arc_type}', expected 'standard' (tropical weights)")
    if flags & _HAS_ISYMBOLS:
        r.skip_symbol_table()
    if flags & _HAS_OSYMBOLS:
        r.skip_symbol_table()
    if fst_type == "const" and version == 1:  # OpenFst's kAlignedFileVersion
        flags |= _IS_ALIGNED
    return fst_type, flags, start, num_states, num_arcs


def _const_arrays(r: _Reader, flags: int, start: int, num_states: int, num_arcs: int) -> FstArrays:
    if flags & _IS_ALIGNED:
        r.align()
    states = r.array(_STATE, num_states)
    if flags & _IS_ALIGNED:
        r.align()
    arcs = r.array(_ARC, num_arcs)
    narcs = states["narcs"].astype(np.int64)
    first = np.concatenate([[0], np.cumsum(narcs)[:-1]]).astype(np.int64)
    idx = np.repeat(states["pos"].astype(np.int64) - first, narcs) + np.arange(int(narcs.sum()))
    if narcs.sum() != num_arcs or (idx.size and (idx.min() < 0 or idx.max() >= num_arcs)):
        raise BabelflowError(f"{r.path}: inconsistent const FST (arc ranges do not match the arc count)")
    a = arcs[idx]
    if a.size and (a["nextstate"].min() < 0 or a["nextstate"].max() >= num_states):
        raise BabelflowError(f"{r.path}: const FST arc points to a state that does not exist")
    return FstArrays(int(start), states["final"].copy(), np.repeat(np.arange(num_states, dtype=np.int32), narcs),
                     a["ilabel"].copy(), a["olabel"].copy(), a["weight"].copy(), a["nextstate"].copy())


def read_fst(path: str | os.PathLike):
    """A ``kaldifst.StdVectorFst`` from a binary OpenFst file of type vector or const (Kaldi's HCLG.fst)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BabelflowError(f"{path}: FST file not found") from None
    r = _Reader(data, path)
    fst_type, flags, start, num_states, num_arcs = _header(r)
    if fst_type == "vector":
        fst = _kaldifst().StdVectorFst.read(str(path))
        if fst is None:
            raise BabelflowError(f"{path}: unreadable vector FST")
        return fst
    if fst_type != "const":
        raise BabelflowError(f"{path}: FST type '{fst_type}' is not supported (vector or const)")
    return arrays_to_fst(_const_arrays(r, flags, start, num_states, num_arcs))


def write_fst(fst, path: str | os.PathLike) -> None:
    """Write ``fst`` (vector format) atomically: a temp file in the same folder, renamed on success (a device
    or pipe, e.g. /dev/null: directly)."""
    path = Path(path)
    if is_special_file(path):
        if not fst.write(str(path)):
            raise BabelflowError(f"{path}: could not write the FST")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp_for(path)
    os.close(fd)
    try:
        if not fst.write(tmp):
            raise BabelflowError(f"{path}: could not write the FST")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fst_to_arrays(fst) -> FstArrays:
    """The arrays of any kaldifst StdFst (through kaldifst's const writer, exact)."""
    kf = _kaldifst()
    with tempfile.TemporaryDirectory(prefix="babelflow-fst-") as d:
        tmp = os.path.join(d, "x.fst")
        if not kf.StdConstFst(fst).write(tmp):
            raise BabelflowError("could not convert an FST to arrays")
        r = _Reader(Path(tmp).read_bytes(), "<fst>")
    fst_type, flags, start, num_states, num_arcs = _header(r)
    return _const_arrays(r, flags, start, num_states, num_arcs)


def arrays_to_fst(a: FstArrays):
    """A ``kaldifst.StdVectorFst`` from arrays (arcs must be grouped by ``src``), via OpenFst's vector layout."""
    n, m = a.num_states, a.num_arcs
    src = np.asarray(a.src, dtype=np.int64)
    if m and (np.any(np.diff(src) < 0) or src[0] < 0 or src[-1] >= n):
        raise ValueError("arcs must be grouped by source state")
    if m and (np.min(a.dst) < 0 or np.max(a.dst) >= n):
        raise ValueError("an arc points to a state that does not exist")
    narcs = np.bincount(src, minlength=n).astype(np.int64)
    head = 3 * np.arange(n, dtype=np.int64) + 4 * np.concatenate([[0], np.cumsum(narcs)[:-1]]).astype(np.int64)
    words = np.zeros(3 * n + 4 * m, dtype="<i4")
    words[head] = np.asarray(a.final, dtype="<f4").view("<i4")
    words[head + 1] = narcs  # int64 narcs: low word, high word stays 0
    pos = 3 * (src + 1) + 4 * np.arange(m, dtype=np.int64)
    words[pos] = a.ilabel
    words[pos + 1] = a.olabel
    words[pos + 2] = np.asarray(a.weight, dtype="<f4").view("<i4")
    words[pos + 3] = a.dst
    start = a.start if n else -1
    header = struct.pack("<i", _FST_MAGIC) + b"".join(struct.pack("<i", len(s)) + s for s in (b"vector", b"standard"))
    header += struct.pack("<iiQqqq", 2, 0, 3, start, n, m)  # version 2; properties: expanded | mutable only
    with tempfile.TemporaryDirectory(prefix="babelflow-fst-") as d:
        tmp = os.path.join(d, "x.fst")
        Path(tmp).write_bytes(header + words.tobytes())
        fst = _kaldifst().StdVectorFst.read(tmp)
    if fst is None:
        raise BabelflowError("could not build an FST from arrays")
    return fst


def _state_arcs(a: FstArrays, offsets: np.ndarray, s: int, delta: float) -> list[tuple[int, int, float, int]]:
    lo, hi = offsets[s], offsets[s + 1]
    arcs = sorted(zip(a.ilabel[lo:hi].tolist(), a.olabel[lo:hi].tolist(), a.weight[lo:hi].tolist(),
                      a.dst[lo:hi].tolist()))
    for x, y in zip(arcs, arcs[1:]):
        if x[:2] == y[:2] and abs(x[2] - y[2]) <= delta:
            raise ValueError(f"state {s}: two arcs {x[0]}:{x[1]} with the same weight (ambiguous order)")
    return arcs


def _weights_differ(x: float, y: float, delta: float) -> bool:
    if np.isinf(x) or np.isinf(y):
        return x != y
    return abs(x - y) > delta


def isomorphism_mismatch(a, b, delta: float = 1.0 / 1024) -> str | None:
    """``None`` when FSTs ``a`` and ``b`` (kaldifst FSTs or :class:`FstArrays`) are the same graph up to
    state numbering and arc order, with weights equal within ``delta`` (as ``fstisomorphic``); else the
    first difference found. Like OpenFst, a state with two arcs of equal labels and weight is an error."""
    a = a if isinstance(a, FstArrays) else fst_to_arrays(a)
    b = b if isinstance(b, FstArrays) else fst_to_arrays(b)
    if (a.num_states, a.num_arcs) != (b.num_states, b.num_arcs):
        return f"sizes differ: {a.num_states} states/{a.num_arcs} arcs vs {b.num_states}/{b.num_arcs}"
    if a.num_states == 0:
        return None
    oa, ob = a.offsets(), b.offsets()
    pair, back = {a.start: b.start}, {b.start: a.start}
    todo = [a.start]
    while todo:
        s = todo.pop()
        t = pair[s]
        if _weights_differ(float(a.final[s]), float(b.final[t]), delta):
            return f"final weights differ: state {s} {a.final[s]} vs state {t} {b.final[t]}"
        try:
            arcs_a, arcs_b = _state_arcs(a, oa, s, delta), _state_arcs(b, ob, t, delta)
        except ValueError as e:
            return str(e)
        if len(arcs_a) != len(arcs_b):
            return f"state {s} has {len(arcs_a)} arcs, its image {t} has {len(arcs_b)}"
        for x, y in zip(arcs_a, arcs_b):
            if x[:2] != y[:2] or _weights_differ(x[2], y[2], delta):
                return f"state {s} arc {x[:3]} vs state {t} arc {y[:3]}"
            if pair.get(x[3], y[3]) != y[3] or back.get(y[3], x[3]) != x[3]:
                return f"state {s} arc {x[:3]}: destinations {x[3]} and {y[3]} do not correspond"
            if x[3] not in pair:
                pair[x[3]], back[y[3]] = y[3], x[3]
                todo.append(x[3])
    if len(pair) != a.num_states:
        return f"{a.num_states - len(pair)} states are not reachable from the start"
    return None
