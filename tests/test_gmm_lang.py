"""Lang dirs from a lexicon (prepare_lang.sh without Kaldi), checked against real Kaldi; the demo lexicons."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from babelflow.errors import BabelflowError
from babelflow.gmm.k2 import kaldifst
from babelflow.gmm.lang import LangDir, LexiconEntry, prepare_lang, read_lexicon
from babelflow.kaldi.hmm_topology import read_topology

TOY = ["<UNK> sil", "NWA n w ah", "RA r ah", "RAT r ah t", "TAN t ah n", "TR t r", "WAN w ah n", "WON w ah n"]


def _lexicon(tmp_path: Path, lines: list[str], name: str = "lexicon.txt") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _paths(lang: LangDir, fst: kaldifst.StdVectorFst, max_arcs: int = 8) -> set[tuple]:
    """Accepting paths of at most ``max_arcs`` arcs as (phone names, word names, rounded cost)."""
    out = set()
    stack = [(fst.start, (), (), 0.0, 0)]
    while stack:
        s, ins, outs, cost, n = stack.pop()
        final = fst.final(s).value
        if not math.isinf(final):
            out.add((ins, outs, round(cost + final, 4)))
        if n == max_arcs:
            continue
        it = kaldifst.ArcIterator(fst, s)
        while not it.done:
            a = it.value
            i = ins + ((lang.phone_names[a.ilabel],) if a.ilabel else ())
            o = outs + ((lang.word_names[a.olabel],) if a.olabel else ())
            stack.append((a.nextstate, i, o, cost + a.weight.value, n + 1))
            it.next()
    return out


def _fstprint(lang: LangDir, fst: kaldifst.StdVectorFst) -> list[tuple]:
    """What ``fstprint --isymbols --osymbols`` shows, weights rounded."""
    rows = []
    for s in range(fst.num_states):
        it = kaldifst.ArcIterator(fst, s)
        while not it.done:
            a = it.value
            rows.append((s, a.nextstate, lang.phone_names[a.ilabel], lang.word_names[a.olabel],
                         round(a.weight.value, 6)))
            it.next()
        if not math.isinf(fst.final(s).value):
            rows.append((s, round(fst.final(s).value, 6)))
    return rows


def _read_fstprint(path: Path) -> list[tuple]:
    rows = []
    for line in path.read_text().splitlines():
        f = line.split("\t")
        if len(f) <= 2:
            rows.append((int(f[0]), round(float(f[1]) if len(f) == 2 else 0.0, 6)))
        else:
            rows.append((int(f[0]), int(f[1]), f[2], f[3], round(float(f[4]) if len(f) == 5 else 0.0, 6)))
    return rows


def _kaldi_lang(kaldi_fixtures: Path, tmp_path: Path, lexicon: str = "lexicon.txt", **kw) -> LangDir:
    dict_dir = kaldi_fixtures / "graph" / "dict"
    nonsil = (dict_dir / "nonsilence_phones.txt").read_text().splitlines()
    return prepare_lang(dict_dir / lexicon, tmp_path / "lang", oov_word="<UNK>", nonsilence_phones=nonsil,
                        position_dependent_phones=False, num_sil_states=3, num_nonsil_states=3, **kw)


def test_fixture_lang_identical_to_kaldi(kaldi_fixtures, tmp_path):
    """prepare_lang.sh's own lang dir: every file both write is byte-identical, L*.fst included."""
    kaldi = kaldi_fixtures / "graph" / "lang"
    ours = _kaldi_lang(kaldi_fixtures, tmp_path)
    common = sorted(p.relative_to(ours.path) for p in ours.path.rglob("*") if p.is_file()
                    and (kaldi / p.relative_to(ours.path)).is_file())
    must = {"phones.txt", "words.txt", "topo", "oov.txt", "oov.int", "L.fst", "L_disambig.fst", "phones/sets.int",
            "phones/roots.int", "phones/disambig.int", "phones/silence.txt", "phones/nonsilence.txt",
            "phones/optional_silence.int", "phones/context_indep.csl", "phones/wdisambig_words.int",
            "phones/align_lexicon.int", "phones/extra_questions.txt"}
    assert must <= {str(p) for p in common}
    for rel in common:
        assert (ours.path / rel).read_bytes() == (kaldi / rel).read_bytes(), rel
    kaldi_lang = LangDir(kaldi)
    for name in ("L", "L_disambig"):  # and as fstprint shows them
        assert _fstprint(kaldi_lang, getattr(ours, name)) == _read_fstprint(kaldi / f"{name}.fst.txt")
        assert _fstprint(kaldi_lang, getattr(kaldi_lang, name)) == _read_fstprint(kaldi / f"{name}.fst.txt")


def test_fixture_lexiconp_and_phone_order(kaldi_fixtures, tmp_path):
    """lexiconp.txt gives the same dir; another phone order gives other ids but the same L (paths by name)."""
    kaldi = LangDir(kaldi_fixtures / "graph" / "lang")
    ours = _kaldi_lang(kaldi_fixtures, tmp_path, "lexiconp.txt")
    for name in ("phones.txt", "words.txt", "L.fst", "L_disambig.fst", "phones/align_lexicon.int"):
        assert (ours.path / name).read_bytes() == (kaldi.path / name).read_bytes()
    sorted_lang = prepare_lang(kaldi_fixtures / "graph" / "dict" / "lexicon.txt", tmp_path / "sorted", oov_word="<UNK>")
    assert list(sorted_lang.phones)[:7] == ["<eps>", "sil", "ah", "n", "r", "t", "w"]
    for name in ("L", "L_disambig"):
        ref = _paths(kaldi, getattr(kaldi, name))
        assert len(ref) > 1000 and _paths(sorted_lang, getattr(sorted_lang, name)) == ref


def test_langdir_reader(kaldi_fixtures):
    lang = LangDir(kaldi_fixtures / "graph" / "lang")
    assert lang.phones["sil"] == 1 and lang.words["#0"] == 9 and lang.word_names[10] == "<s>"
    assert lang.disambig_phones == [7, 8, 9, 10] and lang.wdisambig_phones == [7] and lang.wdisambig_words == [9]
    assert lang.silence_phones == lang.context_indep_phones == [1] and lang.nonsilence_phones == [2, 3, 4, 5, 6]
    assert lang.optional_silence == 1 and lang.oov == 1 and lang.oov_word == "<UNK>"
    assert lang.sets == [[1], [2], [3], [4], [5], [6]] and lang.roots[1] == ("shared", "split", [2])
    assert lang.extra_questions == [] and not lang.position_dependent
    assert read_topology(lang.topo_path).phones == [1, 2, 3, 4, 5, 6]
    assert lang.L.num_states == 15 and lang.L_disambig.is_olabel_sorted
    with pytest.raises(BabelflowError, match="not a lang dir"):
        LangDir(kaldi_fixtures / "graph")


def test_lang_feeds_kaldi_hmm_gmm(kaldi_fixtures, tmp_path):
    """Our topo and L_disambig go straight into kaldi-hmm-gmm's training-graph compiler."""
    from babelflow.gmm.k2 import khg

    lang = _kaldi_lang(kaldi_fixtures, tmp_path)
    topo = khg.HmmTopology()
    topo.read(lang.topo_path.read_text())
    phones = sorted(lang.silence_phones + lang.nonsilence_phones)
    tree = khg.monophone_context_dependency(phones, [0] + [3] * len(phones))
    tm = khg.TransitionModel(tree, topo)
    opts = khg.TrainingGraphCompilerOptions(transition_scale=0, self_loop_scale=0)
    compiler = khg.TrainingGraphCompiler(tm, tree, lang.L_disambig, lang.disambig_phones, opts)
    graph = compiler.compile_graph_from_text([lang.words["WAN"], lang.words["TR"]])
    assert tm.num_pdfs == 18 and graph.num_states > 10


def test_homophones_and_prefixes(tmp_path):
    """add_lex_disambig.pl: #1, #2 for homophones, #1 for a prefix; one more for the optional silence."""
    lex = [("<unk>", ["sil"]), ("a", ["x", "y"]), ("b", ["x", "y"]), ("c", ["x"]), ("d", ["x", "y", "z"]),
           ("e", ["z", "x"]), ("f", ["x", "y"])]
    lang = prepare_lang(lex, tmp_path / "lang")
    assert (lang.path / "phones" / "disambig.txt").read_text().split() == ["#0", "#1", "#2", "#3", "#4"]
    words = {outs[0]: ins for ins, outs, _ in _paths(lang, lang.L_disambig, 5)
             if len(outs) == 1 and "sil" not in ins and "#0" not in ins}
    assert words["a"] == ("x", "y", "#1") and words["b"] == ("x", "y", "#2") and words["f"] == ("x", "y", "#3")
    assert words["c"] == ("x", "#1") and words["d"] == ("x", "y", "z") and words["e"] == ("z", "x")
    assert ("sil", "#4") in {ins[:2] for ins, outs, _ in _paths(lang, lang.L_disambig, 3) if not outs}
    assert (lang.path / "words.txt").read_text().split()[::2] == ["<eps>", "<unk>", *"abcdef", "#0", "<s>", "</s>"]
    # position-dependent: x_B y_E is no prefix of x_B y_I z_E, and x_S differs from both
    pd = prepare_lang(lex, tmp_path / "pd", position_dependent_phones=True)
    assert (pd.path / "phones" / "disambig.txt").read_text().split() == ["#0", "#1", "#2", "#3", "#4"]
    assert list(pd.phones)[:7] == ["<eps>", "sil", "sil_B", "sil_E", "sil_I", "sil_S", "x_B"]
    assert "d d x_B y_I z_E" in (pd.path / "phones" / "align_lexicon.txt").read_text()
    assert pd.position_dependent and len(pd.extra_questions) == 9


def test_pron_probs_in_costs(tmp_path):
    path = _lexicon(tmp_path, ["<unk> 1.0 sil", "a 0.25 x y", "a 1.0 y", "b\t0.5\tx"], "lexiconp.txt")
    assert read_lexicon(path)[1] == LexiconEntry("a", 0.25, ("x", "y"))
    lang = prepare_lang(path, tmp_path / "lang", sil_prob=0.2)
    costs = {(ins, outs): c for ins, outs, c in _paths(lang, lang.L, 3)}
    no_sil, sil = -math.log(0.8), -math.log(0.2)
    assert costs[(("x", "y"), ("a",))] == round(no_sil + -math.log(0.25) + no_sil, 4)
    assert costs[(("x",), ("b",))] == round(no_sil + -math.log(0.5) + no_sil, 4)
    assert costs[(("sil", "y"), ("a",))] == round(sil + no_sil, 4)
    nosil = prepare_lang(path, tmp_path / "nosil", sil_prob=0.0)  # no optional silence: words only
    paths = {(ins, outs) for ins, outs, _ in _paths(nosil, nosil.L, 3)}
    assert nosil.L.start == 0 and (("sil",), ("<unk>",)) in paths and (("sil", "y"), ("a",)) not in paths
    assert (("y", "x"), ("a", "b")) in paths


def test_five_state_silence_topology(tmp_path):
    lang = prepare_lang(_lexicon(tmp_path, ["<unk> sil", "a x y"]), tmp_path / "lang", num_sil_states=5)
    topo = read_topology(lang.topo_path)
    sil, x = topo.entry_for_phone(lang.phones["sil"]), topo.entry_for_phone(lang.phones["x"])
    assert len(sil) == 6 and len(x) == 4 and topo.num_pdf_classes(1) == 5
    assert [d for d, _ in sil[0].transitions] == [0, 1, 2, 3] and [d for d, _ in sil[2].transitions] == [1, 2, 3, 4]
    assert all(p == pytest.approx(0.25) for _, p in sil[1].transitions) and sil[4].transitions[1] == (5, 0.25)
    with pytest.raises(BabelflowError, match="num_sil_states"):
        prepare_lang(_lexicon(tmp_path, ["<unk> sil"]), tmp_path / "bad", num_sil_states=2)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("name,lines,match", [
    ("lexiconp.txt", ["<unk> 1.0 sil", "WORD abc x y"], r"lexiconp.txt:2 \(key 'WORD'\): the 2nd field"),
    ("lexiconp.txt", ["<unk> 1.0 sil", "A 1.5 x"], r"lexiconp.txt:2 \(key 'A'\): pronunciation probability"),
    ("lexicon.txt", ["<unk> sil", "A x", "B"], r"lexicon.txt:3 \(key 'B'\): empty pronunciation"),
    ("lexicon.txt", ["<unk> sil", "", "A x"], r"lexicon.txt:2: empty lexicon line"),
    ("lexicon.txt", ["<s> sil"], r"lexicon.txt:1 \(key '<s>'\): '<s>' is reserved"),
    ("lexicon.txt", ["<unk> sil", "A x #1"], r"lexicon.txt:2 \(key 'A'\): phone '#1' is reserved"),
    ("lexicon.txt", ["<unk> sil", "A x", "A x"], r"lexicon.txt:3 \(key 'A'\): duplicate"),
])
def test_malformed_lexicon(tmp_path, name, lines, match):
    with pytest.raises(BabelflowError, match=match):
        prepare_lang(_lexicon(tmp_path, lines, name), tmp_path / "lang")
    assert not (tmp_path / "lang").exists()


def test_oov_and_phone_lists(tmp_path):
    path = _lexicon(tmp_path, ["A x y", "B y"])
    with pytest.raises(BabelflowError, match=r"OOV word '<unk>' is not in the lexicon"):
        prepare_lang(path, tmp_path / "lang")
    lang = prepare_lang(path, tmp_path / "lang", add_oov=True)
    assert lang.oov == lang.words["<unk>"] == 1 and "<unk> <unk> sil" in (
        lang.path / "phones" / "align_lexicon.txt").read_text()
    with pytest.raises(BabelflowError, match=r"lexicon.txt:1 \(key 'A'\): phone 'y' is not in the phone lists"):
        prepare_lang(path, tmp_path / "l2", add_oov=True, nonsilence_phones=["x", "z"])
    shared = prepare_lang(path, tmp_path / "l3", add_oov=True, nonsilence_phones=["y", "x z"])
    assert shared.sets == [[1], [2], [3, 4]] and list(shared.phones)[1:5] == ["sil", "y", "x", "z"]


def test_cli(kaldi_fixtures, tmp_path):
    from babelflow.gmm.cli import register

    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    dict_dir = kaldi_fixtures / "graph" / "dict"
    args = p.parse_args(["prepare-lang", "--oov-word", "<UNK>", "--nonsilence-phones",
                         str(dict_dir / "nonsilence_phones.txt"), str(dict_dir / "lexicon.txt"), str(tmp_path / "l")])
    args.func(args)
    for name in ("phones.txt", "words.txt", "topo", "L_disambig.fst"):
        assert (tmp_path / "l" / name).read_bytes() == (kaldi_fixtures / "graph" / "lang" / name).read_bytes()
    args = p.parse_args(["prepare-lang", "--position-dependent-phones", "true", "--num-sil-states", "5",
                         "--sil-prob", "0.3",
                         "--add-oov", "LEX", "OUT"])
    assert args.position_dependent_phones is True and args.num_sil_states == 5 and args.add_oov
    assert p.parse_args(["prepare-lang", "--position-dependent-phones", "false", "L", "O"]).position_dependent_phones \
        is False


def test_demo_lexicon_words():
    from babelflow.demo.lexicon import demo_lexicon

    lex = demo_lexicon(["7", "0", "7"], "en-us")
    assert lex == [("0", ("z", "i@", "r", "oU")), ("7", ("s", "E", "v", "@", "n"))]
    assert demo_lexicon(["7", "0"], "de") == [("0", ("n", "U", "l")), ("7", ("z", "i:", "b", "@", "n"))]


def test_demo_corpus_lexicon(tiny_corpus, tmp_path):
    """Each language's dict/lexicon.txt covers its text, in the alignment dir's phone set."""
    for lang in ("en", "de"):
        entries = read_lexicon(tiny_corpus / lang / "dict" / "lexicon.txt")
        words = {w for line in (tiny_corpus / lang / "data" / "text").read_text().splitlines()
                 for w in line.split()[1:]}
        assert {e.word for e in entries} == words | {"<unk>"} and LexiconEntry("<unk>", 1.0, ("sil",)) in entries
        assert [e.word for e in entries] == sorted(e.word for e in entries)
        ali_phones = (tiny_corpus / lang / "ali" / "phones.txt").read_text()
        nonsil = [line.split()[0] for line in ali_phones.splitlines()[2:]]
        lang_dir = prepare_lang(tiny_corpus / lang / "dict" / "lexicon.txt", tmp_path / lang, nonsilence_phones=nonsil)
        assert (lang_dir.path / "phones.txt").read_text().startswith(ali_phones)
