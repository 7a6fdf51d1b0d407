"""Decoding graphs as Kaldi's ``utils/mkgraph.sh`` builds them, without Kaldi.

The pipeline is mkgraph's, step for step, so that graphs are interchangeable with Kaldi's
(same words, costs and transition-ids; state numbering may differ)::

    LG    = fstpushspecial(fstminimizeencoded(fstdeterminizestar --use-log(L_disambig o G)))
    CLG   = fstcomposecontext(N, P, disambig phones, LG), ilabel-sorted
    Ha    = make-h-transducer(ilabels, tree, model, transition_scale)
    HCLGa = fstminimizeencoded(fstrmepslocal(fstrmsymbols(disambig tids, fstdeterminizestar --use-log(Ha o CLG))))
    HCLG  = add-self-loops(self_loop_scale, reorder=true)

kaldifst / kaldi-hmm-gmm bind every step except three Kaldi FST tools, written here:
``fstpushspecial`` (:func:`push_special`), ``fstrmsymbols`` (:func:`rmsymbols`) and
``fstrmepslocal`` (:func:`remove_eps_local`, also arpa2fst's redundant-state removal).
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import BabelflowError
from ..io import atomic_dir, write_info, write_text
from .fstio import FstArrays, arrays_to_fst, fst_to_arrays, read_fst, write_fst

__all__ = ["GraphStages", "ModelFiles", "build_graph", "mkgraph", "push_special", "rmsymbols", "remove_eps_local",
           "load_model", "load_grammar"]

log = logging.getLogger("babelflow")
_INF = math.inf
_FST_MAGIC = b"\xd6\xfd\xb2\x7e"
_COPIED_PHONES = ("word_boundary.txt", "word_boundary.int", "align_lexicon.txt", "align_lexicon.int",
                  "optional_silence.txt", "optional_silence.int", "optional_silence.csl", "disambig.txt",
                  "disambig.int", "silence.csl")  # what mkgraph.sh copies into the graph's phones/


def _k2():
    from ..gmm.k2 import kaldifst, khg  # import order: see gmm/k2.py

    return khg, kaldifst


# ----------------------------------------------------------------------------- FST tools Kaldi has, kaldifst lacks
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
    khg, kaldifst = _k2()
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
class ModelFiles(NamedTuple):
    """What mkgraph reads from a model dir: the TransitionModel (of final.mdl or trans.mdl) and the tree."""

    transition_model: object  # babelflow.kaldi.transition_model.TransitionModel
    tree: object  # babelflow.kaldi.tree.ContextDependency
    model_path: Path


def load_model(model_dir: str | os.PathLike) -> ModelFiles:
    """A Kaldi model dir (``final.mdl`` + ``tree``: GMM dir, exp/kaldi/<task>) or a babelflow task model dir
    (``trans.mdl`` + ``tree``); the .mdl may be any Kaldi model (GMM or nnet3): only its TransitionModel is read."""
    from ..kaldi.transition_model import read_transition_model
    from ..kaldi.tree import read_tree

    d = Path(model_dir)
    mdl = next((d / f for f in ("final.mdl", "trans.mdl") if (d / f).is_file()), None)
    if mdl is None:
        raise BabelflowError(f"{d}: no final.mdl or trans.mdl (not a model dir?)")
    if not (d / "tree").is_file():
        raise BabelflowError(f"{d}/tree: not found (mkgraph needs the model's decision tree)")
    return ModelFiles(read_transition_model(mdl), read_tree(d / "tree"), mdl)


def load_grammar(g_or_arpa: str | os.PathLike, words_txt: str | os.PathLike):
    """G from a binary FST (vector or const) or from an ARPA LM (plain or gzipped; converted as arpa2fst)."""
    from .lm import arpa_to_g

    path = Path(g_or_arpa)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise BabelflowError(f"{path}: grammar (G.fst or ARPA LM) not found") from None
    if magic == _FST_MAGIC:
        return read_fst(path)
    if magic[:2] != b"\x1f\x8b":
        return arpa_to_g(path, words_txt)
    with tempfile.TemporaryDirectory(prefix="babelflow-lm-") as d:
        with gzip.open(path, "rb") as src, open(Path(d) / "lm.arpa", "wb") as dst:
            shutil.copyfileobj(src, dst)
        return arpa_to_g(Path(d) / "lm.arpa", words_txt)


# ----------------------------------------------------------------------------- the pipeline
class GraphStages(NamedTuple):
    """mkgraph.sh's intermediate FSTs (kaldifst StdVectorFst) and symbol lists."""

    LG: object
    CLG: object
    ilabels: list[list[int]]  # CLG's input labels: phone windows (fstcomposecontext's ilabels file)
    Ha: object
    disambig_tids: list[int]
    HCLGa: object
    HCLG: object


def build_graph(lang, G, transition_model, tree, self_loop_scale: float = 1.0,  # noqa: N803 - Kaldi's name
                transition_scale: float = 1.0) -> GraphStages:
    """mkgraph.sh on loaded inputs: ``lang`` a :class:`~babelflow.gmm.lang.LangDir`, ``G`` a kaldifst FST,
    ``transition_model``/``tree`` babelflow's Kaldi objects (bridged to kaldi-hmm-gmm here)."""
    from ..gmm.model import to_khg_transition_model, to_khg_tree

    khg, kaldifst = _k2()
    G = kaldifst.StdVectorFst(G)  # noqa: N806
    kaldifst.arcsort(G, sort_type="ilabel")
    LG = kaldifst.StdVectorFst(kaldifst.compose(lang.L_disambig, G))  # noqa: N806
    kaldifst.determinize_star(LG, use_log=True)
    kaldifst.minimize_encoded(LG)
    LG = push_special(LG)  # noqa: N806
    CLG, ilabels = kaldifst.compose_context(lang.disambig_phones, tree.context_width,  # noqa: N806
                                            tree.central_position, LG)
    kaldifst.arcsort(CLG, sort_type="ilabel")
    ktm = to_khg_transition_model(transition_model, tree)
    Ha, disambig_tids = khg.get_h_transducer(ilabels, to_khg_tree(tree), ktm,  # noqa: N806
                                             khg.HTransducerConfig(transition_scale=transition_scale))
    HCLGa = kaldifst.StdVectorFst(kaldifst.compose(Ha, CLG))  # noqa: N806
    kaldifst.determinize_star(HCLGa, use_log=True)
    HCLGa = remove_eps_local(rmsymbols(HCLGa, disambig_tids))  # noqa: N806
    kaldifst.minimize_encoded(HCLGa)
    HCLG = khg.add_self_loops(self_loop_scale=self_loop_scale, disambig_syms=[], reorder=True,  # noqa: N806
                              trans_model=ktm, ifst=HCLGa)
    return GraphStages(LG, CLG, [list(x) for x in ilabels], Ha, list(disambig_tids), HCLGa, HCLG)


def _check_phones(lang_dir: Path, model_dir: Path) -> None:
    """utils/lang/check_phones_compatible.sh: the model dir's phones.txt (if any) must match the lang's."""
    theirs = model_dir / "phones.txt"
    if not theirs.is_file():
        return
    strip = lambda p: [line for line in p.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    if strip(theirs) != strip(lang_dir / "phones.txt"):
        raise BabelflowError(f"{theirs}: phone symbol table differs from {lang_dir}/phones.txt "
                             "(the lang dir was not made for this model)")


def mkgraph(lang_dir: str | os.PathLike, g_or_arpa: str | os.PathLike, model_dir: str | os.PathLike,
            graph_dir: str | os.PathLike, self_loop_scale: float = 1.0, transition_scale: float = 1.0) -> dict:
    """``utils/mkgraph.sh [--self-loop-scale S] [--transition-scale T] LANG MODEL_DIR GRAPH_DIR`` with G given
    explicitly (``LANG/G.fst`` in Kaldi): a G.fst or an ARPA LM. Use self-loop scale 0.1 for GMM and plain
    nnet3 decoding at acoustic scale 0.1, 1.0 for chain models. Returns the graph's sizes and timings."""
    from ..gmm.lang import LangDir

    t0 = time.perf_counter()
    lang, model_dir = LangDir(lang_dir), Path(model_dir)
    if (lang.path / "phones" / "nonterm_phones_offset.int").is_file():
        raise BabelflowError(f"{lang.path}: grammar-decoding lang dirs (nonterm_phones_offset.int) are not supported")
    _check_phones(lang.path, model_dir)
    if (model_dir / "frame_subsampling_factor").is_file() and self_loop_scale != 1.0:
        log.warning("mkgraph: %s looks like a chain model: chain models need --self-loop-scale 1.0", model_dir)
    model = load_model(model_dir)
    G = load_grammar(g_or_arpa, lang.path / "words.txt")  # noqa: N806
    t1 = time.perf_counter()
    st = build_graph(lang, G, model.transition_model, model.tree, self_loop_scale, transition_scale)
    t2 = time.perf_counter()
    if st.HCLG.num_states == 0:
        raise BabelflowError(f"mkgraph: the graph is empty (do {g_or_arpa} and {lang.path}/L_disambig.fst share "
                             "words, with a path from start to end?)")
    num_arcs = fst_to_arrays(st.HCLG).num_arcs
    info = {"num_states": st.HCLG.num_states, "num_arcs": num_arcs, "num_pdfs": model.transition_model.num_pdfs,
            "context_width": model.tree.context_width, "central_position": model.tree.central_position,
            "self_loop_scale": f"{self_loop_scale:g}", "transition_scale": f"{transition_scale:g}",
            "lang": str(lang.path), "grammar": str(g_or_arpa), "model": str(model.model_path)}
    with atomic_dir(graph_dir) as tmp:
        write_fst(st.HCLG, tmp / "HCLG.fst")
        shutil.copyfile(lang.path / "words.txt", tmp / "words.txt")
        shutil.copyfile(lang.path / "phones.txt", tmp / "phones.txt")
        (tmp / "phones").mkdir()
        for name in _COPIED_PHONES:
            if (lang.path / "phones" / name).is_file():
                shutil.copyfile(lang.path / "phones" / name, tmp / "phones" / name)
        if not (tmp / "phones" / "silence.csl").is_file():
            raise BabelflowError(f"{lang.path}/phones/silence.csl: not found (not a Kaldi lang dir?)")
        write_text(tmp / "disambig_tid.int", "".join(f"{t}\n" for t in st.disambig_tids))
        write_text(tmp / "num_pdfs", f"{model.transition_model.num_pdfs}\n")
        write_info(tmp, info)
    info.update(load_s=round(t1 - t0, 3), build_s=round(t2 - t1, 3), total_s=round(time.perf_counter() - t0, 3))
    return info
