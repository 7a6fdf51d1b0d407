"""Decoding (decode/decoder.py, decode/decode_cli.py) against Kaldi's latgen-faster-mapped + score.sh fixtures."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from babelflow.decode import lattice
from babelflow.decode.decode_cli import decode_dir, read_words, register, score_decode_dir
from babelflow.decode.decoder import DecodeConfig, Decoder, gmm_loglikes, khg_transition_model
from babelflow.decode.fstio import fst_to_arrays, read_fst
from babelflow.decode.lattice import best_paths
from babelflow.decode.score import format_lattice, parse_lattices
from babelflow.errors import BabelflowError
from babelflow.kaldi.transition_model import read_transition_model

LMWTS = tuple(range(1, 13))  # what the fixture scored


@pytest.fixture(scope="module")
def fx(kaldi_fixtures) -> dict:
    """The fixture graph, transition model, log-likelihoods and Kaldi's outputs."""
    from babelflow.tables import read_matrices

    g = kaldi_fixtures / "graph"
    tm = read_transition_model(kaldi_fixtures / "am" / "lang0" / "final_adj.mdl")
    mats = dict(read_matrices(f"ark:{kaldi_fixtures / 'am' / 'lang0' / 'compute.final_adj.use-priors.txt'}"))
    return {"root": kaldi_fixtures, "graph": read_fst(g / "graph_nnet3" / "HCLG.fst"), "tm": tm, "mats": mats,
            "words": read_words(g / "graph_nnet3" / "words.txt"), "out": g / "decode_mapped"}


def best_costs(log: Path) -> dict[str, tuple[float, float, int]]:
    """lattice-best-path's 'For utterance U, best cost G + A = T over N frames.' lines."""
    pat = r"For utterance (\S+), best cost (\S+) \+ (\S+) = \S+ over (\d+) frames"
    return {u: (float(g), float(a), int(n)) for u, g, a, n in re.findall(pat, log.read_text())}


def int_table(path: Path) -> dict[str, list[int]]:
    return {f[0]: [int(x) for x in f[1:]] for f in (ln.split() for ln in path.read_text().splitlines())}


# ----------------------------------------------------------------------------- the decoder against Kaldi
def test_decode_matches_latgen_faster_mapped(fx):
    dec = Decoder(fx["graph"], fx["tm"], DecodeConfig(lmwts=LMWTS, wips=("0.0",)))
    words, ali = int_table(fx["out"] / "words.1.txt"), int_table(fx["out"] / "ali.1.txt")
    costs = best_costs(fx["out"] / "best_path.1.log")
    for utt, ll in fx["mats"].items():
        r = dec.decode(utt, ll)
        assert r.best.words == words[utt] and r.alignment.tolist() == ali[utt] and r.num_frames == costs[utt][2]
        np.testing.assert_allclose([r.best.graph_cost, r.best.acoustic_cost], costs[utt][:2], rtol=1e-5, atol=2e-5)
        assert r.lattice.determinized
        for lmwt in LMWTS:  # lattice-scale --inv-acoustic-scale=LMWT | lattice-best-path
            h = r.sweep[(lmwt, "0.0")]
            kaldi_words = (fx["out"] / "scoring" / f"{lmwt}.txt").read_text().splitlines()
            assert f"{utt} " + "".join(f"{fx['words'][w]} " for w in h.words) in kaldi_words
            g, a, _ = best_costs(fx["out"] / "scoring" / "log" / f"best_path.{lmwt}.log")[utt]
            np.testing.assert_allclose([h.graph_cost, h.acoustic_cost], [g, a], rtol=1e-5, atol=2e-5)


def test_word_insertion_penalty_counts_words(fx):
    dec = Decoder(fx["graph"], fx["tm"], DecodeConfig(lmwts=(1, 10), wips=("0.0", "2.5", "20")))
    r = dec.decode("en2", fx["mats"]["en2"])
    for lmwt in (1, 10):
        plain, pen = r.sweep[(lmwt, "0.0")], r.sweep[(lmwt, "2.5")]
        assert len(pen.words) <= len(plain.words)
        if pen.words == plain.words:
            assert pen.graph_cost == pytest.approx(plain.graph_cost + 2.5 * len(plain.words))
    assert r.sweep[(1, "0.0")].words == [7, 3, 5] and len(r.sweep[(1, "20")].words) < 3


def random_path(arrays, rng: np.random.Generator, max_frames: int = 120) -> tuple[list[int], list[int]] | None:
    """A random walk through HCLG from the start to a final state: (transition-ids, words)."""
    off = arrays.offsets()
    s, tids, words = arrays.start, [], []
    while len(tids) <= max_frames:
        if np.isfinite(arrays.final[s]) and len(tids) >= 20 and rng.random() < 0.3:
            return tids, words
        i = int(rng.integers(off[s], off[s + 1]))
        tids += [int(arrays.ilabel[i])] if arrays.ilabel[i] else []
        words += [int(arrays.olabel[i])] if arrays.olabel[i] else []
        s = int(arrays.dst[i])
    return None


def test_a_matrix_made_from_a_path_decodes_to_its_words(fx):
    """Likelihood 0 on the pdfs of a random path through the graph, -50 elsewhere: the decoder finds that pdf
    sequence, and words with the same pronunciations (WAN and WON are homophones)."""
    lex = {}
    for line in (fx["root"] / "graph" / "lexicon.txt").read_text().splitlines():
        w, *phones = line.split()
        lex[w] = phones
    pron = lambda ids: [p for i in ids for p in lex.get(fx["words"][i], [])]  # noqa: E731
    arrays, tid2pdf = fst_to_arrays(fx["graph"]), fx["tm"].transition_id_to_pdf()
    dec = Decoder(fx["graph"], fx["tm"], DecodeConfig(lmwts=(10,), wips=("0.0",)))
    rng, done = np.random.default_rng(1), 0
    while done < 6:
        path = random_path(arrays, rng)
        if path is None or not path[1]:
            continue
        tids, words = path
        ll = np.full((len(tids), fx["tm"].num_pdfs), -50.0, dtype=np.float32)
        ll[np.arange(len(tids)), tid2pdf[tids]] = 0.0
        r = dec.decode(f"walk{done}", ll)
        assert tid2pdf[r.alignment].tolist() == tid2pdf[tids].tolist()
        assert pron(r.best.words) == pron(words) and pron(r.sweep[(10, "0.0")].words) == pron(words)
        done += 1


def test_no_final_state_and_bad_input(fx):
    dec = Decoder(fx["graph"], fx["tm"], DecodeConfig(lmwts=(10,), wips=("0.0",)))
    short = fx["mats"]["en1"][:2]  # two frames: no word fits, no final state is reached
    assert dec.decode("short", short) is None
    partial = Decoder(fx["graph"], fx["tm"], DecodeConfig(lmwts=(10,), wips=("0.0",), allow_partial=True))
    assert partial.decode("short", short).num_frames == 2
    with pytest.raises(BabelflowError, match="the model has 18 pdfs"):
        dec.decode("bad", fx["mats"]["en1"][:, :17])


def test_khg_transition_model_without_a_tree(fx):
    from babelflow.gmm.model import to_khg_transition_model
    from babelflow.kaldi.tree import read_tree

    ref = to_khg_transition_model(fx["tm"], read_tree(fx["root"] / "lang0" / "tree")).__getstate__()
    got = khg_transition_model(fx["tm"]).__getstate__()
    assert [t.__getstate__() for t in got[0]] == [t.__getstate__() for t in ref[0]]
    assert got[2:6] == ref[2:6] and got[6] == ref[6]
    np.testing.assert_allclose(got[7], ref[7], atol=1e-6)


def test_lattice_text_round_trip(fx):
    dec = Decoder(fx["graph"], fx["tm"], DecodeConfig(lmwts=LMWTS, wips=("0.0", "1.0")))
    r = dec.decode("en2", fx["mats"]["en2"])
    (key, lat), = parse_lattices(format_lattice("en2", r.lattice))
    again = best_paths(lat, LMWTS, ("0.0", "1.0"))
    assert key == "en2" and {c: h.words for c, h in again.items()} == {c: h.words for c, h in r.sweep.items()}


def test_gmm_loglikes_match_khg_decodable(kaldi_fixtures):
    from babelflow.gmm.k2 import khg
    from babelflow.gmm.model import to_khg_am
    from babelflow.tables import read_matrices

    tm, am = random_gmm(kaldi_fixtures)
    x = dict(read_matrices(f"ark:{kaldi_fixtures / 'feats' / 'mfcc.txt'}"))["en1"]
    kam, ktm = to_khg_am(am), khg_transition_model(tm)
    dec = khg.DecodableAmDiagGmmScaled(kam, ktm, np.ascontiguousarray(x, np.float32), 0.1)
    tid2pdf = tm.transition_id_to_pdf()
    ref = np.array([[dec.log_likelihood(t, i) for i in range(1, tid2pdf.size)] for t in range(0, len(x), 7)])
    np.testing.assert_allclose(gmm_loglikes(am, x)[::7][:, tid2pdf[1:]], ref / 0.1, rtol=1e-5, atol=1e-3)


# ----------------------------------------------------------------------------- decode dirs
def random_gmm(root: Path):
    """lang0's transition model with a random 13-dim GMM per pdf (the fixture's GMM is untrained)."""
    from babelflow.gmm.model import AmDiagGmm, DiagGmm, read_gmm_model

    tm, rng = read_gmm_model(root / "lang0" / "final.mdl").transition_model, np.random.default_rng(0)
    pdfs = [DiagGmm.from_moments(rng.dirichlet(np.ones(1 + p % 3)), rng.normal(0, 5, (1 + p % 3, 13)),
                                 rng.uniform(20, 80, (1 + p % 3, 13))) for p in range(tm.num_pdfs)]
    return tm, AmDiagGmm(pdfs)


def data_dir(root: Path, out: Path) -> Path:
    out.mkdir(parents=True)
    (out / "wav.scp").write_text("".join(f"{u} {root / 'wav' / f'{u}.wav'}\n" for u in ("en1", "en2")))
    (out / "utt2spk").write_text("en1 en1\nen2 en2\n")
    (out / "spk2utt").write_text("en1 en1\nen2 en2\n")
    shutil.copy(root / "graph" / "text", out / "text")
    return out


def test_decode_dir_reproduces_kaldi_scoring(fx, tmp_path):
    root, out = fx["root"], tmp_path / "decode"
    m = decode_dir(str(root / "graph" / "graph_nnet3"), str(root / "am" / "lang0" / "final_adj.mdl"),
                   str(data_dir(root, tmp_path / "data")), str(out), DecodeConfig(lmwts=LMWTS), nj=2, workers=2,
                   loglikes=f"ark:{root / 'am' / 'lang0' / 'compute.final_adj.use-priors.txt'}")
    for lmwt in LMWTS:
        assert (out / "scoring_kaldi" / "penalty_0.0" / f"{lmwt}.txt").read_bytes() == \
            (fx["out"] / "scoring" / f"{lmwt}.txt").read_bytes()
        assert (out / f"wer_{lmwt}_0.0").read_text() == (fx["out"] / f"wer_{lmwt}").read_text()
        assert best_costs(out / "scoring_kaldi" / "penalty_0.0" / "log" / f"best_path.{lmwt}.log") == \
            best_costs(fx["out"] / "scoring" / "log" / f"best_path.{lmwt}.log")
    kaldi_best = (fx["out"] / "best_wer").read_text().rsplit(" ", 1)[0]
    assert (out / "scoring_kaldi" / "best_wer").read_text() == f"{kaldi_best} {out}/wer_2_0.0\n"
    assert (out / "num_jobs").read_text() == "2\n" and sorted(p.name for p in out.glob("lat.*.gz")) == \
        ["lat.1.gz", "lat.2.gz"]
    assert "en2 WAN TR \n" in (out / "log" / "decode.2.log").read_text()
    assert json.loads((out / "metrics.json").read_text()) == m
    assert (m["wer"], m["ser"], m["lmwt"], m["wip"], m["num_decoded"], m["model"]) == (25.0, 50.0, 2, "0.0", 2,
                                                                                      "loglikes")
    assert m["audio_seconds"] == 2.25 and m["rtf"] > 0
    # score.sh again, from the lattices, then (without lattices) from the hypotheses
    for p in [*out.glob("wer_*"), out / "scoring_kaldi" / "best_wer"]:
        p.unlink()
    again = score_decode_dir(str(tmp_path / "data"), str(root / "graph" / "graph_nnet3"), str(out), LMWTS,
                             ("0.0", "0.5", "1.0"))
    assert again["best_wer"] == m["best_wer"] and (out / "wer_1_0.0").read_text() == (fx["out"] / "wer_1").read_text()
    for p in out.glob("lat.*.gz"):
        p.unlink()
    assert score_decode_dir(str(tmp_path / "data"), "unused", str(out), LMWTS, ("0.0",))["wer"] == 25.0


def test_decode_dir_gmm(fx, tmp_path):
    from babelflow.gmm.features import GmmFeatureSpec, job_features
    from babelflow.gmm.model import GmmModel, write_gmm_model
    from babelflow.io import write_text

    root, gmm = fx["root"], tmp_path / "gmm"
    tm, am = random_gmm(root)
    write_gmm_model(gmm / "final.mdl", GmmModel(tm, am))
    GmmFeatureSpec.build(root / "conf" / "mfcc.conf", "", 0, 2).write(gmm)
    write_text(gmm / "delta_opts", "--delta-order=0 --delta-window=2\n")
    data = data_dir(root, tmp_path / "data")
    graph = root / "graph" / "graph_gmm"
    m = decode_dir(str(graph), str(gmm), str(data), str(tmp_path / "decode"), DecodeConfig(lmwts=(8, 12)),
                   nj=1, workers=1)
    assert (m["model"], m["num_decoded"], m["lmwt"] in (8, 12)) == ("gmm", 2, True)
    dec = Decoder(read_fst(graph / "HCLG.fst"), tm, DecodeConfig(lmwts=(8, 12)))
    feats = job_features(GmmFeatureSpec.read(gmm), data)
    words = read_words(graph / "words.txt")
    for lmwt in (8, 12):
        expect = "".join(f"{u} " + "".join(f"{words[w]} " for w in dec.decode(u, gmm_loglikes(am, f)).sweep[
            (lmwt, "0.0")].words) + "\n" for u, f in feats.items())
        assert (tmp_path / "decode" / "scoring_kaldi" / "penalty_0.0" / f"{lmwt}.txt").read_text() == expect


def test_decode_dir_nnet_model(fx, tmp_path):
    """A babelflow task model dir: features from the data dir's audio or from --feats-scp, then the network, give
    what decoding `babelflow compute`'s log-likelihoods gives."""
    import torch

    from babelflow.kaldi.transition_model import write_transition_model
    from babelflow.nnet.checkpoint import save_task_model
    from babelflow.nnet.infer import compute
    from babelflow.nnet.model import ModelConfig, MultiTaskModel, TaskSpec

    root, md = fx["root"], tmp_path / "model"
    cfg = ModelConfig.from_dict({"layers": [{"dim": 24, "splice": [-1, 0, 1]}, {"dim": 24, "splice": [-2, 0, 2]}],
                                 "frame_head": {"hidden": []}, "utterance_head": {"hidden": []}, "norm": None})
    torch.manual_seed(0)
    model = MultiTaskModel(cfg, 40, [TaskSpec("lang0", "frame", 18)], 0, ["output"]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    priors = np.random.default_rng(0).dirichlet(np.ones(18)).astype(np.float32)
    save_task_model(md, model, {"task": "lang0", "kind": "frame", "num_outputs": 18, "left_context": 3,
                                "right_context": 3, "input_dim": 40, "ivector_dim": 0, "feat_type": "fbank",
                                "cmvn_opts": "--norm-means=false --norm-vars=false", "labels": [],
                                "feature_conf": "", "priors": torch.from_numpy(priors), "prior_method": "counts"})
    write_transition_model(md / "trans.mdl", fx["tm"])
    (md / "conf").mkdir()
    shutil.copy(root / "conf" / "fbank.conf", md / "conf" / "fbank.conf")
    scp = tmp_path / "feats.scp"
    rows = [ln.split() for ln in (root / "lang0" / "feats.scp").read_text().splitlines()]
    scp.write_text("".join(f"{u} {root / rx}\n" for u, rx in rows))  # its paths are relative to the fixtures
    data, graph = data_dir(root, tmp_path / "data"), str(root / "graph" / "graph_nnet3")
    compute(md, f"scp:{scp}", f"ark:{tmp_path / 'll.ark'}")
    args = (graph, str(md), str(data))
    ref = decode_dir(*args, str(tmp_path / "ref"), nj=1, workers=1, loglikes=f"ark:{tmp_path / 'll.ark'}")
    scp_run = decode_dir(*args, str(tmp_path / "scp"), nj=1, workers=1, feats_scp=str(scp))
    wav_run = decode_dir(*args, str(tmp_path / "wav"), nj=1, workers=1)
    for run in ("scp", "wav"):
        for p in (tmp_path / "ref" / "scoring_kaldi").glob("penalty_*/*.txt"):
            assert (tmp_path / run / p.relative_to(tmp_path / "ref")).read_text() == p.read_text()
    assert scp_run["model"] == wav_run["model"] == "nnet"
    assert ref["best_wer"].split()[1] == scp_run["best_wer"].split()[1]
    assert wav_run["rtf_nnet"] > 0


def test_cli_registers_decode_and_score(fx, tmp_path):
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    root = fx["root"]
    data = data_dir(root, tmp_path / "data")
    args = p.parse_args(["decode", "--nj", "1", "--workers", "1", "--min-lmwt", "9", "--max-lmwt", "11",
                         "--word-ins-penalty", "0.0,1.0", "--loglikes",
                         f"ark:{root / 'am' / 'lang0' / 'compute.final_adj.use-priors.txt'}",
                         str(root / "graph" / "graph_nnet3"), str(root / "am" / "lang0" / "final_adj.mdl"),
                         str(data), str(tmp_path / "dec")])
    args.func(args)
    assert sorted(p.name for p in (tmp_path / "dec").glob("wer_*")) == [
        "wer_10_0.0", "wer_10_1.0", "wer_11_0.0", "wer_11_1.0", "wer_9_0.0", "wer_9_1.0"]
    args = p.parse_args(["score", "--min-lmwt", "5", "--max-lmwt", "5", str(data), str(root / "graph" / "graph_nnet3"),
                         str(tmp_path / "dec")])
    args.func(args)
    assert (tmp_path / "dec" / "wer_5_0.5").is_file()
    args = p.parse_args(["decode", "--nj", "1", "--workers", "1", "--skip-scoring", "--loglikes",
                         f"ark:{root / 'am' / 'lang0' / 'compute.final_adj.use-priors.txt'}",
                         str(root / "graph" / "graph_nnet3"), str(root / "am" / "lang0" / "final_adj.mdl"),
                         str(data), str(tmp_path / "skip")])
    args.func(args)
    assert "en1 WAN TR \n" in (tmp_path / "skip" / "log" / "decode.1.log").read_text()
    assert not list((tmp_path / "skip").glob("wer_*")) and "wer" not in json.loads(
        (tmp_path / "skip" / "metrics.json").read_text())
    with pytest.raises(BabelflowError, match="LM weight range"):
        p.parse_args(["score", "--min-lmwt", "5", "--max-lmwt", "4", "a", "b", "c"]).func(
            p.parse_args(["score", "--min-lmwt", "5", "--max-lmwt", "4", "a", "b", "c"]))


# ----------------------------------------------------------------------------- the raw lattice's two passes
def raw_lattice(fx, utt: str, flatten: float):
    """The sweep decoder's raw lattice of ``utt`` with its log-likelihoods scaled by ``flatten`` (a weaker model:
    a bushier lattice)."""
    import kaldi_decoder

    dec = Decoder(fx["graph"], fx["tm"], DecodeConfig())
    m = np.ascontiguousarray(fx["mats"][utt][:, dec.tid2pdf] * np.float32(0.1 * flatten))
    dec._simple.decode(kaldi_decoder.DecodableCtc(m))
    return dec._simple.get_raw_lattice()[1]


def test_lattice_arrays_read_every_arc(fx):
    """Against OpenFst's own text form of the lattice (fstprint: arcs "src dst in out g,a", finals "s g,a")."""
    lat = raw_lattice(fx, "en2", 0.3)
    start, finals, off, arcs = lattice.lattice_arrays(lat)
    want_arcs, want_finals = [], {}
    for line in lat.to_str().splitlines():
        f = line.split()
        if len(f) == 5:
            want_arcs.append((int(f[0]), int(f[2]), int(f[3]), *map(float, f[4].split(",")), int(f[1])))
        else:
            want_finals[int(f[0])] = [float(x) for x in f[1].split(",")]
    src = np.repeat(np.arange(len(off) - 1), np.diff(off))
    got = [(s, *a) for s, a in zip(src.tolist(), arcs.tolist())]
    assert start == lat.start and len(off) - 1 == lat.num_states and len(got) == len(want_arcs) > 100
    want_arcs.sort(key=lambda a: a[0])  # fstprint prints the start state first; arcs keep their order (stable)
    np.testing.assert_allclose(got, want_arcs, atol=1e-4)  # the text form prints 6 significant digits
    final = np.flatnonzero(np.isfinite(finals[:, 0])).tolist()
    assert final == sorted(want_finals)
    np.testing.assert_allclose(finals[final], [want_finals[s] for s in final], atol=1e-4)


@pytest.mark.parametrize("utt", ["en1", "en2"])
def test_frame_wise_costs_give_the_general_pass_word_lattice(fx, monkeypatch, utt):
    """The decoder's layout is recognised; forced frame-wise, forced through the general pass, and on the same
    lattice with its states shuffled (no layout: the general pass), the word lattices agree."""
    arrays = lattice.lattice_arrays(raw_lattice(fx, utt, 0.3))
    start, finals, off, arcs = arrays
    n = len(off) - 1
    src = np.repeat(np.arange(n), np.diff(off))
    assert lattice._layout(src, arcs["next"].astype(np.int64), arcs["ilabel"] != 0, n) is not None
    perm = np.random.default_rng(0).permutation(n)  # old state -> new
    order = np.argsort(perm[src], kind="stable")
    moved = arcs[order].copy()
    moved["next"] = perm[arcs["next"][order]]
    shuffled = (int(perm[start]), finals[np.argsort(perm)], np.concatenate([[0], np.cumsum(np.bincount(
        perm[src], minlength=n))]), moved)
    assert lattice._layout(np.sort(perm[src]), moved["next"].astype(np.int64), moved["ilabel"] != 0, n) is None
    got = {}
    for name, arrs, per_frame in (("frame-wise", arrays, 0), ("general", arrays, 10**9), ("shuffled", shuffled, 0)):
        monkeypatch.setattr(lattice, "lattice_arrays", lambda lat, a=arrs: a)
        monkeypatch.setattr(lattice, "ARCS_PER_FRAME", per_frame)
        got[name] = lattice.word_lattice(None, 0.1, 8.0)
    sweeps = {k: best_paths(w, LMWTS, ("0.0", "1.0")) for k, w in got.items()}
    for k in ("general", "shuffled"):
        assert {c: h.words for c, h in sweeps[k].items()} == {c: h.words for c, h in sweeps["frame-wise"].items()}
        for c, h in sweeps[k].items():
            assert [h.graph_cost, h.acoustic_cost] == pytest.approx(
                [sweeps["frame-wise"][c].graph_cost, sweeps["frame-wise"][c].acoustic_cost], abs=1e-9)
        assert sorted(a[0] for s in got[k].arcs for a in s) == sorted(a[0] for s in got["frame-wise"].arcs for a in s)
    assert len(got["frame-wise"].arcs) > 3  # a lattice worth determinizing


@pytest.mark.parametrize("direction", ["down", "any"])
def test_frame_wise_distances_with_epsilon_chains(direction):
    """A synthetic lattice in a decoder's layout whose frames have chains of epsilon arcs (the demo's lattices have
    none), linked to lower states only (``down``, as Kaldi mostly links them) or either way (``any``, along a
    random order of the frame): frames are recognised, the (frame, depth) order is topological, and the
    forward/backward costs equal the general pass's exactly. A cycle of epsilon arcs is no layout."""
    rng = np.random.default_rng(3)
    width, num_frames = 6, 40
    arcs: list[tuple[int, int, int, float]] = []  # (src, next, ilabel, cost)
    start = 0
    for f in range(num_frames):
        base = f * width
        rank = np.arange(width) if direction == "down" else rng.permutation(width)  # arcs go to a lower rank
        if f == 0:
            start = int(np.argmax(rank))  # its epsilon arcs reach the others of frame 0
        for k in range(width):
            lower = [j for j in range(width) if rank[j] < rank[k]]
            if lower and rng.random() < 0.7:
                arcs.append((base + k, base + int(rng.choice(lower)), 0, float(rng.normal())))
        if f + 1 < num_frames:
            for k in range(width):  # every state of the next frame is entered by an emitting arc
                arcs.append((base + int(rng.integers(width)), base + width + k, 1 + k, float(rng.normal())))
    arcs.sort(key=lambda a: a[0])
    src, nxt, ilabel, cost = (np.array(c) for c in zip(*arcs))
    n = num_frames * width
    fcost = np.full(n, np.inf)
    fcost[-width:] = rng.normal(size=width)
    layout = lattice._layout(src, nxt, ilabel != 0, n)
    assert layout is not None and layout[0].tolist() == (np.arange(n) // width).tolist()
    frame, depth = layout
    assert depth.max() >= 2  # chains
    pos = np.empty(n, dtype=np.int64)
    pos[np.lexsort((depth, frame))] = np.arange(n)
    assert (pos[nxt] > pos[src]).all()
    off = np.searchsorted(src, np.arange(n + 1))
    order = lattice.topological_order(off.tolist(), nxt.tolist())
    got = lattice._distances(start, src, nxt, cost, fcost, frame, depth)
    want = lattice._distances_by_order(start, off, nxt, cost, fcost, order)
    assert np.isfinite(got[0]).sum() > n // 2
    for g, w in zip(got, want):
        assert np.array_equal(g, w)
    loop = [(s, t) for s, t, i in zip(src.tolist(), nxt.tolist(), ilabel.tolist()) if i == 0][0]
    cyclic = np.concatenate([src, [loop[1]]]), np.concatenate([nxt, [loop[0]]]), np.concatenate([ilabel, [0]])
    by_src = np.argsort(cyclic[0], kind="stable")
    assert lattice._layout(*(c[by_src] for c in cyclic[:2]), cyclic[2][by_src] != 0, n) is None
