"""Kaldi's basic I/O primitives (``base/io-funcs``), binary and text mode, on binary file objects.

Every Kaldi object is serialised through these few primitives, so getting them exactly
right once makes the model, egs and table readers/writers byte-compatible with Kaldi:

- token: the bytes of the token plus one space, in both modes;
- binary int32: a size byte ``4`` then 4 little-endian bytes; float: ``4`` + 4 bytes;
  double: ``8`` + 8 bytes (readers accept either width, as Kaldi does);
- text numbers: the number then a space; floats printed like C++ ``ostream`` with
  precision 7 (``%.7g``), which is what Kaldi sets on every output stream;
- integer vector: binary = size byte, raw int32 count, raw data; text = ``[ 1 2 3 ]\\n``;
- float vector: binary = token ``FV``/``DV``, int32 dim, raw data; text = `` [ a b ]\\n``.

Errors raise :class:`KaldiFormatError` (a :class:`BabelflowError`) with the byte offset;
callers re-raise or prefix it with the file name they know.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np

from ..errors import BabelflowError

__all__ = [
    "KaldiFormatError", "peek", "read_binary_header", "write_binary_header",
    "read_token", "expect_token", "write_token", "read_int32", "write_int32",
    "read_float", "write_float", "read_double", "write_double", "read_bool", "write_bool",
    "read_int32_vector", "write_int32_vector", "read_float_vector", "write_float_vector",
    "format_float", "read_bytes",
]

_WS = frozenset(b" \t\n\v\f\r")  # C isspace() in the "C" locale
_MAX_WORD = 4096  # no Kaldi token/number is longer; stops runaway reads of binary junk


class KaldiFormatError(BabelflowError):
    """The bytes do not form the Kaldi object expected; the caller adds the file name."""


def _where(f: BinaryIO) -> str:
    try:
        return f" at byte {f.tell()}"
    except (OSError, ValueError, AttributeError):
        return ""


def peek(f: BinaryIO, n: int = 1) -> bytes:
    """Return the next ``n`` bytes (fewer only at EOF) without consuming them."""
    p = getattr(f, "peek", None)
    data = b""
    if p is not None:
        data = p(n)[:n]
        if len(data) >= n:
            return data
    if f.seekable():
        pos = f.tell()
        data = f.read(n)
        f.seek(pos)
        return data
    if p is not None:
        return data
    raise KaldiFormatError("cannot look ahead in a stream that is neither peekable nor seekable")


def read_bytes(f: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at EOF; big reads go in chunks so that a corrupt
    length field makes a short read, not an attempt to allocate gigabytes."""
    if n <= 1 << 24:
        return f.read(n)
    parts, left = [], n
    while left and (chunk := f.read(min(left, 1 << 24))):
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = read_bytes(f, n)
    if len(data) != n:
        raise KaldiFormatError(f"unexpected end of file while reading {what} (truncated?){_where(f)}")
    return data


def read_binary_header(f: BinaryIO) -> bool:
    """Kaldi's InitKaldiInputStream: consume a ``\\0B`` header if present; True means binary."""
    head = peek(f, 2)
    if head[:1] != b"\0":
        return False
    if head != b"\0B":
        raise KaldiFormatError(f"file starts with a NUL byte but not the binary header '\\0B'{_where(f)}")
    f.read(2)
    return True


def write_binary_header(f: BinaryIO) -> None:
    f.write(b"\0B")


def _skip_ws(f: BinaryIO) -> None:
    while True:
        c = peek(f, 1)
        if not c or c[0] not in _WS:
            return
        f.read(1)


def _read_word(f: BinaryIO, what: str, stop: bytes = b"") -> str:
    """Skip whitespace, then read up to (not including) whitespace, EOF or a ``stop`` byte."""
    _skip_ws(f)
    out = bytearray()
    while len(out) <= _MAX_WORD:
        c = peek(f, 1)
        if not c or c[0] in _WS or (stop and c in stop):
            break
        out += f.read(1)
    if not out:
        raise KaldiFormatError(f"unexpected end of file while reading {what} (truncated?){_where(f)}")
    if len(out) > _MAX_WORD:
        raise KaldiFormatError(f"expected {what}, found a run of {_MAX_WORD}+ non-space bytes{_where(f)}")
    return out.decode("utf-8", "backslashreplace")


def read_token(f: BinaryIO, binary: bool) -> str:
    """Kaldi ReadToken: whitespace-delimited word, then one whitespace byte is consumed."""
    tok = _read_word(f, "a token")
    c = peek(f, 1)
    if c and c[0] in _WS:
        f.read(1)
    return tok


def expect_token(f: BinaryIO, binary: bool, token: str) -> None:
    """Kaldi ExpectToken (also accepts the token without its leading ``<``, as Kaldi does)."""
    start = _where(f)
    got = read_token(f, binary)
    if got != token and not (token.startswith("<") and got == token[1:]):
        shown = got if len(got) <= 40 else got[:37] + "..."
        raise KaldiFormatError(f"expected token {token}, got {shown!r}{start}")


def write_token(f: BinaryIO, binary: bool, token: str) -> None:
    if not token or any(ord(ch) in _WS for ch in token):
        raise ValueError(f"invalid Kaldi token {token!r}")
    f.write(token.encode() + b" ")


def format_float(x: float) -> str:
    """C++ ``os << x`` at Kaldi's output precision 7 (``%g`` style)."""
    return f"{x:.7g}"


def _int(word: str, what: str, f: BinaryIO) -> int:
    try:
        v = int(word)
    except ValueError:
        raise KaldiFormatError(f"expected {what}, got {word!r}{_where(f)}") from None
    if not -(2**31) <= v < 2**31:
        raise KaldiFormatError(f"{what} {v} does not fit in int32{_where(f)}")
    return v


def _float(word: str, what: str, f: BinaryIO) -> float:
    try:
        return float(word)
    except ValueError:
        raise KaldiFormatError(f"expected {what}, got {word!r}{_where(f)}") from None


def read_int32(f: BinaryIO, binary: bool) -> int:
    if not binary:
        return _int(_read_word(f, "an integer"), "an integer", f)
    b = _read_exact(f, 5, "an int32")
    if b[0] != 4:
        raise KaldiFormatError(f"expected an int32 (size byte 4), got size byte {b[0]}{_where(f)}")
    return struct.unpack("<i", b[1:])[0]


def write_int32(f: BinaryIO, binary: bool, v: int) -> None:
    f.write(b"\x04" + struct.pack("<i", int(v)) if binary else f"{int(v)} ".encode())


def _read_real(f: BinaryIO, binary: bool, what: str) -> float:
    if not binary:
        return _float(_read_word(f, what), what, f)
    size = _read_exact(f, 1, what)[0]
    if size == 4:
        return struct.unpack("<f", _read_exact(f, 4, what))[0]
    if size == 8:
        return struct.unpack("<d", _read_exact(f, 8, what))[0]
    raise KaldiFormatError(f"expected {what} (size byte 4 or 8), got size byte {size}{_where(f)}")


def read_float(f: BinaryIO, binary: bool) -> float:
    """A BaseFloat; the result is rounded to float32 whatever width was stored."""
    return float(np.float32(_read_real(f, binary, "a float")))


def read_double(f: BinaryIO, binary: bool) -> float:
    return _read_real(f, binary, "a double")


def write_float(f: BinaryIO, binary: bool, v: float) -> None:
    f.write(b"\x04" + struct.pack("<f", v) if binary else f"{format_float(float(np.float32(v)))} ".encode())


def write_double(f: BinaryIO, binary: bool, v: float) -> None:
    f.write(b"\x08" + struct.pack("<d", v) if binary else f"{format_float(v)} ".encode())


def read_bool(f: BinaryIO, binary: bool) -> bool:
    if not binary:
        _skip_ws(f)
    c = _read_exact(f, 1, "a bool")
    if c not in (b"T", b"F"):
        raise KaldiFormatError(f"expected a bool (T or F), got {c!r}{_where(f)}")
    return c == b"T"


def write_bool(f: BinaryIO, binary: bool, v: bool) -> None:
    f.write((b"T" if v else b"F") + (b"" if binary else b" "))


def _read_bracketed(f: BinaryIO, what: str) -> list[str]:
    """Text ``[ a b c ]``: the words between the brackets (a number may touch the ``]``)."""
    _skip_ws(f)
    if _read_exact(f, 1, what) != b"[":
        raise KaldiFormatError(f"expected '[' starting {what}{_where(f)}")
    words = []
    while True:
        _skip_ws(f)
        c = peek(f, 1)
        if not c:
            raise KaldiFormatError(f"unexpected end of file inside {what} (truncated?){_where(f)}")
        if c == b"]":
            f.read(1)
            return words
        words.append(_read_word(f, what, stop=b"]"))


def read_int32_vector(f: BinaryIO, binary: bool) -> list[int]:
    """Kaldi ReadIntegerVector<int32>."""
    if not binary:
        return [_int(w, "an integer", f) for w in _read_bracketed(f, "an integer vector")]
    b = _read_exact(f, 5, "an integer vector header")
    if b[0] != 4:
        raise KaldiFormatError(f"expected an int32 vector (element size 4), got {b[0]}{_where(f)}")
    n = struct.unpack("<i", b[1:])[0]
    if n < 0:
        raise KaldiFormatError(f"negative integer vector length {n}{_where(f)}")
    return np.frombuffer(_read_exact(f, 4 * n, "integer vector data"), dtype="<i4").tolist()


def write_int32_vector(f: BinaryIO, binary: bool, v: Sequence[int]) -> None:
    if binary:
        f.write(b"\x04" + struct.pack("<i", len(v)) + np.asarray(v, dtype="<i4").tobytes())
    else:
        f.write(("[ " + "".join(f"{int(x)} " for x in v) + "]\n").encode())


def read_float_vector(f: BinaryIO, binary: bool, dtype: type = np.float32) -> np.ndarray:
    """Kaldi Vector<Real>::Read: ``FV``/``DV`` binary or `` [ ... ]`` text; returned as ``dtype``."""
    if binary:
        tok = read_token(f, binary)
        if tok not in ("FV", "DV"):
            raise KaldiFormatError(f"expected a vector (FV or DV), got token {tok!r}{_where(f)}")
        n = read_int32(f, binary)
        if n < 0:
            raise KaldiFormatError(f"negative vector dimension {n}{_where(f)}")
        width = 4 if tok == "FV" else 8
        data = np.frombuffer(_read_exact(f, width * n, "vector data"), dtype="<f4" if width == 4 else "<f8")
        return data.astype(dtype)
    _skip_ws(f)
    if peek(f, 2) == b"[]":  # tolerated variant of an empty vector
        f.read(2)
        words = []
    else:
        words = _read_bracketed(f, "a vector")
    nxt = peek(f, 2)
    if nxt[:1] == b"\n":
        f.read(1)
    elif nxt == b"\r\n":
        f.read(2)
    return np.array([_float(w, "a number", f) for w in words], dtype=dtype)


def write_float_vector(f: BinaryIO, binary: bool, v: np.ndarray) -> None:
    """Kaldi VectorBase::Write: float64 arrays are written as ``DV``, everything else as ``FV``."""
    v = np.asarray(v)
    double = v.dtype == np.float64
    if binary:
        write_token(f, binary, "DV" if double else "FV")
        write_int32(f, binary, v.size)
        f.write(v.astype("<f8" if double else "<f4").tobytes())
    else:
        vals = v.astype(np.float64 if double else np.float32).tolist()
        f.write((" [ " + "".join(f"{format_float(x)} " for x in vals) + "]\n").encode())


def read_kaldi_file(path, what: str, read):
    """Open ``path`` and ``read`` a Kaldi object from it; format and I/O errors name the file."""
    try:
        with open(path, "rb") as f:
            return read(f)
    except KaldiFormatError as e:
        raise BabelflowError(f"{path}: not a readable Kaldi {what}: {e}") from None
    except FileNotFoundError:
        raise BabelflowError(f"{path}: file not found") from None
    except OSError as e:
        raise BabelflowError(f"{path}: cannot read ({e.strerror or e})") from None
