"""Kaldi's ``acc-tree-stats`` / ``sum-tree-stats``: per phone-in-context event, the statistics of the frames
a (monophone) alignment gives it, which is all that building a triphone tree needs to see of the data;
and ``SplitToPhones`` plus the per transition-id tables that reading an alignment phone by phone needs.

Statistics are vectorised numpy: one row per distinct event (phone window + pdf-class) with its
count, Σx and Σx².
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import BabelflowError
from ..kaldi.transition_model import TransitionModel
from ..kaldi.tree import PDF_CLASS_KEY
from .clustering import GaussStats

__all__ = ["TreeStats", "TidTable", "tid_table", "is_reordered", "split_to_phones", "accumulate_tree_stats"]

log = logging.getLogger(__name__)
_CHUNK_FRAMES = 1 << 18  # frames per partial sum in accumulate_tree_stats (bounds memory)


@dataclass
class TreeStats:
    """Kaldi tree accumulators (``treeacc``): per distinct event, GaussClusterable stats of its frames.

    ``events[:, k]`` is the phone at context position ``k`` (0 = utterance edge, -1 = key absent because
    the central phone is context-independent) and ``events[:, N]`` the pdf-class."""

    events: np.ndarray  # (E, N + 1) int32
    stats: GaussStats
    N: int = 3
    P: int = 1

    def __len__(self) -> int:
        return len(self.events)

    @property
    def num_frames(self) -> float:
        return float(self.stats.count.sum())

    def column(self, key: int) -> int:
        return self.N if key == PDF_CLASS_KEY else key

    @classmethod
    def sum(cls, parts: Sequence[TreeStats]) -> TreeStats:
        """Kaldi ``sum-tree-stats``: merge accumulators (e.g. one per job)."""
        if not parts:
            raise BabelflowError("tree stats: nothing accumulated (no usable utterances)")
        events = np.concatenate([p.events for p in parts])
        stats = GaussStats(*(np.concatenate([getattr(p.stats, a) for p in parts]) for a in ("count", "x", "x2")),
                           parts[0].stats.var_floor)
        uniq, inv = np.unique(events, axis=0, return_inverse=True)
        return cls(uniq.astype(np.int32), stats.group_sum(inv.ravel(), len(uniq)), parts[0].N, parts[0].P)


@dataclass(frozen=True)
class TidTable:
    """Per transition-id lookups of a TransitionModel (index 0 unused), as Kaldi's TransitionModel answers them."""

    tstate: np.ndarray  # 0-based transition-state
    trans_index: np.ndarray
    is_loop: np.ndarray
    is_final: np.ndarray
    phone: np.ndarray
    hmm_state: np.ndarray
    pdf_class: np.ndarray  # TransitionIdToPdfClass
    first_tid: np.ndarray  # per transition-state
    initial_emitting: np.ndarray  # per phone: topology state 0 emits (SplitToPhones' sanity check)


def tid_table(tm: TransitionModel) -> TidTable:
    rows, first = [(-1, -1, 0, 0, -1, -1, -1)], []
    for ts, (phone, hs, _, _) in enumerate(tm.tuples):
        entry = tm.topology.entry_for_phone(phone)
        st = entry[hs]
        first.append(len(rows))
        for k, (dst, _) in enumerate(st.transitions):
            loop = dst == hs
            rows.append((ts, k, loop, dst == len(entry) - 1, phone, hs,
                         st.self_loop_pdf_class if loop else st.forward_pdf_class))
    t = np.array(rows, dtype=np.int64).T
    emitting = np.zeros(max(tm.topology.phones) + 1, dtype=bool)
    for p in tm.topology.phones:
        emitting[p] = tm.topology.entry_for_phone(p)[0].forward_pdf_class != -1
    return TidTable(t[0], t[1], t[2].astype(bool), t[3].astype(bool), t[4], t[5], t[6],
                     np.array(first, dtype=np.int64), emitting)


def is_reordered(ts: np.ndarray, loop: np.ndarray) -> bool:
    """Kaldi IsReordered: self-loops after the forward transition of a state (Kaldi's default)."""
    change = np.flatnonzero(ts[:-1] != ts[1:])
    change = change[loop[change] | loop[change + 1]]
    if len(change):
        return bool(loop[change[0]])
    return bool(len(ts)) and not loop[0] and bool(loop[-1])


def split_to_phones(tm: TransitionModel | TidTable, ali: np.ndarray) -> tuple[np.ndarray, bool]:
    """Kaldi ``SplitToPhones``: the phone boundaries of a transition-id alignment (start of each phone, then
    ``len(ali)``) and whether the alignment passed Kaldi's consistency checks."""
    t = tm if isinstance(tm, TidTable) else tid_table(tm)
    ali = np.asarray(ali, dtype=np.int64)
    n = len(ali)
    if n == 0:
        return np.zeros(1, dtype=np.int64), True
    if ali.min() < 1 or ali.max() >= len(t.tstate):
        raise BabelflowError(f"alignment has transition-ids outside 1..{len(t.tstate) - 1} of the model")
    ts, loop, final = t.tstate[ali], t.is_loop[ali], t.is_final[ali]
    if is_reordered(ts, loop):  # a phone ends after its final transition plus the self-loops that follow it
        covered = final[np.maximum.accumulate(np.where(~loop, np.arange(n), 0))]  # last forward frame was final
        ends = covered & ~np.r_[loop[1:], False]
    else:
        covered, ends = final, final.copy()
    ok = bool(ends[-1])
    ends[-1] = True
    changed = np.r_[(t.phone[ali[1:]] != t.phone[ali[:-1]]) & ~covered[:-1], False]
    ok &= not changed.any()
    bounds = np.r_[0, np.flatnonzero(ends | changed) + 1]
    starts = ali[bounds[:-1]]
    ok &= not np.any(t.initial_emitting[t.phone[starts]] & (t.hmm_state[starts] != 0))
    return bounds, ok


def accumulate_tree_stats(feats: Mapping[str, np.ndarray], alignments: Mapping[str, np.ndarray] | Iterable[tuple],
                          trans_model: TransitionModel, context_width: int = 3, central_position: int = 1,
                          ci_phones: Sequence[int] = (), var_floor: float = 0.01,
                          phone_map: Mapping[int, int] | None = None) -> TreeStats:
    """Kaldi ``acc-tree-stats`` (+ ``sum-tree-stats``) over all utterances in both ``feats`` and ``alignments``.

    Each frame adds to the event (phone window, pdf-class); windows reaching past the utterance
    use phone 0, and context-independent central phones (``--ci-phones``, e.g. silence) keep no
    context keys, so the tree can never ask about their neighbours. ``phone_map`` is ``--phone-map``."""
    N, P = context_width, central_position
    if not 0 <= P < N:
        raise BabelflowError(f"acc-tree-stats: invalid central position {P} for context width {N}")
    t = tid_table(trans_model)
    pmap = np.arange(max([int(t.phone.max()), *(phone_map or {})]) + 1)
    for old, new in (phone_map or {}).items():
        pmap[old] = new
    ci = np.zeros(max(pmap.max(), *ci_phones, 0) + 1, dtype=bool)
    ci[list(ci_phones)] = True
    parts, events, frames, pending, skipped = [], [], [], 0, 0
    items = alignments.items() if isinstance(alignments, Mapping) else alignments
    for utt, ali in items:
        x = feats.get(utt)
        ali = np.asarray(ali, dtype=np.int64)
        if x is None or len(x) != len(ali):
            log.warning("acc-tree-stats: %s: %s", utt, "no features" if x is None else
                        f"alignment has wrong size {len(ali)} vs. {len(x)} frames")
            skipped += 1
            continue
        bounds, ok = split_to_phones(t, ali)
        if not ok:
            log.warning("acc-tree-stats: %s: alignment appears to be bad, not using it", utt)
            skipped += 1
            continue
        phones = pmap[t.phone[ali[bounds[:-1]]]]
        inst = np.repeat(np.arange(len(phones)), np.diff(bounds))
        ev = np.empty((len(ali), N + 1), dtype=np.int32)
        for j in range(N):
            k = inst + j - P
            ev[:, j] = np.where((k >= 0) & (k < len(phones)), phones[k.clip(0, len(phones) - 1)], 0)
        ev[np.ix_(ci[ev[:, P]], [j for j in range(N) if j != P])] = -1
        ev[:, N] = t.pdf_class[ali]
        events.append(ev)
        frames.append(np.asarray(x, dtype=np.float64))
        pending += len(ali)
        if pending >= _CHUNK_FRAMES:
            parts.append(_reduce(events, frames, N, P, var_floor))
            events, frames, pending = [], [], 0
    if events:
        parts.append(_reduce(events, frames, N, P, var_floor))
    stats = TreeStats.sum(parts)
    log.info("acc-tree-stats: %d distinct events, %.0f frames (%d utterances skipped)", len(stats),
             stats.num_frames, skipped)
    return stats


def _reduce(events: list[np.ndarray], frames: list[np.ndarray], N: int, P: int, var_floor: float) -> TreeStats:
    x = np.concatenate(frames)
    per_frame = GaussStats(np.ones(len(x)), x, x * x, var_floor)
    uniq, inv = np.unique(np.concatenate(events), axis=0, return_inverse=True)
    return TreeStats(uniq.astype(np.int32), per_frame.group_sum(inv.ravel(), len(uniq)), N, P)

