"""Kaldi's clustering of diagonal-Gaussian statistics (``tree/clusterable-classes.cc``, ``tree/cluster-utils.cc``):
the objective, 2-means with Kaldi's pseudo-random starts, top-down tree clustering and bottom-up merging, which
``cluster-phones`` (:mod:`.questions`) and ``build-tree`` (:mod:`.tree_split`, :mod:`.tree_build`) are made of.

kaldi-hmm-gmm binds ``GaussClusterable`` but none of the clustering algorithms, so they are
reimplemented here step for step: same objective, same visiting order, same tie-breaking
where Kaldi's is deterministic. ``cluster-phones`` even draws the same pseudo-random
k-means initialisations, because Kaldi's ``Rand()`` is glibc ``rand()`` with its default
seed 1, which :class:`GlibcRand` reproduces. Arithmetic is float64 throughout, where Kaldi
keeps objective values in float32, so exact ties may break differently.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["GaussStats", "gauss_objf", "GlibcRand", "refine_clusters", "cluster_kmeans", "tree_cluster",
           "cluster_bottom_up"]

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

