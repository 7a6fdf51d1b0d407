"""Kaldi ``HmmTopology`` and ``TransitionModel`` (``hmm/hmm-topology.cc``, ``hmm/transition-model.cc``).

babelflow trains on pdf-ids, but Kaldi alignment dirs store *transition-ids*; mapping one
to the other needs the TransitionModel at the head of ``final.mdl``. We also write it
back byte-exactly, because an exported ``final.mdl`` (AmNnetSimple) starts with it.

Transition-ids: the transition-states are the sorted tuples (phone, hmm-state,
forward-pdf, self-loop-pdf), numbered from 1; each owns one consecutive transition-id per
outgoing arc of its topology state. An id maps to the self-loop pdf if its arc returns to
the same HMM state, else to the forward pdf.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple, Sequence, TypeVar

import numpy as np

from ..errors import BabelflowError
from ..io import atomic_open
from . import basic_io as bio
from .basic_io import KaldiFormatError, read_kaldi_file

NO_PDF = -1  # Kaldi's kNoPdf: a non-emitting state
T = TypeVar("T")


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
    def from_entries(cls, entries: Sequence[tuple[Sequence[int], Sequence[Sequence]]]) -> "HmmTopology":
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
            def bad(msg: str) -> KaldiFormatError:
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
    def read(cls, f: BinaryIO, binary: bool) -> "HmmTopology":
        bio.expect_token(f, binary, "<Topology>")
        topo = cls._read_binary(f) if binary else cls._read_text(f)
        topo.check()
        return topo

    @classmethod
    def _read_text(cls, f: BinaryIO) -> "HmmTopology":
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
    def _read_binary(cls, f: BinaryIO) -> "HmmTopology":
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


class TransitionModel:
    """Kaldi's TransitionModel: topology, sorted transition-state tuples and per-id log-probs."""

    def __init__(self, topology: HmmTopology, tuples: Sequence[tuple[int, int, int, int]], log_probs: np.ndarray):
        self.topology = topology
        self.tuples = [tuple(int(x) for x in t) for t in tuples]
        self.log_probs = np.asarray(log_probs, dtype=np.float32)
        self._compute_derived()
        self._check()

    def _compute_derived(self) -> None:
        """Kaldi ComputeDerived: transition-id ranges per transition-state and per-id lookups."""
        self._state2id = [1]  # first transition-id of each transition-state (0-based list), plus the end
        rows = [(-1, -1, -1, 0)]  # per transition-id: pdf, phone, hmm-state, is-self-loop
        for phone, hmm_state, fwd_pdf, loop_pdf in self.tuples:
            entry = self.topology.entry_for_phone(phone)
            if not 0 <= hmm_state < len(entry):
                raise KaldiFormatError(f"transition model: phone {phone} has no HMM state {hmm_state}")
            for dst, _ in entry[hmm_state].transitions:
                rows.append((loop_pdf if dst == hmm_state else fwd_pdf, phone, hmm_state, dst == hmm_state))
            self._state2id.append(len(rows))
        table = np.array(rows, dtype=np.int32)
        self._id2pdf, self._id2phone, self._id2hmm_state = (np.ascontiguousarray(table[:, c]) for c in range(3))
        self._self_loop = table[:, 3].astype(bool)

    def _check(self) -> None:
        if not self.tuples or self.num_transition_ids == 0:
            raise KaldiFormatError("transition model: no transition states")
        if any(a >= b for a, b in zip(self.tuples, self.tuples[1:])):
            raise KaldiFormatError("transition model: tuples are not sorted and unique")
        if any(t[2] < 0 or t[3] < 0 for t in self.tuples):
            raise KaldiFormatError("transition model: negative pdf id in tuples")
        if self.log_probs.shape != (self.num_transition_ids + 1,):
            raise KaldiFormatError(f"transition model: {self.log_probs.size} log-probs for "
                                   f"{self.num_transition_ids} transition-ids (expected one more)")
        lp = self.log_probs[1:]
        if not (np.all(np.isfinite(lp)) and np.all(lp <= 0.0)):
            raise KaldiFormatError("transition model: log-probs must be finite and <= 0")

    @classmethod
    def from_topology(cls, topology: HmmTopology, tuples: Sequence[tuple[int, int, int, int]]) -> "TransitionModel":
        """Kaldi InitializeProbs: log-probs straight from the topology (tuples get sorted)."""
        tuples = sorted(tuple(int(x) for x in t) for t in tuples)
        probs = [1.0]  # index 0 unused; log(1) = 0 as in Kaldi's zero-initialised vector
        for phone, hmm_state, _, _ in tuples:
            probs += [p for _, p in topology.entry_for_phone(phone)[hmm_state].transitions]
        return cls(topology, tuples, np.log(np.array(probs, dtype=np.float32)))

    @classmethod
    def monophone(cls, num_phones: int, num_states: int = 3, self_loop_prob: float = 0.75) -> "TransitionModel":
        """What ``gmm-init-mono`` builds for phones 1..num_phones sharing one left-to-right topology."""
        if num_phones < 1 or num_states < 1 or not 0.0 < self_loop_prob < 1.0:
            raise BabelflowError(f"monophone model: need num_phones >= 1, num_states >= 1 and "
                                 f"0 < self_loop_prob < 1 (got {num_phones}, {num_states}, {self_loop_prob})")
        states = [(s, s, [(s, self_loop_prob), (s + 1, 1.0 - self_loop_prob)]) for s in range(num_states)]
        topo = HmmTopology.from_entries([(range(1, num_phones + 1), states + [(NO_PDF, NO_PDF, [])])])
        tuples = [(p, s, (p - 1) * num_states + s, (p - 1) * num_states + s)
                  for p in range(1, num_phones + 1) for s in range(num_states)]
        return cls.from_topology(topo, tuples)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TransitionModel):
            return NotImplemented
        return (self.topology == other.topology and self.tuples == other.tuples
                and np.array_equal(self.log_probs, other.log_probs))

    def __repr__(self) -> str:
        return (f"TransitionModel(phones={self.num_phones}, pdfs={self.num_pdfs}, "
                f"transition_ids={self.num_transition_ids})")

    @property
    def num_pdfs(self) -> int:
        return 1 + max(max(t[2], t[3]) for t in self.tuples)

    @property
    def num_transition_ids(self) -> int:
        return self._state2id[-1] - 1

    @property
    def num_transition_states(self) -> int:
        return len(self.tuples)

    @property
    def num_phones(self) -> int:
        """Largest phone id in the tuples (Kaldi NumPhones), not the count of phones."""
        return max(t[0] for t in self.tuples)

    # Lookup tables indexed by transition-id (vectorised ali-to-pdf / ali-to-phones); entry 0 is -1.
    def transition_id_to_pdf(self) -> np.ndarray:
        """int32, Kaldi's id2pdf_id_ (except entry 0, which Kaldi leaves at 0)."""
        return self._id2pdf.copy()

    def transition_id_to_phone(self) -> np.ndarray:
        return self._id2phone.copy()

    def transition_id_to_hmm_state(self) -> np.ndarray:
        return self._id2hmm_state.copy()

    def transition_id_is_self_loop(self) -> np.ndarray:
        return self._self_loop.copy()

    def transition_id(self, phone: int, hmm_state: int, dst_state: int, pdf: int | None = None) -> int:
        """Transition-id of the arc ``hmm_state -> dst_state`` of ``phone``.

        With a context-dependent tree several transition-states share (phone, hmm_state);
        then ``pdf`` (the forward pdf) must say which one is meant.
        """
        matches = [i for i, t in enumerate(self.tuples)
                   if t[0] == phone and t[1] == hmm_state and (pdf is None or t[2] == pdf)]
        if len(matches) != 1:
            what = "no" if not matches else "more than one"
            raise BabelflowError(f"transition model: {what} transition state for phone {phone}, "
                                 f"HMM state {hmm_state}" + ("" if pdf is None else f", pdf {pdf}"))
        ts = matches[0]
        dsts = [d for d, _ in self.topology.entry_for_phone(phone)[hmm_state].transitions]
        if dst_state not in dsts:
            raise BabelflowError(f"transition model: phone {phone} has no arc {hmm_state} -> {dst_state}")
        return self._state2id[ts] + dsts.index(dst_state)

    @classmethod
    def read(cls, f: BinaryIO, binary: bool | None = None) -> "TransitionModel":
        """Read from ``f``; with ``binary=None`` the mode comes from a ``\\0B`` header (file start)."""
        if binary is None:
            binary = bio.read_binary_header(f)
        bio.expect_token(f, binary, "<TransitionModel>")
        topo = HmmTopology.read(f, binary)
        kind = bio.read_token(f, binary)
        if kind not in ("<Triples>", "<Tuples>"):
            raise KaldiFormatError(f"transition model: expected <Triples> or <Tuples>, got {kind!r}")
        n = bio.read_int32(f, binary)
        if not 0 <= n < 2**26:
            raise KaldiFormatError(f"transition model: implausible number of tuples {n}")
        tuples = []
        for _ in range(n):
            phone, hmm_state, fwd = (bio.read_int32(f, binary) for _ in range(3))
            tuples.append((phone, hmm_state, fwd, bio.read_int32(f, binary) if kind == "<Tuples>" else fwd))
        end = bio.read_token(f, binary)
        if end not in ("</Triples>", "</Tuples>"):
            raise KaldiFormatError(f"transition model: expected </Triples> or </Tuples>, got {end!r}")
        bio.expect_token(f, binary, "<LogProbs>")
        log_probs = bio.read_float_vector(f, binary)
        bio.expect_token(f, binary, "</LogProbs>")
        bio.expect_token(f, binary, "</TransitionModel>")
        return cls(topo, tuples, log_probs)

    def write(self, f: BinaryIO, binary: bool = True, header: bool = True) -> None:
        """Write as Kaldi does; ``header`` (binary only) puts the ``\\0B`` file header first."""
        is_hmm = self.topology.is_hmm()
        nl = b"" if binary else b"\n"  # text mode puts newlines after most tokens

        def token(t: str) -> None:
            bio.write_token(f, binary, t)
            f.write(nl)

        if binary and header:
            bio.write_binary_header(f)
        token("<TransitionModel>")
        self.topology.write(f, binary)
        bio.write_token(f, binary, "<Triples>" if is_hmm else "<Tuples>")
        for t in [(len(self.tuples),)] + [t[:3] if is_hmm else t for t in self.tuples]:
            for x in t:
                bio.write_int32(f, binary, x)
            f.write(nl)
        token("</Triples>" if is_hmm else "</Tuples>")
        token("<LogProbs>")
        bio.write_float_vector(f, binary, self.log_probs)
        token("</LogProbs>")
        token("</TransitionModel>")


def read_transition_model(path: str | os.PathLike) -> TransitionModel:
    """The TransitionModel at the head of a Kaldi model file (GMM or nnet3 ``.mdl``, binary or text)."""
    return read_kaldi_file(path, "model", TransitionModel.read)


def read_topology(path: str | os.PathLike) -> HmmTopology:
    """A standalone ``topo`` file (text as written by hand/prepare_lang, or binary)."""
    return read_kaldi_file(path, "topology", lambda f: HmmTopology.read(f, bio.read_binary_header(f)))


def write_transition_model(path: str | os.PathLike, tm: TransitionModel, binary: bool = True) -> None:
    """Write a standalone TransitionModel file atomically (binary gets the ``\\0B`` header)."""
    with atomic_open(path, "wb") as f:
        tm.write(f, binary)
