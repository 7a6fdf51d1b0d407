"""Kaldi ``HmmTopology`` (``hmm/hmm-topology.cc``): the per-phone HMMs of a ``topo`` file.

Read from ``lang/topo`` and from the head of every TransitionModel; written back
byte-exactly (text and binary, including the extended non-HMM format with separate
self-loop pdf classes) because an exported ``final.mdl`` embeds it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

import numpy as np

from . import basic_io as bio
from .basic_io import KaldiFormatError, read_kaldi_file

__all__ = ["NO_PDF", "HmmState", "HmmTopology", "read_topology"]

NO_PDF = -1  # Kaldi's kNoPdf: a non-emitting state


def _f32(x: float) -> float:
    """Round to BaseFloat (float32), as Kaldi stores every probability."""
    return float(np.float32(x))


class HmmState(NamedTuple):
    forward_pdf_class: int
    self_loop_pdf_class: int
    transitions: list[tuple[int, float]]  # (destination state, probability)


@dataclass
class HmmTopology:
    """Per-phone HMM topologies; ``entries[phone2idx[phone]]`` is the list of states of ``phone``."""

    phones: list[int] = field(default_factory=list)  # sorted, unique
    phone2idx: list[int] = field(default_factory=list)  # -1 = phone not covered
    entries: list[list[HmmState]] = field(default_factory=list)

    @classmethod
    def from_entries(cls, entries: Sequence[tuple[Sequence[int], Sequence[Sequence]]]) -> HmmTopology:
        """Build from ``[(phones, [(fwd_class, loop_class, [(dst, prob), ...]), ...]), ...]``."""
        topo = cls()
        for idx, (phones, states) in enumerate(entries):
            topo.entries.append([HmmState(int(a), int(b), [(int(d), _f32(p)) for d, p in tr]) for a, b, tr in states])
            topo._add_phones(phones, idx)
        topo.phones.sort()
        topo.check()
        return topo

    def _add_phones(self, phones: Sequence[int], idx: int) -> None:
        for phone in phones:
            if phone <= 0:
                raise KaldiFormatError(f"topology: phone ids must be positive, got {phone}")
            if len(self.phone2idx) <= phone:
                self.phone2idx.extend([-1] * (phone + 1 - len(self.phone2idx)))
            if self.phone2idx[phone] != -1:
                raise KaldiFormatError(f"topology: phone {phone} appears in more than one topology entry")
            self.phone2idx[phone] = idx
            self.phones.append(phone)

    def entry_for_phone(self, phone: int) -> list[HmmState]:
        if not 0 <= phone < len(self.phone2idx) or self.phone2idx[phone] == -1:
            raise KaldiFormatError(f"topology: phone {phone} is not covered by the topology")
        return self.entries[self.phone2idx[phone]]

    def num_pdf_classes(self, phone: int) -> int:
        return 1 + max(max(s.forward_pdf_class, s.self_loop_pdf_class) for s in self.entry_for_phone(phone))

    def is_hmm(self) -> bool:
        """False when some state has a distinct self-loop pdf class (e.g. chain topologies)."""
        return all(s.forward_pdf_class == s.self_loop_pdf_class for e in self.entries for s in e)

    def check(self) -> None:
        """Kaldi's HmmTopology::Check: the structural rules every reader relies on."""
        if not self.entries or not self.phones:
            raise KaldiFormatError("topology: empty object")
        if any(p >= len(self.phone2idx) or not 0 <= self.phone2idx[p] < len(self.entries) for p in self.phones):
            raise KaldiFormatError("topology: a phone has no valid entry index")
        used = {self.phone2idx[p] for p in self.phones}
        for i, entry in enumerate(self.entries):
            def bad(msg: str, i: int = i) -> KaldiFormatError:
                return KaldiFormatError(f"topology entry {i}: {msg}")
            n = len(entry)
            if i not in used:
                raise bad("used by no phone")
            if n <= 1 or entry[-1].transitions or entry[-1].forward_pdf_class != NO_PDF:
                raise bad("needs emitting states and a last state that is non-emitting, without transitions")
            has_in = [False] * n
            classes: set[int] = set()
            for j, st in enumerate(entry):
                if st.forward_pdf_class != NO_PDF:
                    classes.update((st.forward_pdf_class, st.self_loop_pdf_class))
                if len({d for d, _ in st.transitions}) != len(st.transitions):
                    raise bad(f"state {j} has a duplicate transition")
                if j + 1 < n and not st.transitions:
                    raise bad(f"non-final state {j} has no transitions")
                for d, p in st.transitions:
                    if not 0 <= d < n or p <= 0.0:
                        raise bad(f"state {j}: bad transition to {d} with probability {p}")
                    if st.forward_pdf_class == NO_PDF and d in (j, n - 1):
                        raise bad(f"non-emitting state {j} may not self-loop or enter the final state")
                    has_in[d] = True
            if not all(has_in[1:]):
                raise bad(f"state {has_in.index(False, 1)} has no incoming transition")
            if sorted(classes) != list(range(len(classes))):
                raise bad(f"pdf classes must be contiguous from 0, got {sorted(classes)}")

    @classmethod
    def read(cls, f: BinaryIO, binary: bool) -> HmmTopology:
        bio.expect_token(f, binary, "<Topology>")
        topo = cls._read_binary(f) if binary else cls._read_text(f)
        topo.check()
        return topo

    @classmethod
    def _read_text(cls, f: BinaryIO) -> HmmTopology:
        topo = cls()
        while True:
            tok = bio.read_token(f, False)
            if tok == "</Topology>":
                break
            if tok != "<TopologyEntry>":
                raise KaldiFormatError(f"topology: expected <TopologyEntry> or </Topology>, got {tok!r}")
            bio.expect_token(f, False, "<ForPhones>")
            phones = []
            while (tok := bio.read_token(f, False)) != "</ForPhones>":
                try:
                    phones.append(int(tok))
                except ValueError:
                    raise KaldiFormatError(f"topology: expected a phone id, got {tok!r}") from None
            entry: list[HmmState] = []
            tok = bio.read_token(f, False)
            while tok != "</TopologyEntry>":
                if tok != "<State>":
                    raise KaldiFormatError(f"topology: expected <State> or </TopologyEntry>, got {tok!r}")
                if (s := bio.read_int32(f, False)) != len(entry):
                    raise KaldiFormatError(f"topology: states must be numbered from 0 in order; "
                                           f"expected {len(entry)}, got {s}")
                fwd = loop = NO_PDF
                tok = bio.read_token(f, False)
                if tok == "<PdfClass>":
                    fwd = loop = bio.read_int32(f, False)
                    tok = bio.read_token(f, False)
                elif tok == "<ForwardPdfClass>":
                    fwd = bio.read_int32(f, False)
                    bio.expect_token(f, False, "<SelfLoopPdfClass>")
                    loop = bio.read_int32(f, False)
                    tok = bio.read_token(f, False)
                trans = []
                while tok == "<Transition>":
                    trans.append((bio.read_int32(f, False), bio.read_float(f, False)))
                    tok = bio.read_token(f, False)
                if tok != "</State>":
                    raise KaldiFormatError(f"topology: expected </State>, got {tok!r}")
                entry.append(HmmState(fwd, loop, trans))
                tok = bio.read_token(f, False)
            topo.entries.append(entry)
            topo._add_phones(phones, len(topo.entries) - 1)
        topo.phones.sort()
        return topo

    @classmethod
    def _read_binary(cls, f: BinaryIO) -> HmmTopology:
        phones = bio.read_int32_vector(f, True)
        phone2idx = bio.read_int32_vector(f, True)
        n = bio.read_int32(f, True)
        is_hmm = n != -1  # -1 marks the extended (non-HMM) format with self-loop pdf classes
        if not is_hmm:
            n = bio.read_int32(f, True)
        if not 0 <= n < 2**20:
            raise KaldiFormatError(f"topology: implausible number of entries {n}")
        entries = []
        for _ in range(n):
            entry = []
            for _ in range(bio.read_int32(f, True)):
                fwd = bio.read_int32(f, True)
                loop = fwd if is_hmm else bio.read_int32(f, True)
                trans = [(bio.read_int32(f, True), bio.read_float(f, True)) for _ in range(bio.read_int32(f, True))]
                entry.append(HmmState(fwd, loop, trans))
            entries.append(entry)
        bio.expect_token(f, True, "</Topology>")
        return cls(phones, phone2idx, entries)

    def write(self, f: BinaryIO, binary: bool) -> None:
        is_hmm = self.is_hmm()
        bio.write_token(f, binary, "<Topology>")
        if binary:
            bio.write_int32_vector(f, True, self.phones)
            bio.write_int32_vector(f, True, self.phone2idx)
            if not is_hmm:
                bio.write_int32(f, True, -1)
            bio.write_int32(f, True, len(self.entries))
            for entry in self.entries:
                bio.write_int32(f, True, len(entry))
                for st in entry:
                    ints = [st.forward_pdf_class] + ([] if is_hmm else [st.self_loop_pdf_class])
                    for x in ints + [len(st.transitions)]:
                        bio.write_int32(f, True, x)
                    for d, p in st.transitions:
                        bio.write_int32(f, True, d)
                        bio.write_float(f, True, p)
        else:
            f.write(b"\n")
            for i, entry in enumerate(self.entries):
                phones = "".join(f"{p} " for p, idx in enumerate(self.phone2idx) if idx == i)
                f.write(f"<TopologyEntry> \n<ForPhones> \n{phones}\n</ForPhones> \n".encode())
                for j, st in enumerate(entry):
                    line = f"<State> {j} "
                    if st.forward_pdf_class != NO_PDF:
                        if is_hmm:
                            line += f"<PdfClass> {st.forward_pdf_class} "
                        else:
                            line += (f"<ForwardPdfClass> {st.forward_pdf_class} "
                                     f"<SelfLoopPdfClass> {st.self_loop_pdf_class} ")
                    line += "".join(f"<Transition> {d} {bio.format_float(p)} " for d, p in st.transitions)
                    f.write((line + "</State> \n").encode())
                f.write(b"</TopologyEntry> \n")
        bio.write_token(f, binary, "</Topology>")
        if not binary:
            f.write(b"\n")


def read_topology(path: str | os.PathLike) -> HmmTopology:
    """A standalone ``topo`` file (text as written by hand/prepare_lang, or binary)."""
    return read_kaldi_file(path, "topology", lambda f: HmmTopology.read(f, bio.read_binary_header(f)))
