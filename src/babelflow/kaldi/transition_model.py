"""Kaldi ``TransitionModel`` (``hmm/transition-model.cc``); its HmmTopology is in :mod:`.hmm_topology`.

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
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np

from ..errors import BabelflowError
from ..io import atomic_open
from . import basic_io as bio
from .basic_io import KaldiFormatError, read_kaldi_file
from .hmm_topology import NO_PDF, HmmTopology


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
    def from_topology(cls, topology: HmmTopology, tuples: Sequence[tuple[int, int, int, int]]) -> TransitionModel:
        """Kaldi InitializeProbs: log-probs straight from the topology (tuples get sorted)."""
        tuples = sorted(tuple(int(x) for x in t) for t in tuples)
        probs = [1.0]  # index 0 unused; log(1) = 0 as in Kaldi's zero-initialised vector
        for phone, hmm_state, _, _ in tuples:
            probs += [p for _, p in topology.entry_for_phone(phone)[hmm_state].transitions]
        return cls(topology, tuples, np.log(np.array(probs, dtype=np.float32)))

    @classmethod
    def monophone(cls, num_phones: int, num_states: int = 3, self_loop_prob: float = 0.75) -> TransitionModel:
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
    def read(cls, f: BinaryIO, binary: bool | None = None) -> TransitionModel:
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


def write_transition_model(path: str | os.PathLike, tm: TransitionModel, binary: bool = True) -> None:
    """Write a standalone TransitionModel file atomically (binary gets the ``\\0B`` header)."""
    with atomic_open(path, "wb") as f:
        tm.write(f, binary)
