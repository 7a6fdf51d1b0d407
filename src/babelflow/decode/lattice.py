"""Lattices of a decode: the raw state-level lattice read into arrays, pruned and determinized
on words (what score.sh rescales), and one best path per (LMWT, WIP) of the result.

A raw lattice as Kaldi's decoders write it numbers its states frame by frame; an emitting arc
(input label: a transition-id) goes to the next frame, an epsilon arc to a state of the same frame.
Forward and backward costs are then computed a frame at a time, the emitting arcs of a frame in
one numpy call, the few epsilon arcs in their order; a lattice laid out otherwise (checked, not
assumed), or too sparse for that to pay, gets the same costs from a plain topological pass.
"""

from __future__ import annotations

import heapq
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BabelflowError

_DELTA = 1.0 / 1024  # fst::kDelta: residual weights closer than this make one determinized state
_ARC = np.dtype([("ilabel", "<i4"), ("olabel", "<i4"), ("g", "<f4"), ("a", "<f4"), ("next", "<i4")])
#: frame-wise costs from this many arcs per frame on: below it, the numpy calls of a frame cost more than the
#: plain pass's per-arc Python (GMM lattices of the demo: ~6 arcs per frame; a weak network's: 70-120)
ARCS_PER_FRAME = 20
_NARCS = struct.Struct("<q")  # a VectorFst state: final weight (2 x float32), number of arcs, then its arcs


@dataclass
class Hyp:
    """A path's words and costs as lattice-best-path logs them (graph cost includes the WIP)."""

    words: list[int]
    graph_cost: float
    acoustic_cost: float


@dataclass
class WordLattice:
    """A determinized word lattice: per state its arcs (word, next state, graph cost, unscaled acoustic cost)
    and final weight (or None); state 0 is the start. Kaldi's CompactLattice without alignments."""

    arcs: list[list[tuple[int, int, float, float]]]
    finals: list[tuple[float, float] | None]
    determinized: bool = True


def lattice_arrays(lat: Any) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(start, finals (n x 2, inf when not final), arc offsets per state (n+1), arcs) of a kaldifst Lattice,
    read back from its OpenFst binary form: the Python arc iterator costs about 3 us an arc."""
    fd, path = tempfile.mkstemp(suffix=".fst", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.close(fd)
    try:
        lat.write(path)
        data = Path(path).read_bytes()
    finally:
        os.unlink(path)
    pos = 4
    for _ in range(2):  # fst type, arc type
        pos += 4 + struct.unpack_from("<i", data, pos)[0]
    _, flags, _, start, nstates, _ = struct.unpack_from("<iiQqqq", data, pos)
    if struct.unpack_from("<i", data, 0)[0] != 2125659606 or flags & 7:
        raise BabelflowError("raw lattice: unexpected OpenFst binary layout")
    pos += 40
    heads, counts, unpack = [], [], _NARCS.unpack_from
    for _ in range(nstates):  # only the sizes are read one by one; the rest is gathered below
        n = unpack(data, pos + 8)[0]
        heads.append(pos)
        counts.append(n)
        pos += 16 + 20 * n
    buf = np.frombuffer(data, dtype=np.uint8)
    head, count = np.asarray(heads, dtype=np.int64), np.asarray(counts, dtype=np.int64)
    finals = buf[head[:, None] + np.arange(8)].copy().view("<f4")
    offsets = np.concatenate([[0], np.cumsum(count)])
    first = np.repeat(head + 16 - 20 * offsets[:-1], count) + 20 * np.arange(offsets[-1])
    arcs = np.empty(len(first), dtype=_ARC)
    raw = arcs.view(np.uint8).reshape(-1, 20)
    for a in range(0, len(first), 1 << 16):  # in chunks: the byte index is 160 B an arc
        raw[a:a + (1 << 16)] = buf[first[a:a + (1 << 16), None] + np.arange(20)]
    return int(start), finals.reshape(nstates, 2), offsets, arcs


def _layout(src: np.ndarray, nxt: np.ndarray, emitting: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(frame, epsilon depth) of each state when the lattice has a decoder's layout (see the module's docstring),
    else None. The first state of frame k + 1 is the lowest target of an emitting arc leaving a state >= frame
    k's first, or lower still, the lowest target of epsilon arcs leaving states >= that one. Sorted by (frame,
    depth) the states are in topological order."""
    es, et, ps, pt = src[emitting], nxt[emitting], src[~emitting], nxt[~emitting]
    if not len(es):
        return None
    lowest = np.minimum.accumulate(et[::-1])[::-1]  # over the arcs leaving states >= each arc's source
    lowest_eps = np.minimum.accumulate(pt[::-1])[::-1] if len(pt) else pt
    bounds = [0]
    while (i := int(np.searchsorted(es, bounds[-1]))) < len(es):
        b = int(lowest[i])
        while (j := int(np.searchsorted(ps, b))) < len(ps) and lowest_eps[j] < b:
            b = int(lowest_eps[j])
        if b <= bounds[-1]:
            return None
        bounds.append(b)
    frame = np.searchsorted(np.asarray(bounds), np.arange(n), side="right") - 1
    if not (frame[nxt] == frame[src] + emitting).all():
        return None
    depth = _epsilon_depth(n, ps.tolist(), pt.tolist())
    return None if depth is None else (frame, depth)


def _epsilon_depth(n: int, src: list[int], nxt: list[int]) -> np.ndarray | None:
    """Per state, the most epsilon arcs on a path of them that ends there (Kaldi usually links a frame's tokens
    from the newer to the older, but not always); None on a cycle. Only the states on epsilon arcs are visited."""
    depth = np.zeros(n, dtype=np.int64)
    out: dict[int, list[int]] = {}
    indeg: dict[int, int] = {}
    for s, t in zip(src, nxt):
        out.setdefault(s, []).append(t)
        indeg[t] = indeg.get(t, 0) + 1
    stack, d, done = [s for s in out if s not in indeg], {}, 0
    while stack:
        s = stack.pop()
        done += 1
        for t in out.get(s, ()):
            d[t] = max(d.get(t, 0), d.get(s, 0) + 1)
            indeg[t] -= 1
            if not indeg[t]:
                stack.append(t)
    if done != len(out.keys() | indeg.keys()):
        return None
    if d:
        depth[list(d)] = list(d.values())
    return depth


def topological_order(off: Sequence[int], nxt: Sequence[int]) -> list[int]:
    """Kahn's order of an acyclic FST given as arc offsets per state and arc targets."""
    n = len(off) - 1
    indeg = [0] * n
    for t in nxt:
        indeg[t] += 1
    stack = [s for s in range(n) if indeg[s] == 0]
    order = []
    while stack:
        s = stack.pop()
        order.append(s)
        for i in range(off[s], off[s + 1]):
            t = nxt[i]
            indeg[t] -= 1
            if indeg[t] == 0:
                stack.append(t)
    if len(order) != n:
        raise BabelflowError("lattice has a cycle")
    return order


def _distances(start: int, src: np.ndarray, nxt: np.ndarray, cost: np.ndarray, fcost: np.ndarray,
               frame: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta): best cost from the start to each state, and from each state to the end, a frame at a time.
    Within a frame the epsilon arcs are relaxed one by one in topological order (by their source's epsilon
    depth), the emitting arcs to the next frame at once."""
    inf, n = np.inf, len(fcost)
    emitting = frame[nxt] != frame[src]
    e_src, e_nxt, e_cost = src[emitting], nxt[emitting], cost[emitting]
    e_cut = np.searchsorted(frame[e_src], np.arange(frame[-1] + 2))
    eps = [[] for _ in range(frame[-1] + 1)]
    p_src = src[~emitting]
    for d, s, t, c, f in zip(depth[p_src].tolist(), p_src.tolist(), nxt[~emitting].tolist(),
                             cost[~emitting].tolist(), frame[p_src].tolist()):
        eps[f].append((d, s, t, c))
    for arcs in eps:
        arcs.sort()
    alpha = np.full(n, inf)
    alpha[start] = 0.0
    for f, arcs in enumerate(eps):
        for _, s, t, c in arcs:
            if alpha[s] + c < alpha[t]:
                alpha[t] = alpha[s] + c
        a, b = e_cut[f], e_cut[f + 1]
        np.minimum.at(alpha, e_nxt[a:b], alpha[e_src[a:b]] + e_cost[a:b])
    beta = fcost.copy()
    for f in range(len(eps) - 1, -1, -1):
        a, b = e_cut[f], e_cut[f + 1]
        np.minimum.at(beta, e_src[a:b], e_cost[a:b] + beta[e_nxt[a:b]])
        for _, s, t, c in reversed(eps[f]):
            if c + beta[t] < beta[s]:
                beta[s] = c + beta[t]
    return alpha, beta


def _distances_by_order(start: int, off: np.ndarray, nxt: np.ndarray, cost: np.ndarray, fcost: np.ndarray,
                        order: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta) for any acyclic lattice, state by state in ``order``."""
    off_l, nxt_l, cost_l = off.tolist(), nxt.tolist(), cost.tolist()
    inf = float("inf")
    alpha, beta = [inf] * len(fcost), fcost.tolist()
    alpha[start] = 0.0
    for s in order:
        for i in range(off_l[s], off_l[s + 1]):
            if alpha[s] + cost_l[i] < alpha[nxt_l[i]]:
                alpha[nxt_l[i]] = alpha[s] + cost_l[i]
    for s in reversed(order):
        for i in range(off_l[s], off_l[s + 1]):
            if cost_l[i] + beta[nxt_l[i]] < beta[s]:
                beta[s] = cost_l[i] + beta[nxt_l[i]]
    return np.asarray(alpha), np.asarray(beta)


def word_lattice(lat: Any, acoustic_scale: float, beam: float, max_states: int = 200_000) -> WordLattice:
    """Raw lattice (acoustics at ``acoustic_scale``) -> pruned at ``beam`` -> determinized on words, with
    acoustic costs unscaled as latgen writes them."""
    start, finals, off, arcs = lattice_arrays(lat)
    n = len(off) - 1
    src = np.repeat(np.arange(n), np.diff(off))
    nxt = arcs["next"].astype(np.int64)
    cost = arcs["g"].astype(np.float64) + arcs["a"]
    fcost = finals.astype(np.float64).sum(axis=1)
    layout = _layout(src, nxt, arcs["ilabel"] != 0, n)
    if layout is not None and len(arcs) >= ARCS_PER_FRAME * (layout[0][-1] + 1):
        frame, depth = layout
        alpha, beta = _distances(start, src, nxt, cost, fcost, frame, depth)
        order = np.lexsort((depth, frame))  # frame by frame, each by epsilon depth
    else:
        order = np.asarray(topological_order(off.tolist(), nxt.tolist()), dtype=np.int64)
        alpha, beta = _distances_by_order(start, off, nxt, cost, fcost, order.tolist())
    limit = float(beta[start]) + beam + 1e-4
    # states renumbered in topological order: a state's number is its rank, which _determinize expands by
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    kept = np.flatnonzero(alpha[src] + cost + beta[nxt] <= limit)
    kept = kept[np.argsort(rank[src[kept]], kind="stable")]  # the kept arcs, by their source's rank
    k_src, k_nxt, k_word = rank[src[kept]], rank[nxt[kept]], arcs["olabel"][kept]
    k_cost, k_g = cost[kept], arcs["g"][kept]
    k_cb = k_cost + beta[nxt[kept]]
    eps = _per_state(n, k_src, k_word == 0, k_nxt, k_cost, k_g, k_cb)
    wrd = _per_state(n, k_src, k_word != 0, k_word, k_nxt, k_cost, k_g, k_cb)
    final_ok = (alpha + fcost <= limit)[order].tolist()
    fin = [(fc, f0) if ok else None for ok, fc, f0 in zip(final_ok, fcost[order].tolist(),
                                                           finals[order, 0].astype(np.float64).tolist())]
    try:
        det = _determinize(int(rank[start]), eps, wrd, fin, limit, max_states)
    except OverflowError:
        det = _as_word_lattice(int(rank[start]), eps, wrd, fin)
    inv = 1.0 / acoustic_scale
    det.arcs = [[(w, t, g, a * inv) for w, t, g, a in out] for out in det.arcs]
    det.finals = [None if f is None else (f[0], f[1] * inv) for f in det.finals]
    return det


def _per_state(n: int, src: np.ndarray, mask: np.ndarray, *columns: np.ndarray) -> list[list[tuple]]:
    """Per state (``src``, sorted), the tuples of ``columns`` of its arcs where ``mask``."""
    rows = list(zip(*(c[mask].tolist() for c in columns)))
    cut = np.searchsorted(src[mask], np.arange(n + 1)).tolist()
    return [rows[a:b] for a, b in zip(cut[:-1], cut[1:])]


def _determinize(start: int, eps: list[list], wrd: list[list], fin: list, limit: float,
                 max_states: int) -> WordLattice:
    """Pruned weighted subset construction in the lattice semiring, as lattice-determinize-pruned: a path
    semiring, so each word sequence keeps its best path; members are (raw state, residual weight). A member
    whose best completion (forward cost + residual + ``beta``) exceeds ``limit`` is dropped, as is a final
    weight beyond it. States are numbered in topological order, and subsets are expanded by their lowest
    member, which is a topological order of the result, so a subset's forward cost is final when it is
    expanded. Weights are (total, graph) pairs here, whose tuple order is Kaldi's order of lattice weights."""
    subsets: list[dict[int, tuple[float, float]]] = [{start: (0.0, 0.0)}]
    fwd, ids = [0.0], {((start, 0, 0),): 0}
    queue = [(start, 0)]
    arcs_of: dict[int, list] = {}
    finals: list[tuple[float, float] | None] = [None]
    push, pop = heapq.heappush, heapq.heappop
    while queue:
        i = pop(queue)[1]
        if len(subsets) > max_states:
            raise OverflowError
        f0, best = fwd[i], dict(subsets[i])
        heap = list(best)
        heapq.heapify(heap)
        by_word: dict[int, dict[int, tuple[float, float]]] = {}
        while heap:
            s = pop(heap)
            c0, g0 = best[s]
            room = limit - f0 - c0  # what a completion from s may cost
            if fin[s] is not None and fin[s][0] <= room:
                cand = (c0 + fin[s][0], g0 + fin[s][1])
                if finals[i] is None or cand < finals[i]:
                    finals[i] = cand
            for t, c, g, cb in eps[s]:
                if cb > room:
                    continue
                cand = (c0 + c, g0 + g)
                old = best.get(t)
                if old is None:
                    push(heap, t)
                    best[t] = cand
                elif cand < old:
                    best[t] = cand
            for w, t, c, g, cb in wrd[s]:
                if cb > room:
                    continue
                cand = (c0 + c, g0 + g)
                d = by_word.setdefault(w, {})
                if t not in d or cand < d[t]:
                    d[t] = cand
        arcs = arcs_of.setdefault(i, [])
        for w in sorted(by_word):
            d = by_word[w]
            mc, mg = min(d.values())
            sub = {t: (c - mc, g - mg) for t, (c, g) in d.items()}
            key = tuple(sorted((t, round(c / _DELTA), round(g / _DELTA)) for t, (c, g) in sub.items()))
            j = ids.get(key)
            if j is None:
                j = ids[key] = len(subsets)
                subsets.append(sub)
                fwd.append(f0 + mc)
                finals.append(None)
                push(queue, (min(sub), j))
            else:
                fwd[j] = min(fwd[j], f0 + mc)
            arcs.append((w, j, mg, mc - mg))
    return WordLattice([arcs_of.get(i, []) for i in range(len(subsets))],
                       [None if f is None else (f[1], f[0] - f[1]) for f in finals])


def _as_word_lattice(start: int, eps: list[list], wrd: list[list], fin: list) -> WordLattice:
    """The pruned raw lattice as is (epsilon arcs as word 0), renumbered to start at 0: the fallback when
    determinization grows too large; its best paths may pick another alignment than Kaldi's."""
    n = len(fin)
    perm = [start] + [s for s in range(n) if s != start]
    new = {s: i for i, s in enumerate(perm)}
    arcs = [[(0, new[t], g, c - g) for t, c, g, _ in eps[s]] + [(w, new[t], g, c - g) for w, t, c, g, _ in wrd[s]]
            for s in perm]
    return WordLattice(arcs, [None if fin[s] is None else (fin[s][1], fin[s][0] - fin[s][1]) for s in perm],
                       determinized=False)


def best_paths(lat: WordLattice, lmwts: Sequence[int], wips: Sequence[str]) -> dict[tuple[int, str], Hyp]:
    """lattice-scale --inv-acoustic-scale=LMWT | lattice-add-penalty --word-ins-penalty=WIP | lattice-best-path,
    for every (LMWT, WIP) at once: a forward pass over the (acyclic) word lattice with one cost per pair."""
    combos = [(lm, wip) for wip in wips for lm in lmwts]
    if not lat.arcs or not combos:
        return {}
    k = np.array([1.0 / lm for lm, _ in combos])
    p = np.array([float(wip) for _, wip in combos])
    n, nc = len(lat.arcs), len(combos)
    off = np.concatenate([[0], np.cumsum([len(a) for a in lat.arcs])]).tolist()
    flat = [arc for arcs in lat.arcs for arc in arcs]
    alpha = np.full((n, nc), np.inf)
    alpha[0] = 0.0
    back = np.full((n, nc), -1, dtype=np.int64)  # best incoming arc (flat index) per pair
    for s in topological_order(off, [t for _, t, _, _ in flat]):
        for i in range(off[s], off[s + 1]):
            w, t, g, a = flat[i]
            cand = alpha[s] + g + a * k + (p if w else 0.0)
            better = cand < alpha[t]
            alpha[t][better] = cand[better]
            back[t][better] = i
    src = np.repeat(np.arange(n), np.diff(off))
    fin = np.array([(np.inf, 0.0) if f is None else f for f in lat.finals]).reshape(n, 2)
    total = alpha + fin[:, :1] + fin[:, 1:] * k
    out = {}
    for c, combo in enumerate(combos):
        s = int(np.argmin(total[:, c]))
        if not np.isfinite(total[s, c]):
            continue
        words, g_sum, a_sum = [], float(fin[s, 0]), float(fin[s, 1])
        while back[s, c] >= 0:
            w, _, g, a = flat[back[s, c]]
            if w:
                words.append(w)
            g_sum, a_sum = g_sum + g + (float(p[c]) if w else 0.0), a_sum + a
            s = int(src[back[s, c]])
        out[combo] = Hyp(words[::-1], g_sum, float(a_sum * k[c]))
    return out
