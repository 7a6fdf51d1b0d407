"""HCLG graphs as utils/mkgraph.sh builds them, checked stage by stage against real Kaldi (kaldi-fixtures/graph)."""

from __future__ import annotations

import argparse
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from babelflow.decode.fstio import FstArrays, arrays_to_fst, fst_to_arrays, isomorphism_mismatch, read_fst, write_fst
from babelflow.decode.fstops import push_special, remove_eps_local, rmsymbols
from babelflow.decode.graph import build_graph, load_model, mkgraph
from babelflow.decode.lm import arpa_to_g, make_lm
from babelflow.errors import BabelflowError
from babelflow.gmm.k2 import kaldifst
from babelflow.gmm.lang import LangDir, prepare_lang
from babelflow.gmm.model import transition_model_for_tree
from babelflow.kaldi.transition_model import write_transition_model
from babelflow.kaldi.tree import ConstantEventMap, ContextDependency, SplitEventMap, TableEventMap, stub_map, write_tree


# ----------------------------------------------------------------------------- helpers
def _fst_txt(path: Path, isyms: dict | None = None, osyms: dict | None = None) -> object:
    """fstprint output (optionally with symbol names) compiled back to an FST."""
    rows = []
    for line in path.read_text().splitlines():
        f = line.split("\t")
        if len(f) >= 4:
            f[2] = str(isyms[f[2]]) if isyms else f[2]
            f[3] = str(osyms[f[3]]) if osyms else f[3]
        rows.append("\t".join(f))
    return kaldifst.compile("\n".join(rows) + "\n")


def _best(fst, labels: list[int], side: str) -> tuple[list[int], list[int], float] | None:
    """Best path of ``fst`` whose input (``side='in'``) or output (``'out'``) is ``labels``."""
    lin = kaldifst.make_linear_acceptor(labels)
    if side == "out":
        fst = kaldifst.StdVectorFst(fst)
        kaldifst.arcsort(fst, sort_type="olabel")  # compose matches on the left FST's output labels
    comp = kaldifst.compose(lin, fst) if side == "in" else kaldifst.compose(fst, lin)
    if comp.num_states == 0:
        return None
    ok, ilabels, olabels, w = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(comp))
    assert ok
    return list(ilabels), list(olabels), w.value


def _random_inputs(fst, rng: random.Random, n: int) -> list[list[int]]:
    """Input label sequences of ``n`` random successful paths (random walks that stop at final states)."""
    a = fst_to_arrays(fst)
    off = a.offsets()
    out = []
    while len(out) < n:
        s, seq = a.start, []
        for _ in range(400):
            lo, hi = off[s], off[s + 1]
            if np.isfinite(a.final[s]) and (hi == lo or rng.random() < 0.1):
                out.append(seq)
                break
            k = rng.randrange(lo, hi)
            seq += [int(a.ilabel[k])] if a.ilabel[k] else []
            s = int(a.dst[k])
    return out


def _strings(fst) -> set[tuple[int, ...]]:
    """All output strings of an FST with a finite output language (projected, epsilon-free, determinized)."""
    a = fst_to_arrays(fst)
    proj = arrays_to_fst(a.replace(ilabel=a.olabel.copy()))
    kaldifst.rmepsilon(proj)
    det = fst_to_arrays(kaldifst.determinize(proj))
    off = det.offsets()
    out, stack = set(), [(det.start, ())]
    while stack:
        s, seq = stack.pop()
        assert len(seq) < 50, "output language is not finite"
        if np.isfinite(det.final[s]):
            out.add(seq)
        stack += [(int(det.dst[k]), seq + (int(det.ilabel[k]),)) for k in range(off[s], off[s + 1])]
    return out


@pytest.fixture(scope="module")
def fx(kaldi_fixtures: Path) -> dict:
    lang = LangDir(kaldi_fixtures / "graph" / "lang")
    model = load_model(kaldi_fixtures / "lang0")
    return {"root": kaldi_fixtures, "g": kaldi_fixtures / "graph", "lang": lang, "model": model,
            "G": arpa_to_g(kaldi_fixtures / "graph" / "lm.arpa", lang.path / "words.txt")}


# ----------------------------------------------------------------------------- FST I/O
def test_read_const_fst_matches_fstprint(fx) -> None:
    g = fx["g"] / "graph_nnet3"
    fst = read_fst(g / "HCLG.fst")  # Kaldi's const FST: kaldifst alone cannot read it
    a = fst_to_arrays(fst)
    info = dict(line.rsplit(None, 1) for line in (g / "HCLG.fstinfo.txt").read_text().splitlines())
    assert (a.num_states, a.num_arcs, a.start) == (int(info["# of states"]), int(info["# of arcs"]), 0) == (87, 199, 0)
    arcs, finals = [], {}
    for line in (g / "HCLG.fst.txt").read_text().splitlines():
        f = line.split("\t")
        if len(f) <= 2:
            finals[int(f[0])] = np.float32(f[1]) if len(f) == 2 else np.float32(0)
        else:
            arcs.append((int(f[0]), int(f[1]), int(f[2]), int(f[3]), np.float32(f[4]) if len(f) == 5 else 0.0))
    ours = list(zip(a.src.tolist(), a.dst.tolist(), a.ilabel.tolist(), a.olabel.tolist(), a.weight.tolist()))
    assert ours == [(s, d, i, o, float(w)) for s, d, i, o, w in arcs]  # same arcs, same order, exact weights
    assert {int(s): a.final[s] for s in np.flatnonzero(np.isfinite(a.final))} == finals
    assert isomorphism_mismatch(fst, _fst_txt(g / "HCLG.fst.txt")) is None
    back = fst_to_arrays(arrays_to_fst(a))  # exact round trip through the vector writer
    assert all(np.array_equal(getattr(back, k), getattr(a, k)) for k in ("final", "src", "ilabel", "weight", "dst"))
    vec = read_fst(fx["g"] / "lang" / "G.fst")  # a vector FST goes through kaldifst
    assert vec.num_states == 6


def test_read_fst_errors(tmp_path: Path, fx) -> None:
    (tmp_path / "x.fst").write_text("0 1 2 2\n")
    with pytest.raises(BabelflowError, match="not a binary OpenFst file"):
        read_fst(tmp_path / "x.fst")
    data = (fx["g"] / "graph_nnet3" / "HCLG.fst").read_bytes()
    (tmp_path / "cut.fst").write_bytes(data[:2000])
    with pytest.raises(BabelflowError, match="truncated"):
        read_fst(tmp_path / "cut.fst")
    with pytest.raises(BabelflowError, match="not found"):
        read_fst(tmp_path / "missing.fst")


def test_isomorphism_check(fx) -> None:
    hclg = fst_to_arrays(read_fst(fx["g"] / "graph_gmm" / "HCLG.fst"))
    perm = np.random.default_rng(0).permutation(hclg.num_states)  # renumber states, shuffle arcs
    order = np.lexsort((np.random.default_rng(1).random(hclg.num_arcs), perm[hclg.src]))
    src, dst = perm[hclg.src][order].astype(np.int32), perm[hclg.dst][order].astype(np.int32)
    src, dst = perm[hclg.src][order].astype(np.int32), perm[hclg.dst][order].astype(np.int32)
    shuffled = FstArrays(int(perm[hclg.start]), hclg.final[np.argsort(perm)], src, hclg.ilabel[order],
                         hclg.olabel[order], hclg.weight[order], dst)
    assert isomorphism_mismatch(hclg, arrays_to_fst(shuffled)) is None
    assert "arc" in isomorphism_mismatch(hclg, read_fst(fx["g"] / "graph_nnet3" / "HCLG.fst"))  # self-loop scale


# ----------------------------------------------------------------------------- hand-written Kaldi FST tools
def test_rmsymbols_and_remove_eps_local() -> None:
    # 0 -a:A-> 1 -#:eps-> 2 -b:B-> 3(final); #=9 becomes epsilon, then the eps arc is merged away
    fst = kaldifst.compile("0 1 1 1 0.5\n1 2 9 0 0.25\n2 3 2 2 1\n3 0\n")
    f = remove_eps_local(rmsymbols(fst, [9]))
    a = fst_to_arrays(f)
    assert (a.num_states, a.num_arcs) == (3, 2)
    assert sorted(zip(a.ilabel.tolist(), a.olabel.tolist())) == [(1, 1), (2, 2)]
    assert math.isclose(float(a.weight.sum()), 1.75, abs_tol=1e-6)
    kept = fst_to_arrays(remove_eps_local(fst))  # '#' is a real label: nothing to merge
    assert kept.num_arcs == 3


def test_push_special_makes_states_equally_stochastic(fx) -> None:
    st = build_graph(fx["lang"], fx["G"], fx["model"].transition_model, fx["model"].tree)
    for fst in (push_special(kaldifst.compose(fx["lang"].L_disambig, fx["G"])), st.LG):
        a = fst_to_arrays(fst)
        tot = np.bincount(a.src, np.exp(-a.weight.astype(float)), a.num_states)
        tot += np.where(np.isfinite(a.final), np.exp(-a.final.astype(float)), 0.0)
        assert np.log(tot.max() / tot.min()) < 1.0 / 1024  # fstisstochastic: same sum everywhere


# ----------------------------------------------------------------------------- the fixture graph, stage by stage
@pytest.mark.parametrize("grammar", ["lm.arpa", "lang/G.fst"])
def test_stages_match_kaldi(fx, grammar: str) -> None:
    g, lang = fx["g"], fx["lang"]
    G = arpa_to_g(g / grammar, lang.path / "words.txt") if grammar.endswith("arpa") else read_fst(g / grammar)
    assert isomorphism_mismatch(G, read_fst(g / "lang" / "G.fst")) is None
    st = build_graph(lang, G, fx["model"].transition_model, fx["model"].tree, self_loop_scale=1.0)
    s = g / "stages"
    assert isomorphism_mismatch(st.LG, _fst_txt(s / "LG.fst.txt", lang.phones, lang.words)) is None
    assert isomorphism_mismatch(st.CLG, _fst_txt(s / "CLG_1_0.fst.txt", None, lang.words)) is None
    assert isomorphism_mismatch(st.Ha, _fst_txt(s / "Ha.fst.txt")) is None
    assert st.disambig_tids == [int(x) for x in (s / "disambig_tid.int").read_text().split()]
    assert isomorphism_mismatch(st.HCLGa, _fst_txt(s / "HCLGa.fst.txt", None, lang.words)) is None
    assert isomorphism_mismatch(st.HCLG, read_fst(g / "graph_gmm" / "HCLG.fst")) is None
    st01 = build_graph(lang, G, fx["model"].transition_model, fx["model"].tree, self_loop_scale=0.1)
    assert isomorphism_mismatch(st01.HCLG, read_fst(g / "graph_nnet3" / "HCLG.fst")) is None


def test_mkgraph_dir_like_kaldi(fx, tmp_path: Path) -> None:
    g, root = fx["g"], fx["root"]
    nnet = tmp_path / "nnet3_model"  # as the fixture script: nnet3 final_adj.mdl as final.mdl + lang0's tree
    nnet.mkdir()
    shutil.copyfile(root / "am" / "lang0" / "final_adj.mdl", nnet / "final.mdl")
    shutil.copyfile(root / "lang0" / "tree", nnet / "tree")
    info = mkgraph(g / "lang", g / "lm.arpa", nnet, tmp_path / "graph", self_loop_scale=0.1)
    out, ref = tmp_path / "graph", g / "graph_nnet3"
    assert (info["num_states"], info["num_arcs"], info["num_pdfs"]) == (87, 199, 18)
    assert isomorphism_mismatch(read_fst(out / "HCLG.fst"), read_fst(ref / "HCLG.fst")) is None
    for name in ("words.txt", "phones.txt", "disambig_tid.int", "num_pdfs"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert sorted(p.name for p in (out / "phones").iterdir()) == sorted(p.name for p in (ref / "phones").iterdir())
    for p in (ref / "phones").iterdir():
        assert (out / "phones" / p.name).read_bytes() == p.read_bytes(), p.name
    assert (out / "info" / "self_loop_scale").read_text() == "0.1\n"
    # a babelflow task model dir (trans.mdl + tree) and a G.fst grammar give the same graph
    task = tmp_path / "task"
    task.mkdir()
    write_transition_model(task / "trans.mdl", fx["model"].transition_model)
    shutil.copyfile(root / "lang0" / "tree", task / "tree")
    mkgraph(g / "lang", g / "lang" / "G.fst", task, tmp_path / "graph2", self_loop_scale=0.1)
    assert isomorphism_mismatch(read_fst(tmp_path / "graph2" / "HCLG.fst"), read_fst(ref / "HCLG.fst")) is None


def test_mkgraph_errors(fx, tmp_path: Path) -> None:
    g = fx["g"]
    (tmp_path / "m").mkdir()
    with pytest.raises(BabelflowError, match="no final.mdl or trans.mdl"):
        mkgraph(g / "lang", g / "lm.arpa", tmp_path / "m", tmp_path / "out")
    shutil.copyfile(fx["root"] / "lang0" / "final.mdl", tmp_path / "m" / "final.mdl")
    with pytest.raises(BabelflowError, match="tree: not found"):
        mkgraph(g / "lang", g / "lm.arpa", tmp_path / "m", tmp_path / "out")
    shutil.copyfile(fx["root"] / "lang0" / "tree", tmp_path / "m" / "tree")
    (tmp_path / "m" / "phones.txt").write_text("<eps> 0\nsil 1\nah 2\n")
    with pytest.raises(BabelflowError, match="differs"):
        mkgraph(g / "lang", g / "lm.arpa", tmp_path / "m", tmp_path / "out")
    with pytest.raises(BabelflowError, match="not found"):
        mkgraph(g / "lang", tmp_path / "none.arpa", fx["root"] / "lang0", tmp_path / "out")
    shutil.copytree(g / "lang", tmp_path / "lang")  # WAN and WON are homophones: L without #1/#2 cannot work
    shutil.copyfile(g / "lang" / "L.fst", tmp_path / "lang" / "L_disambig.fst")
    w = fx["lang"].words
    write_fst(kaldifst.compile(f"0 1 {w['WAN']} {w['WAN']} 0.5\n0 1 {w['WON']} {w['WON']} 1\n1\n"), tmp_path / "G.fst")
    with pytest.raises(BabelflowError, match="LG is not determinizable.*not functional"):
        mkgraph(tmp_path / "lang", tmp_path / "G.fst", fx["root"] / "lang0", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- behaviour beyond the fixture
def test_toy_grammar_accepts_exactly_its_sentences(fx, tmp_path: Path) -> None:
    w = fx["lang"].words
    sentences = [("WAN", "TR"), ("RAT", "NWA"), ("RA", "TAN"), ("WON",), ("WAN", "TR", "WON")]
    rows, n = [], 1
    for sent in sentences:  # a finite acceptor: one branch per sentence
        prev = 0
        for k, word in enumerate(sent):
            rows.append(f"{prev} {n} {w[word]} {w[word]} {0.5 * k}")
            prev, n = n, n + 1
        rows.append(f"{prev} 1.0")
    write_fst(kaldifst.compile("\n".join(rows) + "\n"), tmp_path / "G.fst")
    mkgraph(fx["g"] / "lang", tmp_path / "G.fst", fx["root"] / "lang0", tmp_path / "graph")
    hclg = read_fst(tmp_path / "graph" / "HCLG.fst")
    assert _strings(hclg) == {tuple(w[x] for x in s) for s in sentences}
    tm, lang = fx["model"].transition_model, fx["lang"]
    pron = {line.split()[0]: [lang.phones[p] for p in line.split()[1:]]
            for line in (fx["g"] / "lexicon.txt").read_text().splitlines()}
    for sent in sentences:  # the best path spells the words' phones (optional silence aside)
        tids, words, _ = _best(hclg, [w[x] for x in sent], "out")
        assert words == [w[x] for x in sent]
        phone, state = tm.transition_id_to_phone()[tids], tm.transition_id_to_hmm_state()[tids]
        starts = [k for k in range(len(tids)) if k == 0 or phone[k] != phone[k - 1] or state[k] < state[k - 1]]
        assert [int(phone[k]) for k in starts if phone[k] != 1] == [p for x in sent for p in pron[x]]


def _ci_triphone_tree(split_ah_after_w: bool) -> ContextDependency:
    """An N=3 tree over lang0's phones with the monophone pdfs; optionally pdf-class 1 of 'ah' (3) gets its own pdf
    (18) after 'w' (2), so that the graph must track left context."""
    to_pdf, _ = stub_map([[p] for p in range(1, 7)], [0] + [3] * 6, P=1)
    if split_ah_after_w:
        table = list(to_pdf.table)
        classes = list(table[3].table)
        classes[1] = SplitEventMap(0, (2,), ConstantEventMap(18), classes[1])
        table[3] = TableEventMap(-1, tuple(classes))
        to_pdf = TableEventMap(1, tuple(table))
    return ContextDependency(3, 1, to_pdf)


def test_triphone_graphs(fx, tmp_path: Path) -> None:
    lang, mono = fx["lang"], fx["model"]
    topo = mono.transition_model.topology
    tree = _ci_triphone_tree(False)
    tm = transition_model_for_tree(tree, topo)
    assert tm.tuples == mono.transition_model.tuples  # same transition-ids as the monophone model
    tri = build_graph(lang, fx["G"], mono.transition_model, tree, 0.1)
    mono_g = build_graph(lang, fx["G"], mono.transition_model, mono.tree, 0.1)
    assert tri.HCLG.num_states > mono_g.HCLG.num_states  # context expansion makes it bigger...
    rng = random.Random(0)
    for fst, other in ((mono_g.HCLG, tri.HCLG), (tri.HCLG, mono_g.HCLG)):  # ...but the same weighted relation
        for seq in _random_inputs(fst, rng, 25):
            a, b = _best(fst, seq, "in"), _best(other, seq, "in")
            # (weights are quantised to 1/1024 per arc by fstminimizeencoded: allow that much per frame)
            assert b is not None and a[1] == b[1] and math.isclose(a[2], b[2], abs_tol=1e-3 * (len(seq) + 1))
    split = _ci_triphone_tree(True)
    model = tmp_path / "tri"
    model.mkdir()
    write_tree(model / "tree", split)
    write_transition_model(model / "final.mdl", transition_model_for_tree(split, topo))
    info = mkgraph(lang.path, fx["g"] / "lm.arpa", model, tmp_path / "graph", self_loop_scale=0.1)
    assert (info["context_width"], info["central_position"], info["num_pdfs"]) == (3, 1, 19)
    hclg, tm2 = read_fst(tmp_path / "graph" / "HCLG.fst"), load_model(model).transition_model
    w = lang.words
    # WAN = w ah n and NWA = n w ah: 'ah' after 'w'; RAT = r ah t and TAN = t ah n: after another phone
    for sent, pdfs in ((("WAN",), {18}), (("TAN",), {7}), (("RAT",), {7}), (("RAT", "NWA"), {7, 18})):
        tids = np.array(_best(hclg, [w[x] for x in sent], "out")[0])
        ah = (tm2.transition_id_to_phone()[tids] == 3) & (tm2.transition_id_to_hmm_state()[tids] == 1)
        assert set(tm2.transition_id_to_pdf()[tids[ah]].tolist()) == pdfs, sent


def test_100_word_lexicon_bigram(fx, tmp_path: Path) -> None:
    rng = random.Random(0)
    phones, words = ["w", "ah", "n", "t", "r"], {}
    while len(words) < 100:
        words.setdefault(f"W{len(words):03d}", [rng.choice(phones) for _ in range(rng.randint(2, 5))])
    lang = prepare_lang([*words.items(), ("<unk>", ["sil"])], tmp_path / "lang", nonsilence_phones=phones)
    sents = [[rng.choice(list(words)) for _ in range(rng.randint(2, 8))] for _ in range(1000)]
    make_lm([" ".join(s) for s in sents], 2, tmp_path / "lm.arpa", vocab=tmp_path / "lang")
    t = time.perf_counter()
    info = mkgraph(tmp_path / "lang", tmp_path / "lm.arpa", fx["root"] / "lang0", tmp_path / "graph", 0.1)
    elapsed = time.perf_counter() - t
    assert elapsed < 30 and info["num_states"] > 1000
    hclg = read_fst(tmp_path / "graph" / "HCLG.fst")
    for s in sents[:5]:
        assert _best(hclg, [lang.words[x] for x in s], "out")[1] == [lang.words[x] for x in s]


def test_cli(fx, tmp_path: Path) -> None:
    from babelflow.decode.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["mkgraph", "--self-loop-scale", "0.1", str(fx["g"] / "lang"), str(fx["g"] / "lm.arpa"),
                              str(fx["root"] / "lang0"), str(tmp_path / "graph")])
    args.func(args)
    ref = read_fst(fx["g"] / "graph_nnet3" / "HCLG.fst")
    assert isomorphism_mismatch(read_fst(tmp_path / "graph" / "HCLG.fst"), ref) is None
    args = parser.parse_args(["arpa2fst", "--read-symbol-table", str(fx["g"] / "lang" / "words.txt"),
                              str(fx["g"] / "lm.arpa"), str(tmp_path / "G.fst")])
    args.func(args)
    assert isomorphism_mismatch(read_fst(tmp_path / "G.fst"), read_fst(fx["g"] / "lang" / "G.fst")) is None
