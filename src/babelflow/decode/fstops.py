"""FST operations Kaldi has and kaldifst 1.7 lacks: ``fstrmsymbols``, ``fstpushspecial``, ``fstrmepslocal``.

mkgraph.sh needs all three for its graphs to equal Kaldi's (without them LG's weights differ and
HCLGa keeps states Kaldi removes); arpa2fst's G uses ``fstrmepslocal`` too. They work on the FST
as numpy arrays (``decode.fstio``), so no per-arc Python object crosses the binding.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from .fstio import FstArrays, arrays_to_fst, fst_to_arrays

log = logging.getLogger("babelflow")
_INF = math.inf


def _k2():
    from ..gmm.k2 import kaldifst, khg  # import order: see gmm/k2.py

    return khg, kaldifst


def rmsymbols(fst, labels) -> object:
    """``fstrmsymbols``: the input labels in ``labels`` become epsilon (disambiguation transition-ids)."""
    a = fst_to_arrays(fst)
    ilabel = np.where(np.isin(a.ilabel, np.asarray(list(labels), dtype=np.int32)), 0, a.ilabel).astype(np.int32)
    return arrays_to_fst(a.replace(ilabel=ilabel))


def push_special(fst, delta: float = 1.0 / 1024) -> object:
    """``fstpushspecial`` (Kaldi fstext/push-special.cc): reweight with the top eigenvector of the arc-probability
    matrix (final weights loop back to the start), found by the power method, so that every state's outgoing
    probabilities sum to the same value; this keeps LG as close to stochastic as it can be made."""
    from scipy import sparse

    a = fst_to_arrays(fst)
    n = a.num_states
    if n == 0:
        return arrays_to_fst(a)
    fin = np.flatnonzero(np.isfinite(a.final))
    rows = np.concatenate([a.src, fin])
    cols = np.concatenate([a.dst, np.full(fin.size, a.start)])
    probs = np.exp(-np.concatenate([a.weight, a.final[fin]]).astype(np.float64))
    m = sparse.csr_matrix((probs, (rows, cols)), shape=(n, n))  # duplicates are summed, as Kaldi's pred_ lists
    occ = np.full(n, 1.0 / math.sqrt(n))
    with np.errstate(divide="ignore", invalid="ignore"):
        for it in range(200):
            if it % 5 == 4:
                sums = (m @ occ) / occ
                if math.log(sums.max() / sums.min()) < delta:
                    break
            new = 0.1 * occ + m @ occ  # the power method on M + 0.1 I (Kaldi's guard against periodic FSTs)
            occ = new / np.sqrt(np.dot(new, new))
        else:
            log.warning("push-special: did not converge in 200 iterations")
        logocc = np.log(occ)
    weight = (a.weight.astype(np.float64) + logocc[a.src] - logocc[a.dst]).astype(np.float32)
    final = np.where(np.isfinite(a.final), a.final + logocc - logocc[a.start], _INF).astype(np.float32)
    return arrays_to_fst(a.replace(weight=weight, final=final))


def remove_eps_local(fst, stochastic_in_log: bool = True) -> object:
    """``fstrmepslocal`` (Kaldi fstext/remove-eps-local-inl.h): merge an arc with the arcs of the state it enters
    where that cannot grow the FST (the state has one arc in, or one arc out) and the labels allow (at most one
    non-epsilon label per side). Same visiting order as Kaldi's, so the result has the same structure.
    ``stochastic_in_log`` (fstrmepslocal's default; arpa2fst uses the tropical form) totals the weights kept
    and removed at a state in the log semiring when the remaining arcs are reweighted."""
    _, kaldifst = _k2()
    a = fst_to_arrays(fst)
    n = a.num_states
    if n == 0:
        return arrays_to_fst(a)
    dead = n  # Kaldi's non_coacc_state_: an arc pointing here is deleted
    final = [float(x) for x in a.final] + [_INF]
    arcs: list[list[tuple[int, int, float, int]]] = [[] for _ in range(n + 1)]
    for s, i, o, w, d in zip(a.src.tolist(), a.ilabel.tolist(), a.olabel.tolist(), a.weight.tolist(), a.dst.tolist()):
        arcs[s].append((i, o, w, d))
    nin, nout = [0] * (n + 1), [0] * (n + 1)
    nin[a.start] += 1
    for s in range(n):
        nout[s] += len(arcs[s]) + (final[s] != _INF)
        for arc in arcs[s]:
            nin[arc[3]] += 1

    def plus(x: float, y: float) -> float:
        if not stochastic_in_log or x == _INF or y == _INF:
            return min(x, y)
        return min(x, y) - math.log1p(math.exp(-abs(x - y)))

    def combine(x: tuple, y: tuple) -> tuple | None:
        if (x[0] and y[0]) or (x[1] and y[1]):
            return None
        return (x[0] or y[0], x[1] or y[1], x[2] + y[2], y[3])

    def kill(s: int, pos: int) -> None:
        arc = arcs[s][pos]
        nout[s] -= 1
        nin[arc[3]] -= 1
        arcs[s][pos] = arc[:3] + (dead,)

    def pattern1(s: int, pos: int, arc: tuple) -> None:  # next state: one arc in, several out
        t, removed, kept, add = arc[3], _INF, _INF, []
        for k, nx in enumerate(arcs[t]):
            if nx[3] == dead:
                continue
            c = combine(arc, nx)
            if c is None:
                kept = plus(kept, nx[2])
                continue
            removed = plus(removed, nx[2])
            kill(t, k)
            add.append(c)
        if final[t] != _INF:
            if arc[0] == 0 and arc[1] == 0:
                removed = plus(removed, final[t])
                nout[s] += final[s] == _INF
                final[s] = min(final[s], arc[2] + final[t])
                nout[t] -= 1
                final[t] = _INF
            else:
                kept = plus(kept, final[t])
        if removed != _INF:
            if kept == _INF:
                kill(s, pos)
            else:  # Kaldi's Reweight: keep the next state's remaining arcs stochastic
                r = kept - plus(removed, kept)
                arcs[s][pos] = (arc[0], arc[1], arc[2] + r, t)
                arcs[t] = [x if x[3] == dead else (x[0], x[1], x[2] - r, x[3]) for x in arcs[t]]
                if final[t] != _INF:
                    final[t] -= r
        for c in add:
            nout[s] += 1
            nin[c[3]] += 1
            arcs[s].append(c)

    def pattern2(s: int, pos: int, arc: tuple) -> None:  # next state: one arc out (or only a final weight)
        t = arc[3]
        can_delete_next, delete_arc = nin[t] == 1, False
        if final[t] != _INF:
            if arc[0] == 0 and arc[1] == 0:
                nout[s] += final[s] == _INF
                final[s] = min(final[s], arc[2] + final[t])
                delete_arc = True
                if can_delete_next:
                    nout[t] -= 1
                    final[t] = _INF
        else:
            k = next(k for k, x in enumerate(arcs[t]) if x[3] != dead)
            c = combine(arc, arcs[t][k])
            if c is not None:
                delete_arc = True
                if can_delete_next:
                    kill(t, k)
                nout[s] += 1
                nin[c[3]] += 1
                arcs[s].append(c)
        if delete_arc:
            kill(s, pos)

    for s in range(n + 1):
        pos = 0
        while pos < len(arcs[s]):
            arc = arcs[s][pos]
            t = arc[3]
            if t != dead and t != s:
                if nin[t] == 1 and nout[t] > 1:
                    pattern1(s, pos, arc)
                elif nout[t] == 1:
                    pattern2(s, pos, arc)
            pos += 1
    kept_arcs = [(s, *arc) for s in range(n) for arc in arcs[s] if arc[3] != dead]
    cols = list(zip(*kept_arcs)) if kept_arcs else [[]] * 5
    out = arrays_to_fst(FstArrays(a.start, np.array(final[:n], dtype=np.float32),
                                  *(np.array(c, dtype=np.float32 if j == 3 else np.int32) for j, c in enumerate(cols))))
    kaldifst.connect(out)
    return out


# ----------------------------------------------------------------------------- inputs
