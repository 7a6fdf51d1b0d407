"""Decoding with an HCLG (Kaldi's latgen-faster-mapped, gmm-latgen-faster) and score.sh's LM-weight sweep.

Each utterance goes through two k2-fsa ports of Kaldi's decoders on the same scaled matrix:

* kaldi-hmm-gmm's ``LatticeFasterDecoder`` with Kaldi's defaults (acoustic scale 0.1, beam 15,
  max-active 7000, lattice beam 8) gives the best path: words, transition-id alignment and the
  graph + acoustic costs that ``lattice-best-path`` logs. It keeps its lattice to itself.
* kaldi-decoder's ``LatticeSimpleDecoder`` (same beams, no max-active) gives the raw state-level
  lattice for the sweep. score.sh rescales Kaldi's *determinized* lattice, in which each word
  sequence keeps only its alignment that is best at the decoding scale. We do the same: prune at
  the lattice beam, determinize on words in the lattice semiring (weights only), then one best path
  per (LMWT, WIP) on the small word lattice, with the penalty added per word as lattice-add-penalty
  does. Re-decoding at 1/LMWT instead would cost 33 decodes and search another space than Kaldi's.

HCLG's input labels are transition-ids, so a T x num_pdfs log-likelihood matrix is mapped to one
column per transition-id and scaled once (Kaldi's DecodableMatrixScaledMapped). GMM likelihoods
are computed in numpy for all pdfs (what DecodableAmDiagGmmScaled computes pdf by pdf), because
both decoders must read the same matrix and kaldi-decoder cannot take khg's decodable.
"""

from __future__ import annotations

import heapq
import io
import os
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BabelflowError
from ..kaldi.transition_model import TransitionModel
from .options import DecodeOptions

_D = DecodeOptions()  # the defaults live there (params.yaml decode:, the CLI flags)
KALDI_LMWTS = tuple(range(_D.min_lmwt, _D.max_lmwt + 1))  # score.sh --min-lmwt 7 --max-lmwt 17
KALDI_WIPS = tuple(str(w) for w in _D.word_ins_penalty)  # score.sh --word-ins-penalty
_DELTA = 1.0 / 1024  # fst::kDelta: residual weights closer than this make one determinized state
_ARC = np.dtype([("ilabel", "<i4"), ("olabel", "<i4"), ("g", "<f4"), ("a", "<f4"), ("next", "<i4")])
_STATE = struct.Struct("<ffq")  # final weight (LatticeWeight) and number of arcs of a VectorFst state


@dataclass(frozen=True)
class DecodeConfig:
    """nnet3-latgen-faster's defaults as nnet3/decode.sh runs them, and score.sh's sweep."""

    acoustic_scale: float = _D.acoustic_scale
    beam: float = _D.beam
    lattice_beam: float = _D.lattice_beam
    max_active: int = _D.max_active
    min_active: int = _D.min_active
    allow_partial: bool = False  # Kaldi's default: no output for an utterance that reaches no final state
    lmwts: tuple[int, ...] = KALDI_LMWTS
    wips: tuple[str, ...] = KALDI_WIPS
    max_det_states: int = 200_000  # beyond this, sweep on the pruned raw lattice (with a note)


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


@dataclass
class UttResult:
    key: str
    num_frames: int
    best: Hyp  # the decoder's best path at the decoding scale
    alignment: np.ndarray  # transition-ids, one per frame
    sweep: dict[tuple[int, str], Hyp] = field(default_factory=dict)  # (lmwt, wip) -> best path
    lattice: WordLattice | None = None
    seconds: float = 0.0


# ----------------------------------------------------------------------------- model, graph, words
def khg_transition_model(tm: TransitionModel) -> Any:
    """A khg.TransitionModel equal to ``tm``, set through its pickle state (no tree needed, unlike khg's
    constructor): the decoder wrapper wants one, and a babelflow model dir need not have a tree."""
    from ..gmm.k2 import khg

    buf = io.BytesIO()
    tm.topology.write(buf, binary=False)
    topo = khg.HmmTopology()
    topo.read(buf.getvalue().decode())
    tuple_cls = sys.modules[khg.TransitionModel.__module__].TransitionModelTuple
    n_ids = [len(tm.topology.entry_for_phone(t[0])[t[1]].transitions) for t in tm.tuples]
    first = np.concatenate([[1], 1 + np.cumsum(n_ids)]).tolist()
    id2state = [0] + np.repeat(np.arange(1, len(n_ids) + 1), n_ids).tolist()
    loop_ids = np.flatnonzero(tm.transition_id_is_self_loop())
    non_loop = np.zeros(len(n_ids) + 1, dtype=np.float32)
    non_loop[np.asarray(id2state)[loop_ids]] = np.log1p(-np.exp(tm.log_probs[loop_ids].astype(np.float64)))
    id2pdf = tm.transition_id_to_pdf()
    id2pdf[0] = 0
    ktm = khg.TransitionModel.__new__(khg.TransitionModel)
    ktm.__setstate__(([tuple_cls(*t) for t in tm.tuples], topo, [0] + first, id2state, id2pdf.tolist(),
                      tm.num_pdfs, tm.log_probs.tolist(), non_loop.tolist()))
    return ktm


def gmm_loglikes(am: Any, feats: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Kaldi DiagGmm::LogLikelihood for every pdf of an AmDiagGmm (gmm/model.py) and frame: T x num_pdfs."""
    g = am.stacked()
    w, off = g["w"], g["offsets"]
    sizes = np.diff(off)
    x = np.asarray(feats, dtype=np.float32)
    x = np.concatenate([x, x * x, np.ones((x.shape[0], 1), np.float32)], axis=1)
    out = np.empty((x.shape[0], sizes.size), dtype=np.float32)
    for s in range(0, x.shape[0], chunk):
        ll = x[s:s + chunk] @ w.T
        top = np.maximum.reduceat(ll, off[:-1], axis=1)
        ll = np.exp(ll - np.repeat(top, sizes, axis=1))
        out[s:s + chunk] = top + np.log(np.add.reduceat(ll, off[:-1], axis=1))
    return out


# ----------------------------------------------------------------------------- decoding
class Decoder:
    """One HCLG and transition model; :meth:`decode` per utterance (decoders are reused, as in Kaldi)."""

    def __init__(self, graph: Any, tm: TransitionModel, config: DecodeConfig = DecodeConfig()):
        import kaldi_decoder

        from ..gmm.k2 import khg

        self.graph, self.config, self.num_pdfs = graph, config, tm.num_pdfs  # the decoders do not own the graph
        self.tid2pdf = tm.transition_id_to_pdf()[1:].astype(np.int64)
        self._ktm = khg_transition_model(tm)
        c = config
        self._faster = khg.LatticeFasterDecoder(graph, khg.LatticeFasterDecoderConfig(
            beam=c.beam, max_active=c.max_active, min_active=c.min_active, lattice_beam=c.lattice_beam,
            determinize_lattice=False))
        simple = kaldi_decoder.LatticeSimpleDecoderConfig()
        simple.beam, simple.lattice_beam = c.beam, c.lattice_beam
        self._simple = kaldi_decoder.LatticeSimpleDecoder(graph, simple)

    def decode(self, key: str, loglikes: np.ndarray) -> UttResult | None:
        """Decode one T x num_pdfs log-likelihood matrix; None when no final state is reached (and
        ``allow_partial`` is off), as latgen-faster-mapped then writes nothing."""
        import kaldi_decoder

        from ..gmm.k2 import khg

        t0, c = time.perf_counter(), self.config
        if loglikes.ndim != 2 or loglikes.shape[1] != self.num_pdfs or loglikes.shape[0] == 0:
            raise BabelflowError(f"utterance '{key}': log-likelihoods of shape {loglikes.shape}, "
                                 f"the model has {self.num_pdfs} pdfs")
        m = np.ascontiguousarray(loglikes[:, self.tid2pdf] * np.float32(c.acoustic_scale), dtype=np.float32)
        ok, ali, words, loglike = khg.decode_utterance_lattice_faster(
            self._faster, khg.DecodableCtc(m), self._ktm, key, c.allow_partial)
        if not ok or len(ali) != m.shape[0]:
            return None
        ali = np.asarray(ali, dtype=np.int32)
        ac = -float(m[np.arange(m.shape[0]), ali - 1].sum(dtype=np.float64))
        res = UttResult(key, m.shape[0], Hyp(list(words), -loglike - ac, ac), ali)
        if c.lmwts and c.wips:
            self._simple.decode(kaldi_decoder.DecodableCtc(m))
            done, raw = self._simple.get_raw_lattice()
            if done:
                res.lattice = word_lattice(raw, c.acoustic_scale, c.lattice_beam, c.max_det_states)
                res.sweep = best_paths(res.lattice, c.lmwts, c.wips)
        res.seconds = time.perf_counter() - t0
        return res


# ----------------------------------------------------------------------------- lattices
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
    finals = np.empty((nstates, 2), dtype=np.float32)
    counts = np.zeros(nstates + 1, dtype=np.int64)
    blocks = []
    for s in range(nstates):
        f1, f2, n = _STATE.unpack_from(data, pos)
        finals[s] = f1, f2
        counts[s + 1] = n
        blocks.append(data[pos + 16:pos + 16 + 20 * n])
        pos += 16 + 20 * n
    return int(start), finals, np.cumsum(counts), np.frombuffer(b"".join(blocks), dtype=_ARC)


def _topo_order(offsets: Sequence[int], nxt: Sequence[int]) -> list[int]:
    """Kahn's order of an acyclic FST given as arc offsets per state and arc targets."""
    n = len(offsets) - 1
    indeg = [0] * n
    for t in nxt:
        indeg[t] += 1
    stack = [s for s in range(n) if indeg[s] == 0]
    order = []
    while stack:
        s = stack.pop()
        order.append(s)
        for i in range(offsets[s], offsets[s + 1]):
            t = nxt[i]
            indeg[t] -= 1
            if indeg[t] == 0:
                stack.append(t)
    if len(order) != n:
        raise BabelflowError("lattice has a cycle")
    return order


def word_lattice(lat: Any, acoustic_scale: float, beam: float, max_states: int = 200_000) -> WordLattice:
    """Raw lattice (acoustics at ``acoustic_scale``) -> pruned at ``beam`` -> determinized on words, with
    acoustic costs unscaled as latgen writes them."""
    start, finals, off, arcs = lattice_arrays(lat)
    off, nxt, word = off.tolist(), arcs["next"].tolist(), arcs["olabel"].tolist()
    cost = (arcs["g"].astype(np.float64) + arcs["a"]).tolist()
    fcost = finals.astype(np.float64).sum(axis=1).tolist()
    order = _topo_order(off, nxt)
    inf = float("inf")
    alpha, beta = [inf] * len(fcost), fcost[:]
    alpha[start] = 0.0
    for s in order:
        for i in range(off[s], off[s + 1]):
            if alpha[s] + cost[i] < alpha[nxt[i]]:
                alpha[nxt[i]] = alpha[s] + cost[i]
    for s in reversed(order):
        for i in range(off[s], off[s + 1]):
            if cost[i] + beta[nxt[i]] < beta[s]:
                beta[s] = cost[i] + beta[nxt[i]]
    limit = beta[start] + beam + 1e-4
    rank = [0] * len(order)
    for r, s in enumerate(order):
        rank[s] = r
    g = arcs["g"].tolist()
    eps: list[list] = [[] for _ in order]  # (next, total cost, graph cost)
    wrd: list[list] = [[] for _ in order]
    for s in order:
        for i in range(off[s], off[s + 1]):
            if alpha[s] + cost[i] + beta[nxt[i]] > limit:
                continue
            if word[i]:
                wrd[s].append((word[i], nxt[i], cost[i], g[i], cost[i] + beta[nxt[i]]))
            else:
                eps[s].append((nxt[i], cost[i], g[i], cost[i] + beta[nxt[i]]))
    fin = [(fcost[s], float(f[0])) if alpha[s] + fcost[s] <= limit else None for s, f in enumerate(finals)]
    try:
        det = _determinize(start, rank, eps, wrd, fin, limit, max_states)
    except OverflowError:
        det = _as_word_lattice(start, eps, wrd, fin)
    inv = 1.0 / acoustic_scale
    det.arcs = [[(w, t, g, a * inv) for w, t, g, a in out] for out in det.arcs]
    det.finals = [None if f is None else (f[0], f[1] * inv) for f in det.finals]
    return det


def _determinize(start: int, rank: list[int], eps: list[list], wrd: list[list], fin: list, limit: float,
                 max_states: int) -> WordLattice:
    """Pruned weighted subset construction in the lattice semiring, as lattice-determinize-pruned: a path
    semiring, so each word sequence keeps its best path; members are (raw state, residual weight). A member
    whose best completion (forward cost + residual + ``beta``) exceeds ``limit`` is dropped, as is a final
    weight beyond it. Subsets are expanded by their lowest topological rank, which is a topological order of
    the result, so a subset's forward cost is final when it is expanded. Weights are (total, graph) pairs
    here, whose tuple order is Kaldi's order of lattice weights."""
    subsets: list[dict[int, tuple[float, float]]] = [{start: (0.0, 0.0)}]
    fwd, ids = [0.0], {((start, 0, 0),): 0}
    queue = [(rank[start], 0)]
    arcs_of: dict[int, list] = {}
    finals: list[tuple[float, float] | None] = [None]
    push, pop = heapq.heappush, heapq.heappop
    while queue:
        i = heapq.heappop(queue)[1]
        if len(subsets) > max_states:
            raise OverflowError
        f0, best = fwd[i], dict(subsets[i])
        heap = [(rank[s], s) for s in best]
        heapq.heapify(heap)
        by_word: dict[int, dict[int, tuple[float, float]]] = {}
        while heap:
            s = pop(heap)[1]
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
                    push(heap, (rank[t], t))
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
                heapq.heappush(queue, (min(rank[t] for t in sub), j))
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
    for s in _topo_order(off, [t for _, t, _, _ in flat]):
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
