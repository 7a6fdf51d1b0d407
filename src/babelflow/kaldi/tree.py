"""Kaldi's decision tree file ``tree``: a ``ContextDependency`` (``tree/context-dep.cc``, ``tree/event-map.cc``).

Kaldi's graph building (``mkgraph.sh``, ``make-h-transducer``) needs ``tree`` next to
``final.mdl``: it maps a phone in context plus a pdf-class to a pdf-id. We read and write
it byte-exactly (binary and text) and build what ``gmm-init-mono`` builds, so a babelflow
alignment dir can be handed to Kaldi's graph and decoding scripts.

The tree is an EventMap over an event ``{key: value}``: key ``-1`` (``kPdfClass``) is the
pdf-class, keys ``0..N-1`` the phones of the context window (``P`` = the central one).
Nodes: ``CE`` constant answer (a leaf, the pdf-id), ``TE`` a table indexed by one key's
value, ``SE`` a yes/no split on whether a key's value is in a set, ``NULL`` no answer.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from ..errors import BabelflowError
from ..io import atomic_open
from . import basic_io as bio
from .basic_io import KaldiFormatError, read_kaldi_file

if TYPE_CHECKING:  # only for hints: no import cycle, no runtime dependency
    from .hmm_topology import HmmTopology

__all__ = [
    "PDF_CLASS_KEY", "ConstantEventMap", "TableEventMap", "SplitEventMap", "EventMap", "ContextDependency",
    "read_event_map", "write_event_map", "stub_map", "monophone_tree", "tree_from_topology",
    "read_tree", "write_tree",
]

PDF_CLASS_KEY = -1  # Kaldi's kPdfClass: the event key holding the pdf-class
_MAX_TABLE = 1 << 26  # a larger TE table means corrupt bytes, not a real tree


@dataclass(frozen=True)
class ConstantEventMap:
    """``CE``: a leaf; its answer is the pdf-id."""

    answer: int

    def map(self, event: dict[int, int]) -> int | None:
        return self.answer


@dataclass(frozen=True)
class TableEventMap:
    """``TE``: ``table[event[key]]``; no answer if the key is absent, out of range or the entry is NULL."""

    key: int
    table: tuple[EventMap, ...]

    def map(self, event: dict[int, int]) -> int | None:
        v = event.get(self.key)
        if v is None or not 0 <= v < len(self.table) or self.table[v] is None:
            return None
        return self.table[v].map(event)


@dataclass(frozen=True)
class SplitEventMap:
    """``SE``: ``yes`` if ``event[key]`` is in ``yes_set`` (sorted) else ``no``; no answer if the key is absent."""

    key: int
    yes_set: tuple[int, ...]
    yes: EventMap
    no: EventMap

    def map(self, event: dict[int, int]) -> int | None:
        v = event.get(self.key)
        if v is None:
            return None
        return (self.yes if v in self.yes_set else self.no).map(event)


EventMap = ConstantEventMap | TableEventMap | SplitEventMap | None  # None is Kaldi's NULL


def _answers(m: EventMap) -> list[int]:
    """Every leaf answer (Kaldi MultiMap of the empty event)."""
    if m is None:
        return []
    if isinstance(m, ConstantEventMap):
        return [m.answer]
    if isinstance(m, TableEventMap):
        return [a for t in m.table for a in _answers(t)]
    return _answers(m.yes) + _answers(m.no)


def _peek_char(f: BinaryIO, binary: bool) -> bytes:
    """Kaldi Peek: the next byte, after skipping whitespace in text mode."""
    if not binary:
        while (c := bio.peek(f, 1)) and c in b" \t\n\v\f\r":
            f.read(1)
    return bio.peek(f, 1)


def _read_uint32(f: BinaryIO, binary: bool) -> int:
    """Kaldi ReadBasicType<uint32>: binary size byte is -4 (0xfc, unsigned), then 4 little-endian bytes."""
    if not binary:
        v = bio.read_int32(f, binary)
        if v < 0:
            raise KaldiFormatError(f"expected an unsigned integer, got {v}")
        return v
    b = f.read(5)
    if len(b) != 5:
        raise KaldiFormatError("unexpected end of file while reading a uint32 (truncated?)")
    if b[0] != 0xFC:
        raise KaldiFormatError(f"expected a uint32 (size byte 0xfc), got size byte {b[0]:#04x}")
    return struct.unpack("<I", b[1:])[0]


def _write_uint32(f: BinaryIO, binary: bool, v: int) -> None:
    f.write(b"\xfc" + struct.pack("<I", v) if binary else f"{int(v)} ".encode())


def read_event_map(f: BinaryIO, binary: bool) -> EventMap:
    """Kaldi EventMap::Read: dispatch on the first letter of ``NULL``/``CE``/``TE``/``SE``."""
    c = _peek_char(f, binary)
    if c == b"N":
        bio.expect_token(f, binary, "NULL")
        return None
    if c == b"C":
        bio.expect_token(f, binary, "CE")
        return ConstantEventMap(bio.read_int32(f, binary))
    if c == b"T":
        bio.expect_token(f, binary, "TE")
        key = bio.read_int32(f, binary)
        size = _read_uint32(f, binary)
        if size > _MAX_TABLE:
            raise KaldiFormatError(f"tree: implausible TableEventMap size {size}")
        bio.expect_token(f, binary, "(")
        table = tuple(read_event_map(f, binary) for _ in range(size))
        bio.expect_token(f, binary, ")")
        return TableEventMap(key, table)
    if c == b"S":
        bio.expect_token(f, binary, "SE")
        key = bio.read_int32(f, binary)
        yes_set = tuple(bio.read_int32_vector(f, binary))
        bio.expect_token(f, binary, "{")
        yes, no = read_event_map(f, binary), read_event_map(f, binary)
        bio.expect_token(f, binary, "}")
        if yes is None or no is None:
            raise KaldiFormatError("tree: SplitEventMap with a NULL branch")
        return SplitEventMap(key, yes_set, yes, no)
    raise KaldiFormatError(f"tree: expected an EventMap (NULL, CE, TE or SE), got {c!r}")


def write_event_map(f: BinaryIO, binary: bool, m: EventMap) -> None:
    """Kaldi EventMap::Write; text mode ends each TE/SE with a newline, as Kaldi does."""
    if m is None:
        bio.write_token(f, binary, "NULL")
    elif isinstance(m, ConstantEventMap):
        bio.write_token(f, binary, "CE")
        bio.write_int32(f, binary, m.answer)
    elif isinstance(m, TableEventMap):
        bio.write_token(f, binary, "TE")
        bio.write_int32(f, binary, m.key)
        _write_uint32(f, binary, len(m.table))
        bio.write_token(f, binary, "(")
        for t in m.table:
            write_event_map(f, binary, t)
        bio.write_token(f, binary, ")")
        if not binary:
            f.write(b"\n")
    elif isinstance(m, SplitEventMap):
        if m.yes is None or m.no is None:
            raise BabelflowError("tree: a SplitEventMap needs both branches")
        bio.write_token(f, binary, "SE")
        bio.write_int32(f, binary, m.key)
        bio.write_int32_vector(f, binary, m.yes_set)
        bio.write_token(f, binary, "{")
        write_event_map(f, binary, m.yes)
        write_event_map(f, binary, m.no)
        bio.write_token(f, binary, "}")
        if not binary:
            f.write(b"\n")
    else:
        raise TypeError(f"not an EventMap: {m!r}")


@dataclass(frozen=True)
class ContextDependency:
    """Kaldi's ContextDependency: context width ``N``, central position ``P`` and the ``to_pdf`` EventMap."""

    N: int
    P: int
    to_pdf: EventMap

    @property
    def context_width(self) -> int:
        return self.N

    @property
    def central_position(self) -> int:
        return self.P

    @property
    def num_pdfs(self) -> int:
        """Kaldi NumPdfs: largest leaf answer + 1 (0 for an empty tree)."""
        return max(_answers(self.to_pdf), default=-1) + 1

    def compute(self, phone_context: Sequence[int] | int, pdf_class: int) -> int | None:
        """Kaldi Compute: the pdf-id of ``pdf_class`` of the phone window ``phone_context``, or None.

        ``phone_context`` has ``N`` phones (0 = no phone, at utterance edges); a monophone
        tree (N = 1) also takes a bare phone id.
        """
        ctx = [phone_context] if isinstance(phone_context, int) else list(phone_context)
        if len(ctx) != self.N or any(p < 0 for p in ctx):
            raise BabelflowError(f"tree: need {self.N} non-negative phone ids as context, got {ctx}")
        if self.to_pdf is None:
            return None
        return self.to_pdf.map({PDF_CLASS_KEY: pdf_class, **dict(enumerate(ctx))})

    def pdf(self, phone_context: Sequence[int] | int, pdf_class: int) -> int:
        """Like :meth:`compute`, but a context the tree does not cover is an error."""
        ans = self.compute(phone_context, pdf_class)
        if ans is None:
            raise BabelflowError(f"tree: no pdf for phone context {phone_context} and pdf-class {pdf_class}")
        return ans

    @classmethod
    def read(cls, f: BinaryIO, binary: bool | None = None) -> ContextDependency:
        """Read from ``f``; with ``binary=None`` the mode comes from a ``\\0B`` header (file start)."""
        if binary is None:
            binary = bio.read_binary_header(f)
        bio.expect_token(f, binary, "ContextDependency")
        n, p = bio.read_int32(f, binary), bio.read_int32(f, binary)
        if n < 1 or not 0 <= p < n:
            raise KaldiFormatError(f"tree: bad context width {n} / central position {p}")
        token = bio.read_token(f, binary)
        if token == "ToLength":  # back-compat in Kaldi: read and dropped
            read_event_map(f, binary)
            token = bio.read_token(f, binary)
        if token != "ToPdf":
            raise KaldiFormatError(f"tree: expected ToPdf, got {token!r}")
        to_pdf = read_event_map(f, binary)
        bio.expect_token(f, binary, "EndContextDependency")
        return cls(n, p, to_pdf)

    def write(self, f: BinaryIO, binary: bool = True, header: bool = True) -> None:
        """Write as Kaldi does; ``header`` (binary only) puts the ``\\0B`` file header first."""
        if binary and header:
            bio.write_binary_header(f)
        bio.write_token(f, binary, "ContextDependency")
        bio.write_int32(f, binary, self.N)
        bio.write_int32(f, binary, self.P)
        bio.write_token(f, binary, "ToPdf")
        write_event_map(f, binary, self.to_pdf)
        bio.write_token(f, binary, "EndContextDependency")


def stub_map(phone_sets: Sequence[Sequence[int]], phone2num_pdf_classes: Sequence[int],
             share_roots: Sequence[bool] | None = None, P: int = 0) -> tuple[EventMap, int]:
    """Kaldi GetStubMap: the initial (unsplit) tree, one leaf per pdf-class of each phone set.

    Returns ``(event_map, num_leaves)``; leaves are numbered in phone-set order. Sets are
    split in halves with SE nodes, except when all are single phones and not too sparse
    (then one TE on the phone), exactly as Kaldi decides, so the bytes match.
    """
    sets = [sorted(int(p) for p in s) for s in phone_sets]
    roots = [False] * len(sets) if share_roots is None else [bool(b) for b in share_roots]
    seen = [p for s in sets for p in s]
    if not sets or len(roots) != len(sets) or any(not s for s in sets) or len(set(seen)) != len(seen):
        raise BabelflowError("tree: phone sets must be non-empty and disjoint, one share_roots flag per set")
    if any(not 0 < p < len(phone2num_pdf_classes) or phone2num_pdf_classes[p] <= 0 for p in seen):
        raise BabelflowError("tree: every phone needs a positive number of pdf-classes")
    counter = [0]

    def leaf() -> ConstantEventMap:
        counter[0] += 1
        return ConstantEventMap(counter[0] - 1)

    def build(sets: list[list[int]], roots: list[bool]) -> EventMap:
        if len(sets) == 1:
            if roots[0]:
                return leaf()
            n = max(phone2num_pdf_classes[p] for p in sets[0])
            return TableEventMap(PDF_CLASS_KEY, tuple(leaf() for _ in range(n)))
        highest = max(p for s in sets for p in s)
        if max(len(s) for s in sets) == 1 and len(sets) <= 2 * highest:
            table: list[EventMap] = [None] * (highest + 1)
            for s, r in zip(sets, roots):
                table[s[0]] = build([s], [r])
            return TableEventMap(P, tuple(table))
        half = len(sets) // 2
        yes, no = build(sets[:half], roots[:half]), build(sets[half:], roots[half:])
        return SplitEventMap(P, tuple(sorted(p for s in sets[:half] for p in s)), yes, no)

    m = build(sets, roots)
    return m, counter[0]


def monophone_tree(num_phones: int, num_pdf_classes_per_phone: int | Sequence[int] = 3) -> ContextDependency:
    """What ``gmm-init-mono`` builds for phones ``1..num_phones``: N=1, P=0, one TE over phones,
    each a TE over pdf-class; pdf-ids run phone by phone (3 classes: pdf = 3*(phone-1)+class).

    ``num_pdf_classes_per_phone``: one count for all phones, or one per phone (phone 1 first).
    """
    if isinstance(num_pdf_classes_per_phone, int):
        counts = [num_pdf_classes_per_phone] * num_phones
    else:
        counts = [int(c) for c in num_pdf_classes_per_phone]
    if num_phones < 1 or len(counts) != num_phones:
        raise BabelflowError(f"monophone tree: need num_phones >= 1 and one pdf-class count per phone "
                             f"(got {num_phones} phones, {len(counts)} counts)")
    to_pdf, _ = stub_map([[p] for p in range(1, num_phones + 1)], [0] + counts)
    return ContextDependency(1, 0, to_pdf)


def tree_from_topology(topo: HmmTopology, shared_phones: Sequence[Sequence[int]] | None = None) -> ContextDependency:
    """Kaldi ``gmm-init-mono topo dim mdl tree`` (optionally ``--shared-phones``): the topology's
    phones, each with its own number of pdf-classes."""
    phones = sorted(topo.phones)
    counts = [0] * (phones[-1] + 1)
    for p in phones:
        counts[p] = topo.num_pdf_classes(p)
    sets = [[p] for p in phones] if shared_phones is None else [sorted(s) for s in shared_phones]
    to_pdf, _ = stub_map(sets, counts)
    return ContextDependency(1, 0, to_pdf)


def read_tree(path: str | os.PathLike) -> ContextDependency:
    """A Kaldi ``tree`` file, binary or text."""
    return read_kaldi_file(path, "tree", ContextDependency.read)


def write_tree(path: str | os.PathLike, tree: ContextDependency, binary: bool = True) -> None:
    """Write a ``tree`` file atomically (binary gets the ``\\0B`` header)."""
    with atomic_open(path, "wb") as f:
        tree.write(f, binary)
