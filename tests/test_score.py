"""Scoring (decode/score.py) against Kaldi's compute-wer outputs and the conventions of its scoring scripts."""

from __future__ import annotations

import argparse
import random

import pytest

from babelflow.decode.decode_cli import register_tools
from babelflow.decode.score import (
    WerStats,
    best_wer,
    compute_wer,
    edit_counts,
    format_hyps,
    per_spk_details,
    per_utt_details,
    read_scored_hyps,
    read_text,
    score_dir,
)
from babelflow.errors import BabelflowError


# ----------------------------------------------------------------------------- against Kaldi's files
def test_compute_wer_matches_kaldi(kaldi_fixtures):
    """Every wer_<LMWT> of the fixture decode, byte for byte (insertions, substitutions, 100 %)."""
    ref = read_text(f"ark:{kaldi_fixtures / 'graph' / 'text'}")
    for decode in ("decode", "decode_mapped"):
        d = kaldi_fixtures / "graph" / decode
        for lmwt in range(1, 13):
            hyp = read_text(d / "scoring" / f"{lmwt}.txt")
            assert compute_wer(ref, hyp, "present").format() == (d / f"wer_{lmwt}").read_text()


def test_best_wer_matches_kaldi(kaldi_fixtures):
    """`grep WER wer_* | utils/best_wer.sh`: shell glob order, the first of the lowest wins (wer_2, not wer_3)."""
    d = kaldi_fixtures / "graph" / "decode_mapped"
    files = sorted(d.glob("wer_*"))  # the shell's glob order: wer_1, wer_10, wer_11, wer_12, wer_2, ...
    lines = [(f"graph/decode_mapped/{p.name}", p.read_text().splitlines()[0]) for p in files]
    assert best_wer(lines) == (d / "best_wer").read_text()


def test_hypothesis_files_are_int2sym_output(kaldi_fixtures):
    p = kaldi_fixtures / "graph" / "decode_mapped" / "scoring" / "2.txt"
    assert format_hyps(read_text(p)) == p.read_text()


# ----------------------------------------------------------------------------- compute-wer conventions
def kaldi_levenshtein(ref: list[str], hyp: list[str]) -> tuple[int, int, int]:
    """Kaldi's LevenshteinEditDistance (util/edit-distance-inl.h), transcribed: (ins, del, sub)."""
    e = [(0, i, 0, i) for i in range(len(ref) + 1)]  # (ins, del, sub, total)
    for h in hyp:
        cur = [(e[0][0] + 1, e[0][1], e[0][2], e[0][3] + 1)]
        for j in range(1, len(ref) + 1):
            ins, dele, sub = e[j][3] + 1, cur[j - 1][3] + 1, e[j - 1][3] + (h != ref[j - 1])
            if sub < ins and sub < dele:
                cur.append((e[j - 1][0], e[j - 1][1], e[j - 1][2] + (h != ref[j - 1]), sub))
            elif dele < ins:
                cur.append((cur[j - 1][0], cur[j - 1][1] + 1, cur[j - 1][2], dele))
            else:
                cur.append((e[j][0] + 1, e[j][1], e[j][2], ins))
        e = cur
    return e[-1][0], e[-1][1], e[-1][2]


def test_edit_counts_break_ties_as_kaldi():
    rng = random.Random(0)
    for _ in range(300):
        ref = [rng.choice("abc") for _ in range(rng.randint(0, 6))]
        hyp = [rng.choice("abcd") for _ in range(rng.randint(0, 6))]
        assert edit_counts(ref, hyp) == kaldi_levenshtein(ref, hyp), (ref, hyp)


def test_compute_wer_hand_made():
    ref = {"u1": "a b c d".split(), "u2": "x y".split(), "u3": [], "u4": "p q".split()}
    hyp = {"u1": "a c d e f".split(), "u2": [], "u3": "z".split(), "u4": "p q".split()}
    st = compute_wer(ref, hyp)
    # u1: del b, ins e f; u2: 2 del; u3: 1 ins into an empty reference; u4 correct
    assert (st.ins, st.dels, st.subs, st.errors, st.words, st.sent_errors, st.sents) == (3, 3, 0, 6, 8, 3, 4)
    assert st.format() == ("%WER 75.00 [ 6 / 8, 3 ins, 3 del, 0 sub ]\n%SER 75.00 [ 3 / 4 ]\n"
                           "Scored 4 sentences, 0 not present in hyp.\n")
    st = compute_wer({"u": "a b c".split()}, {"u": "a x c".split()})
    assert (st.subs, st.format().splitlines()[0]) == (1, "%WER 33.33 [ 1 / 3, 0 ins, 0 del, 1 sub ]")


def test_compute_wer_modes():
    ref = {"u1": "a b".split(), "u2": "c".split()}
    hyp = {"u1": "a b".split()}
    present = compute_wer(ref, hyp, "present")
    assert present.format() == ("%WER 0.00 [ 0 / 2, 0 ins, 0 del, 0 sub ] [PARTIAL]\n%SER 0.00 [ 0 / 1 ]\n"
                                "Scored 1 sentences, 1 not present in hyp.\n")
    first = compute_wer(ref, hyp, "all").format().splitlines()[0]
    assert first == "%WER 33.33 [ 1 / 3, 0 ins, 1 del, 0 sub ] [PARTIAL]"
    with pytest.raises(BabelflowError, match="No hypothesis for key u2"):
        compute_wer(ref, hyp, "strict")
    with pytest.raises(BabelflowError, match="--mode option invalid"):
        compute_wer(ref, hyp, "some")


def test_percentages_are_kaldis_floats():
    assert WerStats(words=3, errors=2).format().startswith("%WER 66.67 ")
    assert WerStats(words=0, errors=0).format().startswith("%WER -nan [ 0 / 0,")  # 0/0, as glibc prints it
    assert WerStats(words=0, errors=2).format().startswith("%WER inf ")
    assert WerStats(words=8, errors=1).wer == 12.5


def test_read_text_errors(tmp_path):
    p = tmp_path / "t"
    p.write_text("a x y\na z\n")
    with pytest.raises(BabelflowError, match="duplicate key 'a'"):
        read_text(p)
    p.write_text("a 1 x\n")
    with pytest.raises(BabelflowError, match="non-integer"):
        read_text(f"ark:{p}", integers=True)
    p.write_text("a 1 01\n")
    assert read_text(f"ark,t:{p}", integers=True) == {"a": ["1", "1"]}


# ----------------------------------------------------------------------------- details scripts
def test_per_utt_details_as_the_perl_script_documents():
    """The example in wer_per_utt_details.pl's POD (with its <eps> special symbol)."""
    ref = {"UTT-A": "word-A word-B word-C word-D word-E".split()}
    hyp = {"UTT-A": "word-A word-A word-B word-D word-X".split()}
    assert per_utt_details(ref, hyp, "<eps>") == (
        "UTT-A ref  word-A   <eps>  word-B  word-C  word-D  word-E\n"
        "UTT-A hyp  word-A  word-A  word-B   <eps>  word-D  word-X\n"
        "UTT-A op      C       I       C       D       C       S  \n"
        "UTT-A #csid 3 1 1 1\n")


def test_per_utt_details_edge_cases():
    out = per_utt_details({"a": [], "b": ["x"], "c": ["y"]}, {"a": [], "b": []})
    assert out == ("a ref  \na hyp  \na op   \na #csid 0 0 0 0\n"
                   "b ref   x \nb hyp  ***\nb op    D \nb #csid 0 0 0 1\n")  # c: no hypothesis, left out


def test_per_spk_details_as_the_perl_script_documents():
    out = per_spk_details("UTT-A ref  x\nUTT-A #csid 3 1 1 1\n", {"UTT-A": "A"})
    assert out == (
        "SPEAKER         id       #SENT      #WORD       Corr        Sub        Ins        Del        Err      S.Err\n"
        "A               raw          1          5          3          1          1          1          3          1\n"
        "A               sys          1          5      60.00      20.00      20.00      20.00      60.00     100.00\n"
        "SUM             raw          1          5          3          1          1          1          3          1\n"
        "SUM             sys          1          5      60.00      20.00      20.00      20.00      60.00     100.00\n")


def test_per_spk_details_wide_speakers_and_no_words():
    out = per_spk_details("u1 #csid 0 0 2 0\nu2 #csid 1 0 0 0\n",
                          {"u1": "speaker-with-a-long-name", "u2": "b"}).splitlines()
    assert out[0].startswith("SPEAKER                  id  ") and len(out) == 6  # no sys line for 0 words
    assert out[1].split() == ["b", "raw", "1", "1", "1", "0", "0", "0", "0", "0"]
    assert out[3].split() == ["speaker-with-a-long-name", "raw", "1", "0", "0", "0", "2", "0", "2", "1"]


def test_best_wer_ties_and_partial():
    lines = [("d/wer_7_0.0", "%WER 10.00 [ 1 / 10, 0 ins, 0 del, 1 sub ]"),
             ("d/wer_8_0.0", "%WER 10.00 [ 1 / 10, 0 ins, 0 del, 1 sub ]"),
             ("d/wer_7_0.5", "%WER 20.00 [ 2 / 10, 0 ins, 0 del, 2 sub ] [PARTIAL]")]
    assert best_wer(lines) == "%WER 10.00 [ 1 / 10, 0 ins, 0 del, 1 sub ] d/wer_7_0.0\n"
    with pytest.raises(BabelflowError):
        best_wer([])


def test_score_dir_layout(tmp_path):
    ref = {"u1": "a b c".split(), "u2": "d e".split()}
    hyps = {(lm, w): {"u1": "a b c".split() if lm == 8 else "a c".split(), "u2": "d e".split()}
            for w in ("0.0", "0.5") for lm in (7, 8, 9)}
    hyps[(9, "0.5")] = {"u1": "a b c".split()}  # u2 missing: PARTIAL, and fewer words
    best = score_dir(tmp_path, ref, hyps, {"u1": "s1", "u2": "s2"})
    assert (best["lmwt"], best["wip"]) == (8, "0.0")  # ties with (8, 0.5): the first WIP wins, as score.sh
    sk = tmp_path / "scoring_kaldi"
    assert (sk / "best_wer").read_text() == f"%WER 0.00 [ 0 / 5, 0 ins, 0 del, 0 sub ] {tmp_path}/wer_8_0.0\n"
    assert (tmp_path / "wer_7_0.0").read_text().startswith("%WER 20.00 [ 1 / 5, 0 ins, 1 del, 0 sub ]\n")
    assert "[PARTIAL]" in (tmp_path / "wer_9_0.5").read_text()
    assert (sk / "test_filt.txt").read_text() == "u1 a b c \nu2 d e \n"
    assert (sk / "penalty_0.5" / "7.txt").read_text() == "u1 a c \nu2 d e \n"
    assert (sk / "wer_details" / "lmwt").read_text() == "8\n" and (sk / "wer_details" / "wip").read_text() == "0.0\n"
    assert "u1 #csid 3 0 0 0" in (sk / "wer_details" / "per_utt").read_text()
    assert (sk / "wer_details" / "per_spk").read_text().splitlines()[-1].split()[:3] == ["SUM", "sys", "2"]
    assert read_scored_hyps(tmp_path) == hyps


def test_compute_wer_tool(kaldi_fixtures, tmp_path, capsys):
    p = argparse.ArgumentParser()
    register_tools(p.add_subparsers(dest="tool"))
    d = kaldi_fixtures / "graph" / "decode_mapped"
    args = p.parse_args(["compute-wer", "--text", "--mode=present", f"ark:{kaldi_fixtures / 'graph' / 'text'}",
                         f"ark:{d / 'scoring' / '1.txt'}", str(tmp_path / "stats")])
    args.func(args)
    assert capsys.readouterr().out == (d / "wer_1").read_text()
    assert (tmp_path / "stats").read_text() == ("substitution WAN TAN\ncorrect TR\nsubstitution RAT WAN\n"
                                                 "substitution NWA RA\ninsertion TAN\n")
    ints = tmp_path / "ref.int"
    ints.write_text("u 1 2 3\n")
    (tmp_path / "hyp.int").write_text("u 1 3\n")
    args = p.parse_args(["compute-wer", f"ark:{ints}", f"ark:{tmp_path / 'hyp.int'}"])
    args.func(args)
    assert capsys.readouterr().out.startswith("%WER 33.33 [ 1 / 3, 0 ins, 1 del, 0 sub ]\n")
