"""ARPA LMs (make_lm, Kneser-Ney via kaldingram) checked against textbook formulas; G.fst against Kaldi's arpa2fst."""

from __future__ import annotations

import argparse
import logging
import math
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from babelflow.decode.fstio import isomorphism_mismatch, read_fst
from babelflow.decode.lm import arpa_to_g, make_lm, read_arpa
from babelflow.errors import BabelflowError

TINY = ["a b", "a b c", "b c", "a", "c a b", "b", "c c a"]


def _textbook_kn_bigram(sentences: list[str]) -> tuple[dict, dict, dict]:
    """Back-off Kneser-Ney for a bigram (Chen & Goodman; SRILM -ukndiscount): one discount
    D = n1 / (n1 + 2 n2) for bigrams; unigrams from continuation counts N1+(. w), undiscounted."""
    toks = [["<s>", *s.split(), "</s>"] for s in sentences]
    big = Counter((a, b) for t in toks for a, b in zip(t, t[1:]))
    n1, n2 = sum(c == 1 for c in big.values()), sum(c == 2 for c in big.values())
    d = n1 / (n1 + 2 * n2)
    hist = Counter()
    for (a, _), c in big.items():
        hist[a] += c
    cont = Counter(b for (_, b) in big)
    uni = {w: c / sum(cont.values()) for w, c in cont.items()}
    bi = {(a, b): (c - d) / hist[a] for (a, b), c in big.items()}
    bow = {a: (1 - sum(p for (x, _), p in bi.items() if x == a)) / (1 - sum(uni[b] for (x, b) in bi if x == a))
           for a in hist}
    return uni, bi, bow


def _prob(lm, history: tuple[str, ...], word: str) -> float:
    """P(word | history) by the back-off rule, written independently of ArpaLM.logprob."""
    h = history[len(history) - lm.order + 1:] if lm.order > 1 else ()
    scale = 1.0
    while (*h, word) not in lm.ngrams[len(h)]:
        if not h:
            return 0.0
        scale *= 10 ** lm.ngrams[len(h) - 1].get(h, (0.0, 0.0))[1]
        h = h[1:]
    return scale * 10 ** lm.ngrams[len(h)][(*h, word)][0]


def _check_normalised(lm) -> int:
    """Every context the model lists (and a few it does not) gives a distribution summing to 1."""
    words = [w for w in lm.vocab if w != "<s>"]
    contexts = {ng for order in lm.ngrams[:-1] for ng in order if ng[-1] != "</s>"}
    contexts |= {("zzz",), ("zzz", words[0])}
    for h in contexts:
        total = sum(_prob(lm, h, w) for w in words)
        assert math.isclose(total, 1.0, abs_tol=2e-5), (h, total)
    return len(contexts)


def test_bigram_matches_textbook_kneser_ney(tmp_path: Path) -> None:
    info = make_lm(TINY, 2, tmp_path / "lm.arpa")
    lm = read_arpa(tmp_path / "lm.arpa")
    uni, bi, bow = _textbook_kn_bigram(TINY)
    assert info["sentences"] == len(TINY) and info["ngrams"] == [len(uni) + 1, len(bi)]
    assert lm.ngrams[0][("<s>",)][0] == -99  # <s> is never predicted
    for w, p in uni.items():
        lp, b = lm.ngrams[0][(w,)]
        assert math.isclose(lp, math.log10(p), abs_tol=1e-6), w
        assert math.isclose(b, math.log10(bow[w]) if w in bow else 0.0, abs_tol=1e-6), w
    assert math.isclose(lm.ngrams[0][("<s>",)][1], math.log10(bow["<s>"]), abs_tol=1e-6)
    for ng, p in bi.items():
        assert math.isclose(lm.ngrams[1][ng][0], math.log10(p), abs_tol=1e-6), ng
    # a worked value: D = 1/(1 + 2*6) (1 bigram type seen once, 6 twice); P(b | a) = (c(a b) - D) / c(a .)
    assert math.isclose(10 ** lm.ngrams[1][("a", "b")][0], (3 - 1 / 13) / 5, rel_tol=1e-6)
    assert math.isclose(10 ** lm.logprob(("c",), "b"), 10 ** lm.ngrams[0][("c",)][1] * uni["b"], rel_tol=1e-6)
    _check_normalised(lm)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_every_context_sums_to_one(tmp_path: Path, order: int) -> None:
    rng = random.Random(order)
    text = [" ".join(rng.choice("pqrstuvwxyz") for _ in range(rng.randint(1, 7))) for _ in range(60)]
    make_lm(text, order, tmp_path / "lm.arpa")
    lm = read_arpa(tmp_path / "lm.arpa")
    assert lm.order == order
    assert _check_normalised(lm) > 12


def test_full_contexts_and_no_repeated_ngrams(tmp_path: Path) -> None:
    # 'a' is followed by a, b and </s>: nothing is left to back off to, the mass must stay in the context
    make_lm(["a a", "a b", "a", "b a", "b b", "b", "a a b", "b a a"], 3, tmp_path / "full.arpa")
    _check_normalised(read_arpa(tmp_path / "full.arpa"))
    # no bigram seen twice: a discount of 1 would give every seen bigram probability 0
    info = make_lm(["a b", "c d"], 2, tmp_path / "once.arpa")
    lm = read_arpa(tmp_path / "once.arpa")
    assert info["discounts"] == [0.0, 0.5]
    assert all(lp > -10 for ng, (lp, _) in lm.ngrams[1].items())
    _check_normalised(lm)


def test_text_file_vocab_and_unk(tmp_path: Path) -> None:
    (tmp_path / "text").write_text("utt1 a b z\nutt2 b a\nutt3\nutt4 a y a\n")
    (tmp_path / "words.txt").write_text("<eps> 0\n<unk> 1\na 2\nb 3\nc 4\n#0 5\n<s> 6\n</s> 7\n")
    info = make_lm(tmp_path / "text", 2, tmp_path / "lm.arpa", vocab=tmp_path / "words.txt")
    lm = read_arpa(tmp_path / "lm.arpa")
    assert (info["sentences"], info["tokens"], info["oov_tokens"]) == (3, 8, 2)
    assert set(lm.vocab) == {"<s>", "</s>", "a", "b", "<unk>"}  # keys dropped, z/y mapped, c unseen
    assert ("a", "<unk>") in lm.ngrams[1] and ("b", "<unk>") in lm.ngrams[1]
    lang = tmp_path / "lang"
    lang.mkdir()
    (lang / "words.txt").write_text("<eps> 0\n<UNK> 1\na 2\nb 3\n#0 4\n<s> 5\n</s> 6\n")
    (lang / "oov.txt").write_text("<UNK>\n")
    make_lm(tmp_path / "text", 2, tmp_path / "lm2.arpa", vocab=lang)  # a lang dir: its oov.txt word
    assert "<UNK>" in read_arpa(tmp_path / "lm2.arpa").vocab
    plain = make_lm(["utt1 a b"], 2, tmp_path / "lm3.arpa")  # sentences: no keys unless has_keys=True
    assert plain["tokens"] == 3


def test_make_lm_errors(tmp_path: Path) -> None:
    (tmp_path / "text").write_text("utt1 a b\nutt2 a </s> b\n")
    with pytest.raises(BabelflowError, match=r"text:2: '</s>' is reserved"):
        make_lm(tmp_path / "text", 2, tmp_path / "lm.arpa")
    with pytest.raises(BabelflowError, match="order must be at least 2"):
        make_lm(["a"], 1, tmp_path / "lm.arpa")
    with pytest.raises(BabelflowError, match="OOV word '<unk>' is not in the vocabulary"):
        make_lm(["a"], 2, tmp_path / "lm.arpa", vocab=["a", "b"])
    with pytest.raises(BabelflowError, match="no sentences"):
        make_lm(["", "  "], 2, tmp_path / "lm.arpa")
    with pytest.raises(BabelflowError, match="not found"):
        make_lm(tmp_path / "missing", 2, tmp_path / "lm.arpa")
    assert not (tmp_path / "lm.arpa").exists()


def test_read_arpa_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.arpa").write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1 a\n-1 b\n\n\\end\\\n")
    with pytest.raises(BabelflowError, match="do not match the header"):
        read_arpa(tmp_path / "bad.arpa")
    (tmp_path / "bad2.arpa").write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-x a\n\\end\\\n")
    with pytest.raises(BabelflowError, match=r"bad2.arpa:5: not a number"):
        read_arpa(tmp_path / "bad2.arpa")


def test_arpa_to_g_matches_kaldi(kaldi_fixtures: Path, tmp_path: Path) -> None:
    g = kaldi_fixtures / "graph"
    fst = arpa_to_g(g / "lm.arpa", g / "lang" / "words.txt", tmp_path / "G.fst")
    ref = read_fst(g / "lang" / "G.fst")
    assert (fst.num_states, ref.num_states) == (6, 6)  # arpa2fst's redundant unigram states are bypassed
    assert isomorphism_mismatch(fst, ref, delta=1e-5) is None
    assert isomorphism_mismatch(read_fst(tmp_path / "G.fst"), ref, delta=1e-5) is None


def test_arpa_to_g_skips_unknown_words(kaldi_fixtures: Path, tmp_path: Path, caplog) -> None:
    g = kaldi_fixtures / "graph"
    (tmp_path / "oov.arpa").write_text((g / "lm.arpa").read_text().replace("WON", "XYZ"))
    with caplog.at_level(logging.WARNING, logger="babelflow"):
        fst = arpa_to_g(tmp_path / "oov.arpa", g / "lang" / "words.txt")
    assert "1 n-grams skipped" in caplog.text and "XYZ" in caplog.text
    assert fst.num_states == 6
    (tmp_path / "words.txt").write_text("<eps> 0\na 1\n")
    with pytest.raises(BabelflowError, match="has no '#0'"):
        arpa_to_g(g / "lm.arpa", tmp_path / "words.txt")
    # kaldilm aborts the process on a malformed ARPA file: it must be caught before
    (tmp_path / "bad.arpa").write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1 <s>\nfoo\n\\end\\\n")
    with pytest.raises(BabelflowError, match=r"bad.arpa:6: expected a log-prob"):
        arpa_to_g(tmp_path / "bad.arpa", g / "lang" / "words.txt")
    (tmp_path / "nobos.arpa").write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1 WAN\n\\end\\\n")
    with pytest.raises(BabelflowError, match="no unigram '<s>'"):
        arpa_to_g(tmp_path / "nobos.arpa", g / "lang" / "words.txt")


def test_cli_make_lm_and_g(kaldi_fixtures: Path, tmp_path: Path) -> None:
    from babelflow.decode.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="cmd"))
    lang = kaldi_fixtures / "graph" / "lang"
    args = parser.parse_args(["make-lm", "--order", "2", "--vocab", str(lang), "--g-fst", str(tmp_path / "G.fst"),
                              str(kaldi_fixtures / "graph" / "text"), str(tmp_path / "lm.arpa")])
    args.func(args)
    lm = read_arpa(tmp_path / "lm.arpa")
    assert ("WAN", "TR") in lm.ngrams[1] and ("RAT", "NWA") in lm.ngrams[1]
    assert read_fst(tmp_path / "G.fst").num_states > 0
    args = parser.parse_args(["make-lm", "--g-fst", "x", str(kaldi_fixtures / "graph" / "text"), "y"])
    with pytest.raises(BabelflowError, match="--g-fst needs --vocab"):
        args.func(args)


def test_cli_module_is_light() -> None:
    heavy = "{'torch', 'kaldifst', 'kaldi_hmm_gmm', 'kaldilm', 'kaldingram', 'numpy'}"
    code = f"import sys, babelflow.decode.cli, babelflow.decode; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
