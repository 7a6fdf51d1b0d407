"""The triphone decision tree built by babelflow itself: Kaldi's ``acc-tree-stats``, ``build-tree``,
``gmm-init-model`` (its TransitionModel and one Gaussian per leaf) and ``convert-ali``.

kaldi-hmm-gmm binds none of these, and a context-dependent tree is what turns the flat-start
monophone alignments into triphone ones (``steps/train_deltas.sh``). Each function follows the
Kaldi source it replaces, so a tree built here is a Kaldi tree (same EventMap layout, leaf
numbering, post-clustering and rounding to a multiple of 8) that Kaldi's graph tools accept.
``cluster-phones``, ``compile-questions`` and the clustering behind them are in :mod:`.clustering`.
Statistics are vectorised numpy: one row per distinct event (phone window + pdf-class) with its
count, Σx and Σx².
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import BabelflowError
from ..kaldi.hmm_topology import HmmTopology
from ..kaldi.transition_model import TransitionModel
from ..kaldi.tree import (
    PDF_CLASS_KEY,
    ConstantEventMap,
    ContextDependency,
    EventMap,
    SplitEventMap,
    TableEventMap,
    stub_map,
)
from .clustering import GaussStats, Questions, SplitFinder, TreeSplitter, cluster_bottom_up, compile_questions
from .model import AmDiagGmm, DiagGmm, GmmModel, transition_model_for_tree

__all__ = ["TreeStats", "accumulate_tree_stats", "split_to_phones", "default_roots", "TreeBuildReport", "build_tree",
           "build_tree_report", "map_events", "objf_given_map", "init_model_from_tree",
           "convert_alignments"]

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

    def take(self, idx: np.ndarray) -> TreeStats:
        return TreeStats(self.events[idx], self.stats.take(idx), self.N, self.P)

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
class _TidTable:
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


def _tid_table(tm: TransitionModel) -> _TidTable:
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
    return _TidTable(t[0], t[1], t[2].astype(bool), t[3].astype(bool), t[4], t[5], t[6],
                     np.array(first, dtype=np.int64), emitting)


def _is_reordered(ts: np.ndarray, loop: np.ndarray) -> bool:
    """Kaldi IsReordered: self-loops after the forward transition of a state (Kaldi's default)."""
    change = np.flatnonzero(ts[:-1] != ts[1:])
    change = change[loop[change] | loop[change + 1]]
    if len(change):
        return bool(loop[change[0]])
    return bool(len(ts)) and not loop[0] and bool(loop[-1])


def split_to_phones(tm: TransitionModel | _TidTable, ali: np.ndarray) -> tuple[np.ndarray, bool]:
    """Kaldi ``SplitToPhones``: the phone boundaries of a transition-id alignment (start of each phone, then
    ``len(ali)``) and whether the alignment passed Kaldi's consistency checks."""
    t = tm if isinstance(tm, _TidTable) else _tid_table(tm)
    ali = np.asarray(ali, dtype=np.int64)
    n = len(ali)
    if n == 0:
        return np.zeros(1, dtype=np.int64), True
    if ali.min() < 1 or ali.max() >= len(t.tstate):
        raise BabelflowError(f"alignment has transition-ids outside 1..{len(t.tstate) - 1} of the model")
    ts, loop, final = t.tstate[ali], t.is_loop[ali], t.is_final[ali]
    if _is_reordered(ts, loop):  # a phone ends after its final transition plus the self-loops that follow it
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
    t = _tid_table(trans_model)
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
    leaf = _leaves(stats, m, "objf")
    return float(stats.stats.group_sum(leaf, leaf.max() + 1).objf().sum())


def _leaves(stats: TreeStats, m: EventMap, what: str) -> np.ndarray:
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
    stub_leaf = _leaves(stats, stub, "build-tree")
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
    comp, leaf = _leaves(stats, stub, "build-tree"), _leaves(stats, tree, "build-tree")
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


def init_model_from_tree(tree: ContextDependency, stats: TreeStats, topo: HmmTopology,
                         var_floor: float = 0.01) -> tuple[GmmModel, np.ndarray]:
    """Kaldi ``gmm-init-model`` (without an old model): the TransitionModel of ``tree`` and ``topo``, and per
    leaf one Gaussian fitted to the tree stats that map to it (float32 as Kaldi's ``DiagGmm(GaussClusterable)``,
    variances floored at ``var_floor``; a leaf without stats gets the global Gaussian). Also returns the
    per-pdf occupancies (``--write-occs``) that the first mix-up needs."""
    leaf, f32 = _leaves(stats, tree.to_pdf, "gmm-init-model"), np.float32
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
    old, new = _tid_table(old_tm), _tid_table(new_tm)
    N, P = new_tree.N, new_tree.P
    tup = np.array(new_tm.tuples, dtype=np.int64)
    base = tup.max(0) + 1
    code = ((tup[:, 0] * base[1] + tup[:, 1]) * base[2] + tup[:, 2]) * base[3] + tup[:, 3]  # sorted, as tuples
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
        key = ((phones[inst] * base[1] + old.hmm_state[ali]) * base[2] + pdf) * base[3] + pdf
        ts = np.searchsorted(code, key)
        if np.any(ts >= len(code)) or np.any(code[ts.clip(0, len(code) - 1)] != key):
            raise BabelflowError(f"convert-ali: {utt}: the new model lacks a transition-state the tree needs "
                                 "(model not built from this tree?)")
        new_ali = new.first_tid[ts] + old.trans_index[ali]
        if reorder != _is_reordered(old.tstate[ali], old.is_loop[ali]):
            new_ali = _change_reordering(new, new_ali)
        out[utt] = new_ali.astype(np.int32)
    return out


def _change_reordering(t: _TidTable, ali: np.ndarray) -> np.ndarray:
    """Kaldi ``ChangeReorderingOfAlignment``: swap the first and last transition-id of each state's run."""
    ali = ali.copy()
    start, n = 0, len(ali)
    while start != n:
        ts, start_loop = t.tstate[ali[start]], t.is_loop[ali[start]]
        end = start + 1
        while end != n and t.tstate[ali[end]] == ts:
            if not t.is_loop[ali[end]]:
                end += 1 if start_loop else 0  # Kaldi's inverted 'start_is_self_loop'
                break
            end += 1
        ali[start], ali[end - 1] = ali[end - 1], ali[start]
        start = end
    return ali
