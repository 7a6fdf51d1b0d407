"""Kaldi's ``build-tree``: the triphone decision tree from tree statistics and questions.

kaldi-hmm-gmm binds none of the tree-building tools, and a context-dependent tree is what turns
the flat-start monophone alignments into triphone ones (``steps/train_deltas.sh``). This follows
the Kaldi source step by step, so a tree built here is a Kaldi tree (same EventMap layout, leaf
numbering, post-clustering and rounding to a multiple of 8) that Kaldi's graph tools accept.
The statistics are :mod:`.tree_stats`, the questions :mod:`.questions`, the split search
:mod:`.tree_split`; what follows the tree (gmm-init-model, convert-ali) is :mod:`.tree_model`.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import BabelflowError
from ..kaldi.hmm_topology import HmmTopology
from ..kaldi.tree import (
    PDF_CLASS_KEY,
    ConstantEventMap,
    ContextDependency,
    EventMap,
    SplitEventMap,
    TableEventMap,
    stub_map,
)
from .clustering import cluster_bottom_up
from .questions import Questions, compile_questions
from .tree_split import SplitFinder, TreeSplitter
from .tree_stats import TreeStats

__all__ = ["default_roots", "TreeBuildReport", "build_tree", "build_tree_report", "map_events", "objf_given_map",
           "event_leaves"]

log = logging.getLogger(__name__)


def default_roots(phones: Sequence[int], silence_phones: Sequence[int] = (),
                  share_silence_phones: bool = False) -> tuple[list[list[int]], list[tuple[bool, bool, list[int]]]]:
    """``phones/sets`` and ``phones/roots`` as ``prepare_lang.sh`` writes them for word-position-independent
    phones, for alignment dirs without a lang dir: one set per phone, all "shared split" (silence is kept
    context-free by ``ci_phones`` in :func:`accumulate_tree_stats`), or with ``share_silence_phones`` all
    silence phones in one "not-shared not-split" root first."""
    sil = sorted(set(silence_phones))
    nonsil = [[p] for p in sorted(set(phones) - set(sil))]
    if share_silence_phones and sil:
        sets = [sil] + nonsil
        return sets, [(False, False, sil)] + [(True, True, s) for s in nonsil]
    sets = [[p] for p in sil] + nonsil
    return sets, [(True, True, s) for s in sets]


def map_events(m: EventMap, events: np.ndarray, N: int) -> np.ndarray:
    """Kaldi ``EventMap::Map`` for every event row (columns as in :class:`TreeStats`); -1 where it has no answer."""
    out = np.full(len(events), -1, dtype=np.int64)

    def rec(m: EventMap, idx: np.ndarray) -> None:
        if m is None or not len(idx):
            return
        if isinstance(m, ConstantEventMap):
            out[idx] = m.answer
            return
        vals = events[idx, N if m.key == PDF_CLASS_KEY else m.key]
        if isinstance(m, TableEventMap):
            for v in np.unique(vals[(vals >= 0) & (vals < len(m.table))]):
                rec(m.table[v], idx[vals == v])
        else:
            yes = np.isin(vals, m.yes_set)
            rec(m.yes, idx[yes])
            rec(m.no, idx[(vals >= 0) & ~yes])

    rec(m, np.arange(len(events)))
    return out


def objf_given_map(stats: TreeStats, m: EventMap) -> float:
    """Kaldi ``ObjfGivenMap``: total log-likelihood with one Gaussian per answer of ``m``."""
    leaf = event_leaves(stats, m, "objf")
    return float(stats.stats.group_sum(leaf, leaf.max() + 1).objf().sum())


def event_leaves(stats: TreeStats, m: EventMap, what: str) -> np.ndarray:
    """The leaf of every event of ``stats`` under ``m``; an unmapped event is an error (a tree that does not
    cover its own statistics cannot be trained), reported for the tool ``what``."""
    leaf = map_events(m, stats.events, stats.N)
    if (leaf < 0).any():
        bad = stats.events[np.argmax(leaf < 0)].tolist()
        raise BabelflowError(f"{what}: the tree does not map the event {bad} (phone window, pdf-class); check the "
                             "context width and that context-independent phones do not share roots with others")
    return leaf


def _copy_map(m: EventMap, mapping: Mapping[int, EventMap]) -> EventMap:
    """Kaldi ``EventMap::Copy(new_leaves)``: the same tree with leaf ``a`` replaced by ``mapping[a]``."""
    if m is None:
        return None
    if isinstance(m, ConstantEventMap):
        return mapping.get(m.answer, m)
    if isinstance(m, TableEventMap):
        return TableEventMap(m.key, tuple(_copy_map(t, mapping) for t in m.table))
    return SplitEventMap(m.key, m.yes_set, _copy_map(m.yes, mapping), _copy_map(m.no, mapping))


def _all_answers(m: EventMap) -> list[int]:
    """Every leaf of ``m`` (Kaldi ``MultiMap`` of the empty event)."""
    if m is None:
        return []
    if isinstance(m, ConstantEventMap):
        return [m.answer]
    if isinstance(m, TableEventMap):
        return [a for t in m.table for a in _all_answers(t)]
    return _all_answers(m.yes) + _all_answers(m.no)


@dataclass
class TreeBuildReport:
    """What Kaldi's ``build-tree`` logs: leaves at each stage and the likelihood gains."""

    stub_leaves: int  # one per root x pdf-class (GetStubMap)
    split_leaves: int  # after greedy splitting
    removed_by_clustering: int
    removed_by_rounding: int
    num_leaves: int  # final
    like_impr: float  # total log-likelihood gain of the splits
    frames: float  # all frames (Kaldi's normaliser)
    frames_split: float  # frames of the phones that may be split
    objf_change_clustering: float  # log-likelihood change of post-clustering and rounding (<= 0)
    cluster_thresh: float

    @property
    def like_impr_per_frame(self) -> float:
        return self.like_impr / self.frames if self.frames else 0.0


def build_tree(stats: TreeStats, questions: Questions | Sequence[Sequence[int]],
               roots: Sequence[tuple[bool | str, bool | str, Sequence[int]]], topo: HmmTopology, max_leaves: int = 0,
               thresh: float = 300.0, cluster_thresh: float = -1.0, round_num_leaves: bool = True,
               min_count: float = 0.0) -> ContextDependency:
    """Kaldi ``build-tree``; see :func:`build_tree_report`."""
    return build_tree_report(stats, questions, roots, topo, max_leaves, thresh, cluster_thresh, round_num_leaves,
                             min_count)[0]


def build_tree_report(stats: TreeStats, questions: Questions | Sequence[Sequence[int]],
                      roots: Sequence[tuple[bool | str, bool | str, Sequence[int]]], topo: HmmTopology,
                      max_leaves: int = 0, thresh: float = 300.0, cluster_thresh: float = -1.0,
                      round_num_leaves: bool = True, min_count: float = 0.0) -> tuple[ContextDependency,
                                                                                       TreeBuildReport]:
    """Kaldi ``build-tree`` (``BuildTree``) with its options and defaults.

    ``roots`` are ``roots.int`` lines (shared, split, phones), as booleans or Kaldi's words; ``questions``
    compiled ones or plain phone sets (``questions.int``, compiled here against ``topo``). From one stub
    leaf per root (x pdf-class unless shared), the leaf with the best question gain is split while the
    gain exceeds ``thresh`` and there are fewer than ``max_leaves`` leaves (0: no limit); leaves of each
    root are then merged bottom-up while the loss is below ``cluster_thresh`` (-1: the smallest split
    gain, 0: none) and, with ``round_num_leaves``, down to a multiple of 8. ``min_count`` (not in Kaldi,
    default off) forbids splits leaving fewer frames on a side. Leaves are numbered 0..n-1."""
    if not thresh > 0 and not max_leaves > 0:
        raise BabelflowError("build-tree: need thresh > 0 or max_leaves > 0")
    sets = [sorted(int(p) for p in r[2]) for r in roots]
    shared, split = ([r[k] == word if isinstance(r[k], str) else bool(r[k]) for r in roots]  # as ReadRootsFile
                     for k, word in ((0, "shared"), (1, "split")))
    num_classes = [0] * (max(max(topo.phones), *(max(s) for s in sets)) + 1)
    for p in topo.phones:
        num_classes[p] = topo.num_pdf_classes(p)
    if any(num_classes[p] == 0 for s in sets for p in s):
        raise BabelflowError("build-tree: the roots name phones that are not in the topology")
    if not isinstance(questions, Questions):
        questions = compile_questions(questions, topo, stats.N)
    stub, num_stub = stub_map(sets, num_classes, shared, stats.P)
    stub_leaf = event_leaves(stats, stub, "build-tree")
    may_split = ~np.isin(stats.events[:, stats.P], [p for s, sp in zip(sets, split) if not sp for p in s])
    ctx = SplitFinder(stats, questions, min_count)
    filt = np.flatnonzero(may_split)
    builders = [TreeSplitter(leaf, filt[stub_leaf[filt] == leaf], ctx)
                for leaf in range(int(stub_leaf[filt].max(initial=-1)) + 1)]
    heap = [(-b.best, -i) for i, b in enumerate(builders)]  # std::priority_queue: best gain, then higher index
    heapq.heapify(heap)
    next_leaf, like_impr, smallest = [num_stub], 0.0, 1.0e20
    while heap and -heap[0][0] > thresh and (max_leaves <= 0 or next_leaf[0] < max_leaves):
        gain, i = heapq.heappop(heap)
        smallest, like_impr = min(smallest, -gain), like_impr - gain
        builders[-i].do_split(ctx, next_leaf)
        heapq.heappush(heap, (-builders[-i].best, i))
    tree = _copy_map(stub, {i: b.to_map() for i, b in enumerate(builders)})
    num_leaves = next_leaf[0]
    log.info("build-tree: %d stub leaves, %d after splitting, like-impr %.4g per frame", num_stub, num_leaves,
             like_impr / max(stats.num_frames, 1e-10))
    if cluster_thresh < 0:
        cluster_thresh = smallest
    objf_before, removed, rounded = objf_given_map(stats, tree), 0, 0
    if cluster_thresh != 0:
        tree, removed = _cluster_restricted(tree, stub, stats, cluster_thresh, None)
    if round_num_leaves:
        tree, rounded = _cluster_restricted(tree, stub, stats, np.inf, (num_leaves - removed) // 8 * 8)
    if cluster_thresh != 0 or round_num_leaves:
        answers = sorted({a for a in _all_answers(tree)})
        tree = _copy_map(tree, {a: ConstantEventMap(i) for i, a in enumerate(answers)})  # RenumberEventMap
    result = ContextDependency(stats.N, stats.P, tree)
    report = TreeBuildReport(num_stub, num_leaves, removed, rounded, result.num_pdfs, like_impr, stats.num_frames,
                             float(stats.stats.count[may_split].sum()), objf_given_map(stats, tree) - objf_before,
                             float(cluster_thresh))
    log.info("build-tree: removed %d + %d leaves by clustering and rounding, %d leaves", removed, rounded,
             report.num_leaves)
    return result, report


def _cluster_restricted(tree: EventMap, stub: EventMap, stats: TreeStats, thresh: float,
                        num_required: int | None) -> tuple[EventMap, int]:
    """Kaldi ``ClusterEventMapRestrictedByMap`` (``num_required`` None) or
    ``ClusterEventMapToNClustersRestrictedByMap``: merge leaves bottom-up, never across stub leaves (roots),
    each merged leaf taking the id of a leaf of its cluster. Returns the tree and the number removed."""
    comp, leaf = event_leaves(stats, stub, "build-tree"), event_leaves(stats, tree, "build-tree")
    groups, indexes = [], []
    for c in range(int(comp.max()) + 1):
        sel = np.flatnonzero(comp == c)
        idx, inv = np.unique(leaf[sel], return_inverse=True)
        groups.append(stats.stats.take(sel).group_sum(inv.ravel(), len(idx)))
        indexes.append(idx)
    if num_required is None:
        assigns = [cluster_bottom_up([g], thresh)[1][0] for g in groups]
    else:
        nonempty = sum(len(i) > 0 for i in indexes)
        required = num_required - (len(groups) - nonempty)  # an empty root still keeps its leaf
        total = sum(len(i) for i in indexes)
        if num_required < len(groups) or required > total or required < nonempty:
            log.warning("build-tree: cannot round to %d leaves; not rounding", num_required)
            return tree, 0
        assigns = cluster_bottom_up(groups, np.inf, required, compartmentalized=True)[1]
    mapping, removed = {}, 0
    for idx, assign in zip(indexes, assigns):
        removed += len(idx) - (int(assign.max()) + 1 if len(idx) else 0)
        mapping.update({int(a): ConstantEventMap(int(idx[c])) for a, c in zip(idx, assign)})
    return _copy_map(tree, mapping), removed

