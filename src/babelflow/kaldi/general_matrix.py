"""Kaldi's ``GeneralMatrix``: full (``FM``/``DM``), compressed (``CM``/``CM2``/``CM3``) and sparse (``SM``).

nnet3 egs store their features as a GeneralMatrix, so the egs readers/writers need all three
kinds. The compressed formats are lossy: to read and write egs that Kaldi accepts and that
decode to the very same floats, the codec below follows Kaldi's ``CompressedMatrix`` operation
by operation, including where C++ computes in float32 and where it promotes to double
(e.g. ``p0 + (p25 - p0) * b * (1/64.0)`` is a float product, then a double sum rounded to
float). Decoding is therefore bit-exact, and encoding gives Kaldi's bytes.

Compressed layout after the token: float min, float range, int32 rows, int32 cols (Kaldi's
20-byte header minus its format field), then: ``CM``: per column 4 uint16 quantiles
(p0, p25, p75, p100) and the uint8 data column-major; ``CM2``: uint16 row-major; ``CM3``:
uint8 row-major. Text mode has no compressed form: compressed matrices print decoded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from ..errors import BabelflowError
from .basic_io import (
    KaldiFormatError,
    _read_exact,
    _read_word,
    _skip_ws,
    _where,
    expect_token,
    format_float,
    peek,
    read_int32,
    read_token,
    write_int32,
    write_token,
)

__all__ = ["SparseMatrix", "compress_matrix", "decompress_matrix", "read_compressed_matrix",
           "read_general_matrix", "write_general_matrix", "matrix_to_text", "COMPRESSED_TOKENS"]

COMPRESSED_TOKENS = ("CM", "CM2", "CM3")
_F32 = np.float32
_INV65535 = _F32(1.52590218966964e-05)  # the float literal Kaldi's Uint16ToFloat uses
_INT_MIN = -(2**31)
_SV_REC = {4: np.dtype([("s1", "i1"), ("col", "<i4"), ("s2", "i1"), ("val", "<f4")]),
           8: np.dtype([("s1", "i1"), ("col", "<i4"), ("s2", "i1"), ("val", "<f8")])}


@dataclass
class SparseMatrix:
    """Kaldi ``SparseMatrix<float>``: per row ``(dim, [(col, value), ...])``, cols increasing.

    Used for nnet3 targets (posteriors), which are one or two non-zeros out of thousands of pdfs.
    Values are kept as float32-rounded Python floats so equality means equal bytes on disk.
    """

    rows: list[tuple[int, list[tuple[int, float]]]] = field(default_factory=list)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[int, Iterable[tuple[int, float]]]]) -> SparseMatrix:
        out = []
        for dim, pairs in rows:
            pairs = [(int(c), float(_F32(v))) for c, v in pairs]
            if dim < 0 or any(not 0 <= c < dim for c, _ in pairs):
                raise ValueError(f"sparse row with dim {dim} has a column outside 0..{dim - 1}")
            out.append((int(dim), pairs))
        return cls(out)

    @classmethod
    def from_dense(cls, m: np.ndarray) -> SparseMatrix:
        m = np.asarray(m, dtype=_F32)
        return cls([(m.shape[1], [(int(c), float(m[r, c])) for c in np.flatnonzero(m[r])])
                    for r in range(m.shape[0])])

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols); cols is the first row's dim, as Kaldi's NumCols()."""
        return len(self.rows), (self.rows[0][0] if self.rows else 0)

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=_F32)
        for r, (_, pairs) in enumerate(self.rows):
            for c, v in pairs:
                out[r, c] = v
        return out


# ----------------------------------------------------------------------------- compression
def _cvt_int(d: np.ndarray) -> np.ndarray:
    """C++ ``static_cast<int>(double)`` on x86: truncation; NaN/out-of-range give INT_MIN."""
    t = np.trunc(d)
    ok = np.isfinite(t) & (t >= _INT_MIN) & (t < 2**31)
    return np.where(ok, t, _INT_MIN).astype(np.int64)


def _to_uint(m: np.ndarray, mn: np.float32, rng: np.float32, scale: int) -> np.ndarray:
    """Kaldi FloatToUint16/FloatToUint8: float32 ratio, float32 product, double ``+ 0.499``."""
    f = np.clip((m - mn) / rng, _F32(0), _F32(1))
    return _cvt_int((f * _F32(scale)).astype(np.float64) + 0.499)


def _uint16_to_float(mn: np.float32, rng: np.float32, q: np.ndarray) -> np.ndarray:
    return mn + (rng * _INV65535) * q.astype(_F32)


def _col_headers(mat: np.ndarray, mn: np.float32, rng: np.float32) -> np.ndarray:
    """Per-column quantile codes (cols, 4), as Kaldi's ComputeColHeader (order statistics
    at 0, n/4, 3n/4 and n-1, forced strictly increasing and below 65535)."""
    n = mat.shape[0]
    s = np.sort(mat, axis=0)
    pos = [0, n // 4, 3 * (n // 4), n - 1] if n >= 5 else list(range(min(n, 4)))
    u = _to_uint(s[pos], mn, rng, 65535)
    p0 = np.minimum(u[0], 65532)
    p25 = np.minimum(np.maximum(u[1], p0 + 1), 65533) if len(pos) > 1 else p0 + 1
    p75 = np.minimum(np.maximum(u[2], p25 + 1), 65534) if len(pos) > 2 else p25 + 1
    p100 = np.maximum(u[3], p75 + 1) if len(pos) > 3 else p75 + 1
    return np.stack([p0, p25, p75, p100], axis=1)


def _float_to_char(v: np.ndarray, p: list[np.ndarray]) -> np.ndarray:
    """Kaldi FloatToChar: three piecewise-linear segments mapped to 0..64, 64..192, 192..255."""
    p0, p25, p75, p100 = p
    with np.errstate(all="ignore"):
        a = np.clip(_cvt_int((((v - p0) / (p25 - p0)) * _F32(64)).astype(np.float64) + 0.5), 0, 64)
        b = np.clip(64 + _cvt_int((((v - p25) / (p75 - p25)) * _F32(128)).astype(np.float64) + 0.5), 64, 192)
        c = np.clip(192 + _cvt_int((((v - p75) / (p100 - p75)) * _F32(63)).astype(np.float64) + 0.5), 192, 255)
    return np.where(v < p25, a, np.where(v < p75, b, c)).astype(np.uint8)


def compress_matrix(m: np.ndarray, method: str = "auto") -> bytes:
    """Kaldi ``CompressedMatrix`` bytes (token, header, data) as Kaldi's encoder writes them.

    ``auto`` is kAutomaticMethod (``CM`` above 8 rows, else ``CM2``); ``CM``/``CM2``/``CM3``
    are kSpeechFeature/kTwoByteAuto/kOneByteAuto.
    """
    m = np.ascontiguousarray(m, dtype=_F32)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"can only compress a non-empty 2-D matrix, got shape {m.shape}")
    fmt = ("CM" if m.shape[0] > 8 else "CM2") if method == "auto" else method
    if fmt not in COMPRESSED_TOKENS:
        raise ValueError(f"unknown compression method {method!r} (auto, CM, CM2 or CM3)")
    if not np.isfinite(m).all():
        raise BabelflowError("cannot compress a matrix with NaN or infinite values")
    mn, mx = m.min(), m.max()
    if mx == mn:  # Kaldi keeps range > 0 for constant matrices (computed in double)
        mx = _F32(float(mn) + (1.0 + abs(float(mn))))
    rng = _F32(mx - mn)
    head = fmt.encode() + b" " + struct.pack("<ffii", mn, rng, *m.shape)
    if fmt == "CM2":
        return head + _to_uint(m, mn, rng, 65535).astype("<u2").tobytes()
    if fmt == "CM3":
        return head + _to_uint(m, mn, rng, 255).astype("u1").tobytes()
    q = _col_headers(m, mn, rng)
    p = [_uint16_to_float(mn, rng, q[:, k]) for k in range(4)]
    return head + q.astype("<u2").tobytes() + _float_to_char(m, p).T.tobytes()


def _data_size(fmt: str, rows: int, cols: int) -> int:
    return cols * (8 + rows) if fmt == "CM" else rows * cols * (2 if fmt == "CM2" else 1)


def decompress_matrix(data: bytes) -> np.ndarray:
    """Decode complete compressed-matrix bytes (as :func:`compress_matrix` returns)."""
    tok, _, rest = data.partition(b" ")
    fmt = tok.decode("ascii", "replace")
    if fmt not in COMPRESSED_TOKENS or len(rest) < 16:
        raise KaldiFormatError(f"not a compressed matrix (token {fmt!r})")
    mn, rng, rows, cols = struct.unpack("<ffii", rest[:16])
    mn, rng, body = _F32(mn), _F32(rng), rest[16:]
    if cols == 0:
        return np.zeros((0, 0), dtype=_F32)
    if rows < 0 or cols < 0 or len(body) != _data_size(fmt, rows, cols):
        raise KaldiFormatError(f"compressed matrix {rows}x{cols} ({fmt}) does not match its {len(body)} data bytes")
    if fmt == "CM2":
        inc = _F32(float(rng) * (1.0 / 65535.0))
        return mn + np.frombuffer(body, "<u2").astype(_F32).reshape(rows, cols) * inc
    if fmt == "CM3":
        inc = _F32(float(rng) * (1.0 / 255.0))
        return mn + np.frombuffer(body, "u1").astype(_F32).reshape(rows, cols) * inc
    q = np.frombuffer(body[:8 * cols], "<u2").reshape(cols, 4)
    p0, p25, p75, p100 = (_uint16_to_float(mn, rng, q[:, k])[:, None] for k in range(4))
    b = np.frombuffer(body[8 * cols:], "u1").reshape(cols, rows).astype(np.int32)
    lo = ((p25 - p0) * b.astype(_F32)).astype(np.float64) * (1 / 64.0) + p0.astype(np.float64)
    mid = ((p75 - p25) * (b - 64).astype(_F32)).astype(np.float64) * (1 / 128.0) + p25.astype(np.float64)
    hi = ((p100 - p75) * (b - 192).astype(_F32)).astype(np.float64) * (1 / 63.0) + p75.astype(np.float64)
    out = np.where(b <= 64, lo, np.where(b <= 192, mid, hi)).astype(_F32)
    return np.ascontiguousarray(out.T)


def _read_compressed_bytes(f: BinaryIO, token: str) -> bytes:
    head = _read_exact(f, 16, f"the {token} compressed-matrix header")
    rows, cols = struct.unpack("<ii", head[8:])
    if cols == 0:
        return token.encode() + b" " + head
    if rows < 0 or cols < 0:
        raise KaldiFormatError(f"bad compressed matrix size {rows}x{cols}{_where(f)}")
    body = _read_exact(f, _data_size(token, rows, cols), f"{token} compressed-matrix data")
    return token.encode() + b" " + head + body


def read_compressed_matrix(f: BinaryIO, token: str) -> np.ndarray:
    """Read the rest of a compressed matrix whose token was already read; float32, as Kaldi's CopyToMat."""
    if token not in COMPRESSED_TOKENS:
        raise KaldiFormatError(f"unexpected token {token!r}, expecting CM, CM2 or CM3{_where(f)}")
    return decompress_matrix(_read_compressed_bytes(f, token))


# ----------------------------------------------------------------------------- reading
def _read_until_bracket(f: BinaryIO, what: str) -> bytes:
    """Consume and return everything up to and including the next ``]`` (read in chunks)."""
    parts = []
    while True:
        chunk = peek(f, 65536)
        if not chunk:
            raise KaldiFormatError(f"unexpected end of file inside {what} (truncated?){_where(f)}")
        i = chunk.find(b"]")
        if i >= 0:
            parts.append(f.read(i + 1))
            return b"".join(parts)
        parts.append(f.read(len(chunk)))


def _read_text_matrix(f: BinaryIO) -> np.ndarray:
    """Kaldi text matrix `` [\\n  a b \\n  c d ]\\n``; rows end at newline or ``;``."""
    _skip_ws(f)
    if peek(f, 2) == b"[]":
        f.read(2)
        return np.zeros((0, 0), dtype=_F32)
    if _read_word(f, "a matrix", stop=b"]") != "[":
        raise KaldiFormatError(f"expected '[' starting a matrix{_where(f)}")
    body = _read_until_bracket(f, "a matrix")[:-1]
    if peek(f, 1) == b"\n":
        f.read(1)
    elif peek(f, 2) == b"\r\n":
        f.read(2)
    rows = [r.split() for r in body.replace(b";", b"\n").split(b"\n")]
    rows = [r for r in rows if r]
    if not rows:
        return np.zeros((0, 0), dtype=_F32)
    if any(len(r) != len(rows[0]) for r in rows):
        raise KaldiFormatError(f"matrix has rows of different lengths{_where(f)}")
    try:
        return np.array([[float(w) for w in r] for r in rows], dtype=_F32)
    except ValueError:
        raise KaldiFormatError(f"non-numeric matrix data{_where(f)}") from None


def _prefixed_int(word: str, prefix: str, f: BinaryIO) -> int:
    if not word.startswith(prefix) or not word[len(prefix):].isdigit():
        raise KaldiFormatError(f"expected '{prefix}<int>', got {word[:40]!r}{_where(f)}")
    return int(word[len(prefix):])


def _read_text_sparse(f: BinaryIO) -> SparseMatrix:
    """Text ``rows=R dim=D [ c v c v ] dim=D [ ] ...``."""
    nrows = _prefixed_int(read_token(f, False), "rows=", f)
    rows = []
    for _ in range(nrows):
        dim = _prefixed_int(read_token(f, False), "dim=", f)
        if read_token(f, False) != "[":
            raise KaldiFormatError(f"expected '[' in a sparse row{_where(f)}")
        words = _read_until_bracket(f, "a sparse row")[:-1].split()
        if len(words) % 2:
            raise KaldiFormatError(f"sparse row has an odd number of values{_where(f)}")
        try:
            pairs = [(int(words[i]), float(_F32(float(words[i + 1])))) for i in range(0, len(words), 2)]
        except ValueError:
            raise KaldiFormatError(f"non-numeric sparse row data{_where(f)}") from None
        cols = [c for c, _ in pairs]
        if any(not 0 <= c < dim for c in cols) or any(a >= b for a, b in zip(cols, cols[1:])):
            raise KaldiFormatError(f"sparse row columns must increase within 0..{dim - 1}{_where(f)}")
        rows.append((dim, pairs))
    return SparseMatrix(rows)


def _read_binary_sparse(f: BinaryIO) -> SparseMatrix:
    expect_token(f, True, "SM")
    nrows = read_int32(f, True)
    if not 0 <= nrows < 10_000_000:
        raise KaldiFormatError(f"bad sparse matrix row count {nrows}{_where(f)}")
    rows = []
    for _ in range(nrows):
        expect_token(f, True, "SV")
        dim, nnz = read_int32(f, True), read_int32(f, True)
        if dim < 0 or not 0 <= nnz <= dim:
            raise KaldiFormatError(f"bad sparse vector: dim {dim}, {nnz} elements{_where(f)}")
        width = peek(f, 6)[5:6]  # size byte of the first value: float or double
        rec = _SV_REC[8 if width == b"\x08" else 4]
        data = np.frombuffer(_read_exact(f, rec.itemsize * nnz, "sparse vector data"), dtype=rec)
        if nnz and (np.any(data["s1"] != 4) or np.any(data["s2"] != rec["val"].itemsize)):
            raise KaldiFormatError(f"corrupt sparse vector data (bad size bytes){_where(f)}")
        if nnz and (data["col"].min() < 0 or data["col"].max() >= dim):
            raise KaldiFormatError(f"sparse vector column outside 0..{dim - 1}{_where(f)}")
        rows.append((dim, list(zip(data["col"].tolist(), data["val"].astype(_F32).tolist()))))
    return SparseMatrix(rows)


def _read_binary_full(f: BinaryIO, tok: str) -> np.ndarray:
    rows, cols = read_int32(f, True), read_int32(f, True)
    if rows < 0 or cols < 0:
        raise KaldiFormatError(f"negative matrix size {rows}x{cols}{_where(f)}")
    width = 4 if tok == "FM" else 8
    data = _read_exact(f, width * rows * cols, "matrix data")
    return np.frombuffer(data, "<f4" if width == 4 else "<f8").astype(_F32).reshape(rows, cols)


def read_general_matrix_raw(f: BinaryIO, binary: bool) -> tuple[np.ndarray | SparseMatrix, bytes | None]:
    """Like :func:`read_general_matrix`, also returning the compressed bytes when it was compressed."""
    if not binary:
        _skip_ws(f)
        return (_read_text_sparse(f), None) if peek(f, 1) == b"r" else (_read_text_matrix(f), None)
    c = peek(f, 1)
    if c == b"S":
        return _read_binary_sparse(f), None
    start = _where(f)
    tok = read_token(f, True)
    if tok in COMPRESSED_TOKENS:
        raw = _read_compressed_bytes(f, tok)
        return decompress_matrix(raw), raw
    if tok in ("FM", "DM"):
        return _read_binary_full(f, tok), None
    raise KaldiFormatError(f"expected a matrix (FM, DM, CM, CM2, CM3 or SM), got token {tok[:40]!r}{start}")


def read_general_matrix(f: BinaryIO, binary: bool) -> np.ndarray | SparseMatrix:
    """Kaldi GeneralMatrix::Read: a float32 array (full or decoded compressed) or a SparseMatrix."""
    return read_general_matrix_raw(f, binary)[0]


# ----------------------------------------------------------------------------- writing
def matrix_to_text(m: np.ndarray) -> str:
    """Kaldi's text form of a full matrix, `` [\\n  a b \\n  c d ]\\n`` (empty: `` [ ]\\n``)."""
    m = np.asarray(m, dtype=_F32)
    if m.size == 0:
        return " [ ]\n"
    return " [" + "".join("\n  " + "".join(f"{x:.7g} " for x in row) for row in m.tolist()) + "]\n"


def _sparse_to_text(s: SparseMatrix) -> str:
    rows = "".join(f"dim={d} [ " + "".join(f"{c} {format_float(v)} " for c, v in p) + "] " for d, p in s.rows)
    return f"rows={len(s.rows)} {rows}\n"


def _write_binary_sparse(f: BinaryIO, s: SparseMatrix) -> None:
    write_token(f, True, "SM")
    write_int32(f, True, len(s.rows))
    for dim, pairs in s.rows:
        rec = np.empty(len(pairs), dtype=_SV_REC[4])
        rec["s1"], rec["s2"] = 4, 4
        if pairs:
            rec["col"], rec["val"] = zip(*pairs)
        f.write(b"SV " + struct.pack("<bibi", 4, dim, 4, len(pairs)) + rec.tobytes())


def write_general_matrix(f: BinaryIO, binary: bool, m: np.ndarray | SparseMatrix,
                         compress: str | None = None) -> None:
    """Kaldi GeneralMatrix::Write. ``compress`` (auto/CM/CM2/CM3) compresses a non-empty full
    matrix first; in text mode that prints the decoded values, as Kaldi does."""
    if isinstance(m, SparseMatrix):
        if binary:
            _write_binary_sparse(f, m)
        else:
            f.write(_sparse_to_text(m).encode())
        return
    m = np.asarray(m, dtype=_F32)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {m.shape}")
    if compress is not None and m.size:
        data = compress_matrix(m, compress)
        if binary:
            f.write(data)
            return
        m = decompress_matrix(data)
    if not binary:
        f.write(matrix_to_text(m).encode())
        return
    write_token(f, True, "FM")
    write_int32(f, True, m.shape[0] if m.size else 0)  # Kaldi has no 0xN or Nx0 matrices
    write_int32(f, True, m.shape[1] if m.size else 0)
    f.write(m.astype("<f4").tobytes())
