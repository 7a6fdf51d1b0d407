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
from typing import TYPE_CHECKING, NamedTuple

from ..errors import BabelflowError
from ..io import atomic_dir, write_info, write_text
from .fstio import fst_to_arrays, read_fst, write_fst
from .fstops import push_special, remove_eps_local, rmsymbols

if TYPE_CHECKING:  # hints only: the k2-fsa packages load on first use
    from ..gmm.lang import LangDir
    from ..kaldi.transition_model import TransitionModel
    from ..kaldi.tree import ContextDependency

__all__ = ["GraphStages", "ModelFiles", "build_graph", "mkgraph", "load_model", "load_grammar"]

log = logging.getLogger("babelflow")
_INF = math.inf
_FST_MAGIC = b"\xd6\xfd\xb2\x7e"
_COPIED_PHONES = ("word_boundary.txt", "word_boundary.int", "align_lexicon.txt", "align_lexicon.int",
                  "optional_silence.txt", "optional_silence.int", "optional_silence.csl", "disambig.txt",
                  "disambig.int", "silence.csl")  # what mkgraph.sh copies into the graph's phones/


def _k2():
    from ..gmm.k2 import kaldifst, khg  # import order: see gmm/k2.py

    return khg, kaldifst


class ModelFiles(NamedTuple):
    """What mkgraph reads from a model dir: the TransitionModel (of final.mdl or trans.mdl) and the tree."""

    transition_model: TransitionModel
    tree: ContextDependency
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


def build_graph(lang: LangDir, G, transition_model: TransitionModel, tree: ContextDependency,
                self_loop_scale: float = 1.0, transition_scale: float = 1.0) -> GraphStages:
    """mkgraph.sh on loaded inputs: ``lang`` a :class:`~babelflow.gmm.lang.LangDir`, ``G`` a kaldifst FST,
    ``transition_model``/``tree`` babelflow's Kaldi objects (bridged to kaldi-hmm-gmm here)."""
    from ..gmm.model import to_khg_transition_model, to_khg_tree

    khg, kaldifst = _k2()
    L, G = kaldifst.StdVectorFst(lang.L_disambig), kaldifst.StdVectorFst(G)
    kaldifst.arcsort(L, sort_type="olabel")  # compose needs the sort recorded (fsttablecompose would not)
    kaldifst.arcsort(G, sort_type="ilabel")
    LG = kaldifst.StdVectorFst(kaldifst.compose(L, G))
    _determinize(LG, "LG")
    kaldifst.minimize_encoded(LG)
    LG = push_special(LG)
    CLG, ilabels = kaldifst.compose_context(lang.disambig_phones, tree.context_width,
                                            tree.central_position, LG)
    kaldifst.arcsort(CLG, sort_type="ilabel")
    ktm = to_khg_transition_model(transition_model, tree)
    Ha, disambig_tids = khg.get_h_transducer(ilabels, to_khg_tree(tree), ktm,
                                             khg.HTransducerConfig(transition_scale=transition_scale))
    HCLGa = kaldifst.StdVectorFst(kaldifst.compose(Ha, CLG))
    _determinize(HCLGa, "HCLGa")
    HCLGa = remove_eps_local(rmsymbols(HCLGa, disambig_tids))
    kaldifst.minimize_encoded(HCLGa)
    HCLG = khg.add_self_loops(self_loop_scale=self_loop_scale, disambig_syms=[], reorder=True,
                              trans_model=ktm, ifst=HCLGa)
    return GraphStages(LG, CLG, [list(x) for x in ilabels], Ha, list(disambig_tids), HCLGa, HCLG)


def _determinize(fst, what: str) -> None:
    """fstdeterminizestar --use-log=true, in place; Kaldi's failure becomes a user error."""
    _, kaldifst = _k2()
    try:
        kaldifst.determinize_star(fst, use_log=True)
    except RuntimeError as e:
        raise BabelflowError(f"mkgraph: {what} is not determinizable ({str(e).splitlines()[-1].removeprefix('[E] ')}): "
                             "is L_disambig.fst missing disambiguation symbols, or G not deterministic?") from None


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
    G = load_grammar(g_or_arpa, lang.path / "words.txt")
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
