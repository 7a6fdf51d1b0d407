"""What follows ``build-tree`` in ``train_deltas.sh``: Kaldi's ``gmm-init-model`` (the new tree's
TransitionModel and one Gaussian per leaf) and ``convert-ali`` (the monophone alignments rewritten as
transition-ids of the new model), both of which kaldi-hmm-gmm lacks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np

from ..errors import BabelflowError
from ..kaldi.hmm_topology import HmmTopology
from ..kaldi.transition_model import TransitionModel
from ..kaldi.tree import ContextDependency
from .model import AmDiagGmm, DiagGmm, GmmModel, transition_model_for_tree
from .tree_build import event_leaves
from .tree_stats import TidTable, TreeStats, is_reordered, split_to_phones, tid_table

__all__ = ["init_model_from_tree", "convert_alignments"]

log = logging.getLogger(__name__)


def init_model_from_tree(tree: ContextDependency, stats: TreeStats, topo: HmmTopology,
                         var_floor: float = 0.01) -> tuple[GmmModel, np.ndarray]:
    """Kaldi ``gmm-init-model`` (without an old model): the TransitionModel of ``tree`` and ``topo``, and per
    leaf one Gaussian fitted to the tree stats that map to it (float32 as Kaldi's ``DiagGmm(GaussClusterable)``,
    variances floored at ``var_floor``; a leaf without stats gets the global Gaussian). Also returns the
    per-pdf occupancies (``--write-occs``) that the first mix-up needs."""
    leaf, f32 = event_leaves(stats, tree.to_pdf, "gmm-init-model"), np.float32
    sums = stats.stats.group_sum(leaf, tree.num_pdfs)
    empty, total = sums.count == 0, sums.total()
    for i in np.flatnonzero(empty):
        log.warning("gmm-init-model: pdf %d has no stats; initialised from all data", i)
    count = np.where(empty, total.count[0], sums.count).astype(f32)
    scale = (1.0 / count.astype(np.float64)).astype(f32)[:, None]  # Kaldi: Scale(1.0 / count), all in float
    mean = np.where(empty[:, None], total.x, sums.x).astype(f32) * scale
    var = np.maximum(np.where(empty[:, None], total.x2, sums.x2).astype(f32) * scale - mean * mean, f32(var_floor))
    occs = sums.count.astype(f32)
    if (small := np.flatnonzero(~empty & (occs < 100))).size:
        log.warning("gmm-init-model: %d pdfs have fewer than 100 frames (smallest: pdf %d, %g)", small.size,
                    small[np.argmin(occs[small])], occs[small].min())
    am = AmDiagGmm([DiagGmm.from_moments(np.ones(1), m, v) for m, v in zip(mean, var)])
    return GmmModel(transition_model_for_tree(tree, topo), am), occs


def convert_alignments(old_tm: TransitionModel, new_tm: TransitionModel, new_tree: ContextDependency,
                       alignments: Mapping[str, np.ndarray] | Iterable[tuple], reorder: bool = True,
                       phone_map: Mapping[int, int] | None = None) -> dict[str, np.ndarray]:
    """Kaldi ``convert-ali``: the same phones, HMM states and transitions, now with the pdfs that ``new_tree``
    gives each phone in its context, as transition-ids of ``new_tm``; ``reorder`` (Kaldi's default) puts
    each state's forward transition first. Utterances whose alignment fails the checks are left out, as
    Kaldi does. Both models must share the topology (no frame subsampling)."""
    if old_tm.topology != new_tm.topology:
        raise BabelflowError("convert-ali: the old and new models have different topologies (not supported)")
    old, new = tid_table(old_tm), tid_table(new_tm)
    N, P = new_tree.N, new_tree.P
    tstate_of = {t: i for i, t in enumerate(new_tm.tuples)}
    pdf_cache: dict[tuple[int, ...], list[int]] = {}
    max_classes = max(new_tm.topology.num_pdf_classes(p) for p in new_tm.topology.phones)
    out = {}
    items = alignments.items() if isinstance(alignments, Mapping) else alignments
    for utt, ali in items:
        ali = np.asarray(ali, dtype=np.int64)
        bounds, ok = split_to_phones(old, ali)
        if not ok:
            log.warning("convert-ali: %s: could not convert alignment (bad alignment)", utt)
            continue
        phones = old.phone[ali[bounds[:-1]]]
        if phone_map:
            phones = np.array([phone_map[int(p)] for p in phones], dtype=np.int64)
        pdfs = np.zeros((len(phones), max_classes), dtype=np.int64)
        padded = np.r_[np.zeros(P, dtype=np.int64), phones, np.zeros(N - P - 1, dtype=np.int64)]
        for k in range(len(phones)):
            window = tuple(int(p) for p in padded[k: k + N])
            if window not in pdf_cache:
                classes = new_tm.topology.num_pdf_classes(window[P])
                pdf_cache[window] = [new_tree.pdf(window, c) for c in range(classes)]
            pdfs[k, : len(pdf_cache[window])] = pdf_cache[window]
        inst = np.repeat(np.arange(len(phones)), np.diff(bounds))
        fwd_class = old.pdf_class[ali]  # HMM topology: forward and self-loop pdf-class agree
        pdf = pdfs[inst, fwd_class]
        uniq, inv = np.unique(np.stack([phones[inst], old.hmm_state[ali], pdf], 1), axis=0, return_inverse=True)
        try:  # Kaldi TupleToTransitionState
            ts = np.array([tstate_of[(p, s, d, d)] for p, s, d in uniq.tolist()])[inv.ravel()]
        except KeyError:
            raise BabelflowError(f"convert-ali: {utt}: the new model lacks a transition-state the tree needs "
                                 "(model not built from this tree?)") from None
        new_ali = new.first_tid[ts] + old.trans_index[ali]
        if reorder != is_reordered(old.tstate[ali], old.is_loop[ali]):
            new_ali = _change_reordering(new, new_ali)
        out[utt] = new_ali.astype(np.int32)
    return out


def _change_reordering(t: TidTable, ali: np.ndarray) -> np.ndarray:
    """Kaldi ``ChangeReorderingOfAlignment``: swap the first and last transition-id of each state's run."""
    tstate, loop = t.tstate[ali].tolist(), t.is_loop[ali].tolist()  # lists: this loop visits every frame
    first, last = [], []
    start, n = 0, len(ali)
    while start != n:
        end = start + 1
        while end != n and tstate[end] == tstate[start]:
            if not loop[end]:
                end += 1 if loop[start] else 0  # a run of self-loops takes the forward transition after it
                break
            end += 1
        first.append(start)
        last.append(end - 1)
        start = end
    out = np.array(ali, copy=True)
    out[first], out[last] = out[last], out[first]
    return out
