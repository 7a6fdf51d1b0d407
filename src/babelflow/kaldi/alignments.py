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

import gzip
import logging
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import BabelflowError, where
from ..io import read_scalar, read_table
from .basic_io import read_bytes
from .table import iter_table, looks_like_rspecifier, read_archive, write_table
from .transition_model import TransitionModel, read_transition_model

log = logging.getLogger(__name__)

_BIN_REC = np.dtype([("size", "i1"), ("value", "<i4")])  # Kaldi WriteBasicType<int32> per element


def _read_value(f: BinaryIO, binary: bool, loc: str) -> np.ndarray:
    """One int32 vector after its key (and ``\\0B`` header): binary, or the rest of a text line."""
    if binary:
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
    line = f.readline()  # "key \n" and "key\n" leave just the newline: an empty vector
    if not line:
        raise BabelflowError(f"{loc}: unexpected end of data after the key (truncated archive?)")
    try:
        vals = np.array([int(t) for t in line.split()], dtype=np.int64)
    except ValueError:
        raise BabelflowError(f"{loc}: not a line of integers: {line[:60]!r}") from None
    if vals.size and (vals.min() < -(2**31) or vals.max() >= 2**31):
        raise BabelflowError(f"{loc}: value out of int32 range")
    return vals.astype(np.int32)


def read_int_vectors(rspecifier: str) -> Iterator[tuple[str, np.ndarray]]:
    """Iterate a Kaldi int32-vector table (``ark:``/``scp:``, binary or text, files or pipes)."""
    return iter_table(rspecifier, _read_value)


def _write_value(f: BinaryIO, binary: bool, v: np.ndarray) -> None:
    v = np.asarray(v)
    if v.ndim != 1 or not (v.size == 0 or np.issubdtype(v.dtype, np.integer)):
        raise BabelflowError(f"expected a 1-D integer vector, got {v.dtype} {v.shape}")
    if v.size and (v.min() < -(2**31) or v.max() >= 2**31):
        raise BabelflowError("value out of int32 range")
    if not binary:
        f.write(("".join(f"{x} " for x in v.tolist()) + "\n").encode())
        return
    rec = np.empty(v.size, dtype=_BIN_REC)
    rec["size"] = 4
    rec["value"] = v
    f.write(b"\x04" + struct.pack("<i", v.size) + rec.tobytes())


def write_int_vectors(wspecifier: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
    """Write a Kaldi int32-vector table: ``ark[,t|b]:x`` or ``ark,scp[,t]:ark_file,scp_file``."""
    write_table(wspecifier, items, _write_value)


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
                yield from read_archive(f, str(ali), _read_value)
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
    if looks_like_rspecifier(text):
        return read_int_vectors(text)
    if os.path.isdir(text):
        return AlignmentDir(text).pdf_alignments()
    raise BabelflowError(f"{text}: neither an alignment directory nor an ark:/scp: rspecifier")
