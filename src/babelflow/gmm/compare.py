"""``babelflow ali-compare``: how close an alignment dir is to a reference one.

Phones are compared by *symbol* (each dir's ``phones.txt``), so a GMM system built from a
lexicon can be scored against the demo's true alignments although their phone ids differ.
A phone instance starts where the phone changes or its HMM state goes back; boundaries are
compared between instances paired by a Levenshtein alignment of the two phone strings
(kaldialign), so an inserted or dropped phone costs its own boundary, not every later one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import BabelflowError
from ..kaldi.alignments import AlignmentDir

FRAME_MS = 10.0  # Kaldi's frame shift


@dataclass
class Segments:
    """One utterance as phone instances: symbols and start frames (plus the end)."""

    phones: list[str]
    starts: np.ndarray  # len(phones) + 1: the last entry is the number of frames
    frame_phones: list[str]


def _symbols(ali: AlignmentDir) -> dict[int, str]:
    if ali.phones is None:
        raise BabelflowError(f"{ali.path}/phones.txt: missing (phones are compared by symbol)")
    return ali.phones


def utterance_segments(ali: AlignmentDir) -> dict[str, Segments]:
    """Every utterance of an alignment dir as phone instances."""
    tm = ali.transition_model
    to_phone, to_state = tm.transition_id_to_phone(), tm.transition_id_to_hmm_state()
    symbols = _symbols(ali)
    out = {}
    for key, tids in ali.transition_alignments():
        phone, state = to_phone[tids], to_state[tids]
        new = np.ones(len(tids), bool)
        new[1:] = (phone[1:] != phone[:-1]) | (state[1:] < state[:-1])
        starts = np.flatnonzero(new)
        names = [symbols[int(p)] for p in phone[starts]]
        out[key] = Segments(names, np.append(starts, len(tids)), [symbols[int(p)] for p in phone])
    return out


def compare_alignments(ref_dir: str | os.PathLike, hyp_dir: str | os.PathLike) -> dict:
    """``frame_agreement`` (frames whose phone symbols agree), ``boundary_median_ms``, ``within_20ms``,
    ``within_50ms`` (of the reference's inner phone boundaries whose phones the hypothesis also has),
    ``num_utts`` compared; utterances in only one dir are counted, not compared."""
    import kaldialign

    ref, hyp = utterance_segments(AlignmentDir(ref_dir)), utterance_segments(AlignmentDir(hyp_dir))
    common = sorted(ref.keys() & hyp.keys())
    if not common:
        raise BabelflowError(f"{hyp_dir}: no utterance in common with {ref_dir}")
    agree = frames = 0
    errors: list[float] = []
    for key in common:
        r, h = ref[key], hyp[key]
        n = min(len(r.frame_phones), len(h.frame_phones))
        agree += sum(a == b for a, b in zip(r.frame_phones[:n], h.frame_phones[:n]))
        frames += max(len(r.frame_phones), len(h.frame_phones))
        i = j = 0
        for a, b in kaldialign.align(r.phones, h.phones, "*"):
            if a != "*" and b != "*":
                if a == b and i > 0:  # the boundary at the start of a paired phone (not the utterance start)
                    errors.append(abs(int(r.starts[i]) - int(h.starts[j])) * FRAME_MS)
            i += a != "*"
            j += b != "*"
    err = np.asarray(errors)
    stat = (lambda f: float(f(err))) if errors else (lambda f: None)  # no boundary compared: no figure, not 0
    return {"frame_agreement": agree / frames, "boundary_median_ms": stat(np.median),
            "within_20ms": stat(lambda e: np.mean(e <= 20)), "within_50ms": stat(lambda e: np.mean(e <= 50)),
            "num_boundaries": len(errors), "num_utts": len(common),
            "only_in_ref": len(ref.keys() - hyp.keys()), "only_in_hyp": len(hyp.keys() - ref.keys())}
