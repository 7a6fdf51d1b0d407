"""Kaldi's clustering of diagonal-Gaussian statistics (``tree/clusterable-classes.cc``, ``tree/cluster-utils.cc``,
``AutomaticallyObtainQuestions`` of ``tree/build-tree.cc``), the pieces behind ``cluster-phones`` and the
post-clustering of ``build-tree``.

kaldi-hmm-gmm binds ``GaussClusterable`` but none of the clustering algorithms, so they are
reimplemented here step for step: same objective, same visiting order, same tie-breaking
where Kaldi's is deterministic. ``cluster-phones`` even draws the same pseudo-random
k-means initialisations, because Kaldi's ``Rand()`` is glibc ``rand()`` with its default
seed 1, which :class:`GlibcRand` reproduces. Arithmetic is float64 throughout, where Kaldi
keeps objective values in float32, so exact ties may break differently.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BabelflowError
from ..kaldi.tree import PDF_CLASS_KEY, ConstantEventMap, EventMap, SplitEventMap

if TYPE_CHECKING:  # hints only: tree_build imports this module
    from ..kaldi.hmm_topology import HmmTopology
    from .tree_build import TreeStats

__all__ = ["GaussStats", "gauss_objf", "GlibcRand", "refine_clusters", "cluster_kmeans", "tree_cluster",
           "cluster_bottom_up", "obtain_questions", "cluster_phones", "Questions", "compile_questions"]

log = logging.getLogger(__name__)

_LOG_2PI = math.log(2.0 * math.pi)


def gauss_objf(count: np.ndarray, x: np.ndarray, x2: np.ndarray, var_floor: float) -> np.ndarray:
    """Kaldi ``GaussClusterable::Objf`` per row: the log-likelihood of the data under its own ML Gaussian,
    with variances floored at ``var_floor`` (0 for an empty row)."""
    count = np.asarray(count, dtype=np.float64)
    x, x2 = np.asarray(x, dtype=np.float64), np.asarray(x2, dtype=np.float64)
    safe = np.where(count > 0, count, 1.0)[..., None]
    mean = x / safe
    var = x2 / safe - mean * mean
    floored = np.maximum(var, var_floor)
    per_frame = -0.5 * (np.sum(var / floored, axis=-1) + np.sum(np.log(floored), axis=-1) + x.shape[-1] * _LOG_2PI)
    return np.where((count > 0) & np.isfinite(per_frame), per_frame * count, 0.0)


@dataclass
class GaussStats:
    """Rows of Kaldi ``GaussClusterable`` stats: count, Σx and Σx² (float64), sharing one variance floor."""

    count: np.ndarray  # (n,)
    x: np.ndarray  # (n, dim)
    x2: np.ndarray  # (n, dim)
    var_floor: float = 0.01

    def __len__(self) -> int:
        return len(self.count)

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    def objf(self) -> np.ndarray:
        return gauss_objf(self.count, self.x, self.x2, self.var_floor)

    def take(self, idx: np.ndarray | Sequence[int]) -> GaussStats:
        idx = np.asarray(idx, dtype=np.int64)
        return GaussStats(self.count[idx], self.x[idx], self.x2[idx], self.var_floor)

    def total(self) -> GaussStats:
        """All rows summed into one (Kaldi ``SumClusterable``)."""
        return GaussStats(self.count.sum(keepdims=True), self.x.sum(0, keepdims=True), self.x2.sum(0, keepdims=True),
                          self.var_floor)

    def group_sum(self, groups: np.ndarray, n: int) -> GaussStats:
        """Row ``g`` of the result sums the rows whose group is ``g`` (0 <= g < n); empty groups give zero rows."""
        groups = np.asarray(groups, dtype=np.int64)
        x, x2 = np.zeros((n, self.dim)), np.zeros((n, self.dim))
        np.add.at(x, groups, self.x)
        np.add.at(x2, groups, self.x2)
        return GaussStats(np.bincount(groups, weights=self.count, minlength=n).astype(np.float64), x, x2,
                          self.var_floor)

    def copy(self) -> GaussStats:
        return GaussStats(self.count.copy(), self.x.copy(), self.x2.copy(), self.var_floor)


class GlibcRand:
    """glibc ``rand()`` (TYPE_3 additive feedback generator), which Kaldi's ``Rand()`` calls; seed 1 is the
    state of a process that never called ``srand``, as in ``cluster-phones``."""

    def __init__(self, seed: int = 1):
        r = [seed & 0xFFFFFFFF]
        for i in range(1, 31):
            r.append((16807 * r[i - 1]) % 2147483647)
        r += r[:3]
        for i in range(34, 344):
            r.append((r[i - 31] + r[i - 3]) & 0xFFFFFFFF)
        self._r = r[-34:]

    def __call__(self) -> int:
        v = (self._r[-31] + self._r[-3]) & 0xFFFFFFFF
        self._r = self._r[1:] + [v]
        return v >> 1


def refine_clusters(points: GaussStats, clusters: GaussStats, assign: np.ndarray, num_iters: int = 100) -> float:
    """Kaldi ``RefineClusters``: move single points to another cluster while that raises the total objective.

    Updates ``clusters`` and ``assign`` in place; returns the improvement. Exact for up to
    ``top_n`` (5) clusters, the only case Kaldi's tree code uses (2 clusters)."""
    objf = clusters.objf()
    ans = 0.0
    for _ in range(num_iters):
        moved = False
        for p in range(len(points)):
            own = assign[p]
            c, x, x2 = points.count[p], points.x[p], points.x2[p]
            own_minus = gauss_objf(clusters.count[own] - c, clusters.x[own] - x, clusters.x2[own] - x2,
                                   clusters.var_floor)
            for other in range(len(clusters)):
                if other == own:
                    continue
                other_plus = gauss_objf(clusters.count[other] + c, clusters.x[other] + x, clusters.x2[other] + x2,
                                        clusters.var_floor)
                impr = other_plus + own_minus - objf[other] - objf[own]
                if impr > 0:
                    for arr, v in ((clusters.count, c), (clusters.x, x), (clusters.x2, x2)):
                        arr[own] -= v
                        arr[other] += v
                    objf[own], objf[other] = own_minus, other_plus
                    assign[p] = other
                    ans += impr
                    moved = True
                    break
        if not moved:
            break
    return float(ans)


def cluster_kmeans(points: GaussStats, num_clust: int, rand: GlibcRand, num_tries: int = 2, num_iters: int = 20,
                   refine_iters: int = 100) -> tuple[float, GaussStats, np.ndarray]:
    """Kaldi ``ClusterKMeans``: ``num_tries`` runs from pseudo-random round-robin starts, each refined by
    :func:`refine_clusters`; returns (objective gain over one cluster, clusters, assignments) of the best."""
    n = len(points)
    best: tuple[float, GaussStats, np.ndarray] | None = None
    for _ in range(num_tries):
        skip = 1
        if n > 1:  # a stride coprime to n visits every point once
            skip = 1 + rand() % (n - 1)
            while math.gcd(skip, n) != 1:
                skip = 0 if skip == n - 1 else skip
                skip += 1
        assign = np.empty(n, dtype=np.int64)
        assign[(np.arange(n) * skip) % n] = np.arange(n) % num_clust
        clusters = points.group_sum(assign, num_clust)
        ans = float(clusters.objf().sum() - clusters.total().objf()[0])
        for _ in range(num_iters):
            impr = refine_clusters(points, clusters, assign, refine_iters)
            ans += impr
            if impr == 0:
                break
        if best is None or ans > best[0]:
            best = (ans, clusters, assign)
    assert best is not None
    return best


class _Node:
    __slots__ = ("index", "parent", "is_leaf", "points", "best_split", "clusters", "assign")

    def __init__(self, index: int, parent: _Node | None, points: np.ndarray):
        self.index, self.parent, self.is_leaf, self.points = index, parent, True, points
        self.best_split, self.clusters, self.assign = 0.0, None, None


def tree_cluster(points: GaussStats, max_clust: int, rand: GlibcRand, num_tries: int = 10,
                 thresh: float = 0.0) -> tuple[np.ndarray, np.ndarray, int]:
    """Kaldi ``TreeCluster`` (branch factor 2): split the leaf whose 2-means split gains most, up to
    ``max_clust`` leaves. Returns (point -> leaf, cluster -> parent over leaves then non-leaves with the
    root last, number of leaves), Kaldi's output numbering."""
    leaves: list[_Node] = []
    nonleaves: list[_Node] = []
    heap: list[tuple[float, int, _Node]] = []
    tick = 0

    def find_best_split(node: _Node) -> None:
        nonlocal tick
        if len(node.points) <= 1:
            return
        impr, node.clusters, node.assign = cluster_kmeans(points.take(node.points), 2, rand, num_tries)
        node.best_split = impr
        if impr > thresh:
            heapq.heappush(heap, (-impr, tick, node))
            tick += 1

    root = _Node(0, None, np.arange(len(points)))
    leaves.append(root)
    find_best_split(root)
    while len(leaves) < max_clust and heap:
        node = heapq.heappop(heap)[2]
        children = []
        for i in range(2):
            index = node.index if i == 0 else len(leaves)
            child = _Node(index, node, node.points[node.assign == i])
            if i == 0:
                leaves[index] = child
            else:
                leaves.append(child)
            children.append(child)
        node.is_leaf, node.index = False, len(nonleaves)
        nonleaves.append(node)
        for child in children:
            find_best_split(child)

    total = len(leaves) + len(nonleaves)

    def out_index(node: _Node) -> int:
        return node.index if node.is_leaf else total - 1 - node.index

    assignments = np.full(len(points), -1, dtype=np.int64)
    parents = np.zeros(total, dtype=np.int64)
    for node in leaves + nonleaves:
        if node.is_leaf:
            assignments[node.points] = node.index
        parents[out_index(node)] = out_index(node.parent) if node.parent is not None else out_index(node)
    return assignments, parents, len(leaves)


def obtain_questions(phone_sets: Sequence[Sequence[int]], assignments: np.ndarray, parents: np.ndarray,
                     num_leaves: int) -> list[list[int]]:
    """Kaldi ``ObtainSetsOfPhones``: each tree cluster's phones (non-leaf clusters collect their descendants';
    Kaldi does not fill the root), top-level first, then the input sets; duplicates and empty sets dropped."""
    raw: list[list[int]] = [[] for _ in parents]
    for i, clust in enumerate(assignments):
        raw[clust] += list(phone_sets[i])
    for j, parent in enumerate(parents):
        raw[j].sort()
        if parent < len(parents) - 1:
            raw[parent] += raw[j]
    out, seen = [], set()
    for s in raw[::-1] + [sorted(s) for s in phone_sets]:
        if tuple(s) not in seen:
            seen.add(tuple(s))
            if s:
                out.append(list(s))
    return out


def cluster_bottom_up(groups: Sequence[GaussStats], thresh: float, min_clust: int = 0,
                      compartmentalized: bool = False) -> tuple[float, list[np.ndarray]]:
    """Kaldi ``ClusterBottomUp`` (one group) / ``ClusterBottomUpCompartmentalized``: repeatedly merge the
    closest pair within a group (distance = objective loss of merging) while it is below ``thresh`` and
    more than ``min_clust`` clusters remain in all. Returns (objective change <= 0, per group the
    contiguous cluster number of each point, numbered in order of the surviving point)."""
    state = []
    heap: list[tuple[float, int, int, int]] = []
    for g, pts in enumerate(groups):
        cl = pts.copy()
        objf = cl.objf()
        dist = np.zeros((len(cl), len(cl)))
        for i in range(1, len(cl)):
            d = _distances(cl, objf, i, np.arange(i))
            dist[i, :i] = d
            ok = d < thresh if compartmentalized else d <= thresh  # Kaldi's initial test is <= unless compartmentalized
            heap += [(float(d[j]), g, i, j) for j in np.flatnonzero(ok)]
        state.append((cl, objf, dist, np.ones(len(cl), dtype=bool), np.arange(len(cl))))
    heapq.heapify(heap)
    nclust, change = sum(len(p) for p in groups), 0.0
    while nclust > min_clust and heap:
        d, g, i, j = heapq.heappop(heap)
        cl, objf, dist, alive, assign = state[g]
        if not (alive[i] and alive[j]) or abs(dist[i, j] - d) > 1e-5 * abs(d):
            continue  # stale queue entry
        for arr in (cl.count, cl.x, cl.x2):
            arr[i] += arr[j]
        alive[j], assign[j] = False, i
        change -= dist[i, j]
        nclust -= 1
        objf[i] = cl.take([i]).objf()[0]
        others = np.flatnonzero(alive)
        others = others[others != i]
        if len(others):
            d = _distances(cl, objf, i, others)
            hi, lo = np.maximum(others, i), np.minimum(others, i)
            dist[hi, lo] = d
            heap_items = [(float(d[k]), g, int(hi[k]), int(lo[k])) for k in np.flatnonzero(d < thresh)]
            for item in heap_items:
                heapq.heappush(heap, item)
    out = []
    for _, _, _, alive, assign in state:
        for i in range(len(assign)):  # follow merge chains to the surviving cluster
            r = i
            while assign[r] != r:
                r = assign[r]
            assign[i] = r
        number = np.cumsum(alive) - 1
        out.append(number[assign])
    return change, out


def _distances(cl: GaussStats, objf: np.ndarray, i: int, others: np.ndarray) -> np.ndarray:
    """Kaldi ``Clusterable::Distance`` of cluster ``i`` to each of ``others``: objf(i) + objf(k) - objf(i+k) >= 0."""
    merged = gauss_objf(cl.count[others] + cl.count[i], cl.x[others] + cl.x[i], cl.x2[others] + cl.x2[i],
                        cl.var_floor)
    return np.maximum(objf[i] + objf[others] - merged, 0.0)


def cluster_phones(stats: TreeStats, phone_sets: Sequence[Sequence[int]], pdf_class_list: Sequence[int] = (1,),
                   extra_questions: Sequence[Sequence[int]] = (), num_tries: int = 10) -> list[list[int]]:
    """Kaldi ``cluster-phones`` (``AutomaticallyObtainQuestions``) plus the lang's ``extra_questions``, as
    ``train_deltas.sh`` builds ``questions.int``: phone sets are clustered top-down by 2-means on their
    Gaussians pooled over ``pdf_class_list`` (default: the middle state of 3), and every cluster of the
    binary tree becomes a question. The k-means starts use Kaldi's own pseudo-random sequence."""
    sets = [sorted(int(p) for p in s) for s in phone_sets]
    flat = [p for s in sets for p in s]
    if not sets or any(not s or len(set(s)) != len(s) for s in sets) or len(set(flat)) != len(flat):
        raise BabelflowError("cluster-phones: phone sets must be non-empty, without duplicates, and disjoint")
    keep = np.isin(stats.events[:, stats.N], list(pdf_class_list))
    if keep.sum() * 10 < len(keep):
        log.warning("cluster-phones: most tree stats are not of pdf-classes %s (non-standard topology?)",
                    list(pdf_class_list))
    central = stats.events[keep, stats.P].astype(np.int64)
    set_of = np.full(max(max(flat), central.max(initial=0)) + 1, len(sets), dtype=np.int64)
    for i, s in enumerate(sets):
        set_of[s] = i
    per_set = stats.stats.take(np.flatnonzero(keep)).group_sum(set_of[central], len(sets) + 1).take(
        np.arange(len(sets)))
    for i in np.flatnonzero(per_set.count == 0):
        log.warning("cluster-phones: no stats available for phone set %s", sets[i])
    assign, parents, num_leaves = tree_cluster(per_set, len(sets), GlibcRand(), num_tries=num_tries)
    return obtain_questions(sets, assign, parents, num_leaves) + [sorted(q) for q in extra_questions]


@dataclass
class Questions:
    """Kaldi's compiled questions (``compile-questions`` → ``questions.qst``): the yes-sets per event key."""

    by_key: dict[int, list[tuple[int, ...]]]
    refine_iters: int = 0  # --num-iters-refine (Kaldi default 0: questions used as given)


def compile_questions(phone_questions: Sequence[Sequence[int]], topo: HmmTopology, context_width: int = 3,
                      num_iters_refine: int = 0) -> Questions:
    """Kaldi ``compile-questions``: the phone questions (sorted, de-duplicated) for every context position,
    and the pdf-class questions ``{0}, {0,1}, ...`` up to the largest number of pdf-classes in ``topo``."""
    qs = [tuple(sorted(int(p) for p in q)) for q in phone_questions]
    if any(len(set(q)) != len(q) for q in qs):
        raise BabelflowError("compile-questions: a question contains a phone twice")
    qs = sorted(set(qs))
    max_classes = max(topo.num_pdf_classes(p) for p in topo.phones)
    by_key = {n: qs for n in range(context_width)}
    by_key[PDF_CLASS_KEY] = [tuple(range(i + 1)) for i in range(max_classes - 1)]
    return Questions(by_key, num_iters_refine)


class TreeSplitter:
    """Kaldi ``DecisionTreeSplitter``: one leaf (or split node) of the tree grown from one stub leaf."""

    def __init__(self, leaf: int, idx: np.ndarray, ctx: SplitFinder):
        self.leaf, self.idx, self.yes, self.no = leaf, idx, None, None
        self.best, self.key, self.yes_set = ctx.best_split(idx)

    def do_split(self, ctx: SplitFinder, next_leaf: list[int]) -> None:
        if self.yes is None:  # a leaf: split it, the "no" side gets a new leaf id
            yes = np.isin(ctx.stats.events[self.idx, ctx.stats.column(self.key)], self.yes_set)
            self.yes = TreeSplitter(self.leaf, self.idx[yes], ctx)
            self.no = TreeSplitter(next_leaf[0], self.idx[~yes], ctx)
            next_leaf[0] += 1
            self.leaf, self.idx = -1, None
        else:
            (self.yes if self.yes.best >= self.no.best else self.no).do_split(ctx, next_leaf)
        self.best = max(self.yes.best, self.no.best)

    def to_map(self) -> EventMap:
        if self.yes is None:
            return ConstantEventMap(self.leaf)
        return SplitEventMap(self.key, tuple(self.yes_set), self.yes.to_map(), self.no.to_map())


class SplitFinder:
    """The question tables and stats shared by all splitters (``FindBestSplitForKey`` vectorised over questions)."""

    def __init__(self, stats: TreeStats, questions: Questions, min_count: float):
        self.stats, self.questions, self.min_count = stats, questions, min_count
        self.keys = sorted(k for k in questions.by_key)  # Kaldi asks the keys in sorted order: pdf-class first
        width = 1 + max([int(stats.events.max(initial=0))] + [max(q, default=0) for qs in questions.by_key.values()
                                                                  for q in qs])
        self.tables = {}
        for key, qs in questions.by_key.items():
            a = np.zeros((len(qs), width))
            for i, q in enumerate(qs):
                a[i, list(q)] = 1.0
            self.tables[key] = a

    def best_split(self, idx: np.ndarray) -> tuple[float, int, tuple[int, ...]]:
        """Kaldi ``FindBestSplit``: the best question over all keys (the first key wins ties)."""
        best: tuple[float, int, tuple[int, ...]] = (0.0, 0, ())
        if len(idx) <= 1:
            return best
        events, stats = self.stats.events[idx], self.stats.stats.take(idx)
        for key in self.keys:
            impr, yes_set = self._best_for_key(events[:, self.stats.column(key)].astype(np.int64), stats, key)
            if impr > best[0]:
                best = (impr, key, yes_set)
        return best

    def _best_for_key(self, vals: np.ndarray, stats: GaussStats, key: int) -> tuple[float, tuple[int, ...]]:
        """Kaldi ``FindBestSplitForKey``: every question's gain at once; the first best wins. ``min_count`` applies
        to the questions, not to Kaldi's optional refinement of the best one."""
        qs, table = self.questions.by_key[key], self.tables[key]
        if vals.min() < 0:  # the key is absent from some events (context-independent phone): not askable
            return 0.0, ()
        summed = stats.group_sum(vals, vals.max() + 1)
        impr, yes_set = 0.0, ()
        if qs:
            a = table[:, : len(summed)]
            yes = GaussStats(a @ summed.count, a @ summed.x, a @ summed.x2, summed.var_floor)
            tot = summed.total()
            no = GaussStats(tot.count - yes.count, tot.x - yes.x, tot.x2 - yes.x2, summed.var_floor)
            gain = yes.objf() + no.objf() - tot.objf()
            valid = (yes.count > 0) & (no.count > 0) & (yes.count >= self.min_count) & (no.count >= self.min_count)
            gain = np.where(valid, gain, 0.0)
            b = int(np.argmax(gain))
            if gain[b] > 0:
                impr, yes_set = float(gain[b]), qs[b]
        if self.questions.refine_iters > 0:  # Kaldi refines the best question like 2-means over the values
            assign = np.zeros(len(summed), dtype=np.int64)
            assign[[v for v in yes_set if v < len(summed)]] = 1
            impr += refine_clusters(summed, summed.group_sum(assign, 2), assign, self.questions.refine_iters)
            yes_set = tuple(int(v) for v in np.flatnonzero(assign == 1))
        return impr, tuple(yes_set)
