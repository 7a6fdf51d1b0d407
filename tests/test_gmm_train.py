"""Flat-start monophone GMM training and alignment (train_mono.sh, align_si.sh) without Kaldi.

Model files are checked byte for byte against real Kaldi output (``kaldi-fixtures/lang0``),
the numpy estimation against kaldi-hmm-gmm's port of Kaldi's own code, and a flat start on
the tiny espeak corpus (its demo lexicon, true phone alignments to compare with) for
validity, convergence, reproducibility and accuracy.
"""

from __future__ import annotations

import argparse
import gzip
import io
from pathlib import Path

import numpy as np
import pytest

from babelflow.gmm.align import accumulate
from babelflow.gmm.model import (
    AmDiagGmm,
    DiagGmm,
    GmmModel,
    from_khg_am,
    read_gmm_model,
    to_khg_am,
    to_khg_transition_model,
    transition_model_for_tree,
)
from babelflow.gmm.options import AlignOptions, MonoOptions, TriOptions
from babelflow.gmm.train import align, mle_update, split_by_count, split_targets, train_mono, update_transitions
from babelflow.gmm.train_cli import register
from babelflow.kaldi.alignments import AlignmentDir, read_int_vectors
from babelflow.kaldi.hmm_topology import read_topology
from babelflow.kaldi.tree import read_tree, tree_from_topology

# ----------------------------------------------------------------------------- model files vs Kaldi


def _bytes(model: GmmModel, binary: bool) -> bytes:
    buf = io.BytesIO()
    model.write(buf, binary)
    return buf.getvalue()


def test_model_files_are_kaldis_bytes(kaldi_fixtures):
    d = kaldi_fixtures / "lang0"
    kaldi_bin, kaldi_txt = (d / "0.mdl").read_bytes(), (d / "0.mdl.txt").read_bytes()
    model = read_gmm_model(d / "0.mdl")
    assert model.am.num_pdfs == 18 and model.am.dim == 13 and model.am.num_gauss == 18
    assert _bytes(model, True) == kaldi_bin
    assert _bytes(model, False) == kaldi_txt  # gmm-copy --binary=false
    assert _bytes(read_gmm_model(d / "0.mdl.txt"), False) == kaldi_txt
    # what gmm-init-mono builds without --train-feats: means 1, variances 1, gconst -(13 log 2pi + 13)/2
    topo = read_topology(d / "topo")
    tree = tree_from_topology(topo)
    assert tree == read_tree(d / "tree")
    tm = transition_model_for_tree(tree, topo)
    built = GmmModel(tm, AmDiagGmm.init_mono(tm.num_pdfs, np.ones(13), np.ones(13)))
    assert _bytes(built, True) == kaldi_bin
    assert built.am.pdfs[0].gconsts[0] == pytest.approx(-0.5 * (13 * np.log(2 * np.pi) + 13), rel=1e-6)


def test_khg_bridges_keep_parameters_and_trained_transitions(kaldi_fixtures):
    topo = read_topology(kaldi_fixtures / "lang0" / "topo")
    tree = tree_from_topology(topo)
    tm = transition_model_for_tree(tree, topo)
    counts = np.arange(tm.num_transition_ids + 1, dtype=np.float64) + 5
    trained = update_transitions(tm, counts)
    assert not np.array_equal(trained.log_probs, tm.log_probs)
    assert np.array_equal(np.float32(to_khg_transition_model(trained, tree).__getstate__()[6]), trained.log_probs)
    rng = np.random.default_rng(0)
    am = AmDiagGmm([DiagGmm.from_moments(np.full(n, 1 / n), rng.normal(size=(n, 3)), rng.uniform(0.5, 2, (n, 3)))
                    for n in (1, 2, 3)])
    back = from_khg_am(to_khg_am(am))
    for a, b in zip(am.pdfs, back.pdfs):
        assert np.array_equal(a.means_invvars, b.means_invvars) and np.array_equal(a.inv_vars, b.inv_vars)
    x = rng.normal(size=3).astype(np.float32)
    ll = np.float32(am.stacked()["w"][3:6] @ np.concatenate([x, x * x, [1]])).astype(np.float64)
    assert to_khg_am(am).log_likelihood(2, x) == pytest.approx(np.log(np.exp(ll).sum()), abs=1e-4)


# ----------------------------------------------------------------------------- estimation vs kaldi-hmm-gmm


def test_accumulate_and_update_match_kaldis_code():
    """gmm-acc-stats-ali + gmm-est (ML update with Gaussian removal) and the transition update, as Kaldi's C++."""
    from babelflow.gmm.k2 import khg

    rng = np.random.default_rng(0)
    am = AmDiagGmm([DiagGmm.from_moments(np.full(n, 1 / n), rng.normal(size=(n, 4)), rng.uniform(0.5, 2, (n, 4)))
                    for n in (1, 2, 3, 3)])
    x = rng.normal(size=(300, 4)).astype(np.float32)
    pdf = rng.integers(0, 3, size=300)
    pdf[:4] = 3  # too few frames: pdf 3 keeps one Gaussian
    kam, acc, flags = to_khg_am(am), khg.AccumAmDiagGmm(), khg.str_to_gmm_flags("mvw")
    acc.init(kam, flags)
    ref_like = sum(acc.accumulate_for_gmm(kam, x[t], int(pdf[t]), 1.0) for t in range(len(x)))
    stats, like = accumulate(am.stacked(), x, pdf)
    assert like == pytest.approx(ref_like, rel=1e-6)
    khg.mle_am_diag_gmm_update(khg.MleDiagGmmOptions(), acc, flags, kam)
    mine, occs = mle_update(am, stats)
    assert occs.tolist() == pytest.approx(np.bincount(pdf).tolist())
    for a, b in zip(mine.pdfs, from_khg_am(kam).pdfs):
        assert a.num_gauss == b.num_gauss
        np.testing.assert_allclose(a.weights, b.weights, rtol=1e-6)
        np.testing.assert_allclose(a.means_invvars, b.means_invvars, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.inv_vars, b.inv_vars, rtol=1e-5)
    assert mine.pdfs[3].num_gauss == 1


def test_mixup_follows_kaldis_split_targets_and_is_seeded():

    rng = np.random.default_rng(1)
    occs = np.array([400.0, 90.0, 5.0, 1000.0, 0.0])
    am = AmDiagGmm([DiagGmm.from_moments(np.ones(1), rng.normal(size=(1, 3)), np.ones((1, 3))) for _ in occs])
    targets = split_targets(occs, 12, 0.25, 20.0)
    assert sum(targets) == 12 and targets[2] == targets[4] == 1  # 5 frames and 0 frames: too few to split
    kam = to_khg_am(am)
    kam.split_by_count(occs.astype(np.float32), 12, 0.01, 0.25, 20.0)
    assert [kam.get_pdf(i).num_gauss for i in range(len(occs))] == targets
    a, b = (split_by_count(am, occs, 12, np.random.default_rng(7), 0.01, 0.25) for _ in range(2))
    c = split_by_count(am, occs, 12, np.random.default_rng(8), 0.01, 0.25)
    assert all(np.array_equal(x.means_invvars, y.means_invvars) for x, y in zip(a.pdfs, b.pdfs))
    assert not np.array_equal(a.pdfs[0].means_invvars, c.pdfs[0].means_invvars)
    assert a.pdfs[3].weights.sum() == pytest.approx(1.0) and np.allclose(a.pdfs[3].variances, 1.0, rtol=1e-6)


# ----------------------------------------------------------------------------- flat start on the tiny corpus


@pytest.fixture(scope="module")
def flat_start(tiny_corpus, tmp_path_factory):
    """en of the tiny corpus: lang from its demo lexicon; mono trained twice (2 worker processes / in-process),
    once with another seed, and the equal alignment alone (num_iters=1)."""
    from babelflow.gmm.lang import prepare_lang

    root = tmp_path_factory.mktemp("gmm")
    lexicon = tiny_corpus / "en" / "dict" / "lexicon.txt"
    if not lexicon.is_file():
        pytest.skip("the demo corpus has no lexicon")
    prepare_lang(lexicon, root / "lang", add_oov=True)
    data = tiny_corpus / "en" / "data"
    runs = {"a": (MonoOptions(), 2), "b": (MonoOptions(), -1), "seed1": (MonoOptions(seed=1), -1),
            "equal": (MonoOptions(num_iters=1), -1)}
    info = {name: train_mono(data, root / "lang", root / name, opts, nj=2, workers=workers, progress=False)
            for name, (opts, workers) in runs.items()}
    return root, tiny_corpus / "en", info


def test_mono_dir_layout_and_kaldi_readers(flat_start):
    root, corpus, info = flat_start
    out = root / "a"
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"final.mdl", "tree", "final.occs", "num_jobs", "phones.txt", "ali.1.gz", "ali.2.gz", "cmvn_opts",
            "delta_opts", "conf/mfcc.conf", "log/train.tsv", "log/train.log", "info/num_pdfs", "info/num_gauss",
            "info/feat_dim", "info/frames"} <= names
    assert (out / "num_jobs").read_text() == "2\n" and (out / "info" / "feat_dim").read_text() == "39\n"
    assert (out / "final.mdl").read_bytes()[:2] == b"\0B" and (out / "tree").read_bytes()[:2] == b"\0B"
    model = read_gmm_model(out / "final.mdl")
    assert model.am.num_gauss == info["a"]["num_gauss"] > model.am.num_pdfs == info["a"]["num_pdfs"]
    ali = AlignmentDir(out)
    pdfs = dict(ali.pdf_alignments())
    assert len(pdfs) == info["a"]["num_utts"] == 16 and sum(map(len, pdfs.values())) == info["a"]["frames"]
    assert all(p.max() < model.am.num_pdfs for p in pdfs.values())
    with gzip.open(out / "ali.1.gz") as f:
        assert f.read(1)  # a plain gzip of a binary archive (Kaldi reads it with gunzip -c)
    assert dict(read_int_vectors(f"ark:gunzip -c {out / 'ali.1.gz'} |")).keys() <= pdfs.keys()


def _transitions(tm):
    """Per transition-id: phone, HMM state, destination state, and the phone's final (non-emitting) state."""
    rows = [(0, 0, 0, 0)]
    for phone, state, _, _ in tm.tuples:
        entry = tm.topology.entry_for_phone(phone)
        rows += [(phone, state, dst, len(entry) - 1) for dst, _ in entry[state].transitions]
    return rows


def test_alignments_are_valid_hmm_paths(flat_start):
    root, _, _ = flat_start
    check_hmm_paths(AlignmentDir(root / "a"))


def check_hmm_paths(ali: AlignmentDir) -> None:
    """Every utterance's transition-ids walk the topology: phones entered at state 0, one forward arc per
    state visit (on its first frame, Kaldi's reordering), the utterance ending at a phone's end."""
    table = _transitions(ali.transition_model)
    for key, tids in ali.transition_alignments():
        # per visit of an HMM state: [phone, state, final state, forward arcs' destinations]; with Kaldi's
        # reordering the forward arc comes on the visit's first frame, the self-loops after it
        runs: list[list] = []
        for t in tids.tolist():
            phone, state, dst, final = table[t]
            if not runs or runs[-1][:2] != [phone, state]:
                runs.append([phone, state, final, []])
            if dst != state:
                runs[-1][3].append(dst)
        assert runs[0][1] == 0, key
        for (phone, state, final, dests), nxt in zip(runs, runs[1:] + [None]):
            assert len(dests) == 1, (key, phone, state)  # one forward arc per visit (the rest are self-loops)
            if dests[0] == final:  # the phone ends: the next visit starts a phone
                assert nxt is None or nxt[1] == 0, key
            else:
                assert nxt is not None and nxt[:2] == [phone, dests[0]], key
        assert runs[-1][3] == [runs[-1][2]], key  # the utterance ends at a phone's end


def test_loglike_rises_and_runs_are_reproducible(flat_start):
    root, _, _ = flat_start
    lines = (root / "a" / "log" / "train.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:4] == ["iter", "avg_loglike", "num_gauss", "realigned"]
    rows = [line.split("\t") for line in lines[1:]]
    like = [float(r[1]) for r in rows]
    assert len(rows) == 40 and sum(r[3] == "yes" for r in rows) == 21
    assert like[-1] > like[0] + 10
    for x in range(31, 39):  # after the last Gaussian increase: plain EM on the same alignment, or realignment
        if rows[x + 1][3] == "no":
            assert like[x + 1] >= like[x] - 0.01, x
    assert int(rows[-1][2]) > int(rows[0][2])  # mixed up
    files = ["final.mdl", "tree", "final.occs", "ali.1.gz", "ali.2.gz", "log/train.tsv", "info/avg_loglike"]
    for name in files:  # 2 worker processes and none: the same bytes
        assert (root / "a" / name).read_bytes() == (root / "b" / name).read_bytes(), name
    assert (root / "a" / "final.mdl").read_bytes() != (root / "seed1" / "final.mdl").read_bytes()


def _phones(d: Path) -> dict[str, np.ndarray]:
    ali = AlignmentDir(d)
    t2p = ali.transition_model.transition_id_to_phone()
    return {k: np.array([ali.phones[p] for p in t2p[v]]) for k, v in ali.transition_alignments()}


def _boundaries(phones: np.ndarray) -> list[int]:
    """Start and end frame of every non-silence phone, in order."""
    cut = np.flatnonzero(phones[1:] != phones[:-1]) + 1
    starts, ends = np.concatenate([[0], cut]), np.concatenate([cut, [len(phones)]])
    return [b for s, e in zip(starts, ends) if phones[s] != "sil" for b in (s, e)]


def agreement(ref: dict[str, np.ndarray], hyp: dict[str, np.ndarray]) -> tuple[float, float]:
    """Frames with the same phone (by name), and phone boundaries within 20 ms (2 frames)."""
    same = total = 0
    near: list[bool] = []
    for key, r in ref.items():
        h = hyp[key]
        assert len(h) == len(r), key
        same += int((h == r).sum())
        total += len(r)
        rb, hb = _boundaries(r), _boundaries(h)
        if len(rb) == len(hb):
            near += [abs(a - b) <= 2 for a, b in zip(rb, hb)]
    return same / total, float(np.mean(near))


def test_mono_alignment_is_far_better_than_equal(flat_start):
    root, corpus, _ = flat_start
    truth = _phones(corpus / "ali")
    mono, equal = agreement(truth, _phones(root / "a")), agreement(truth, _phones(root / "equal"))
    print(f"frame agreement mono {mono[0]:.3f} / equal {equal[0]:.3f}; "
          f"boundaries within 20 ms mono {mono[1]:.3f} / equal {equal[1]:.3f}")
    assert mono[0] > equal[0] + 0.15 and mono[0] > 0.4
    assert mono[1] > equal[1] + 0.1


def test_align_si_with_the_trained_model(flat_start, tmp_path):
    root, corpus, info = flat_start
    out = tmp_path / "ali"
    got = align(corpus / "data", root / "lang", root / "a", out, AlignOptions(), nj=2, workers=-1)
    assert got["num_aligned"] == 16 and got["num_failed"] == 0
    assert (out / "final.mdl").read_bytes() == (root / "a" / "final.mdl").read_bytes()
    assert (out / "tree").read_bytes() == (root / "a" / "tree").read_bytes()
    truth = _phones(corpus / "ali")
    assert agreement(truth, _phones(out))[0] > agreement(truth, _phones(root / "equal"))[0] + 0.15


def test_cli_and_options():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    stages = register(sub)
    assert {"mono", "tri"} <= set(stages.choices)
    opts = MonoOptions(totgauss=500, realign_iters=[1, 2, 5], boost_silence=1.5, mfcc_config="conf/m.conf")
    args = p.parse_args(["train-gmm", "mono", *opts.to_args(), "--nj=3", "d", "l", "o"])
    assert (args.data, args.lang, args.out, args.nj, args.workers) == ("d", "l", "o", 3, 0)
    assert MonoOptions.from_args(args) == opts
    tri = TriOptions(num_leaves=300, totgauss=900, realign_iters=[5], thresh=100.0)
    args = p.parse_args(["train-gmm", "tri", *tri.to_args(), "--workers=-1", "d", "l", "a", "o"])
    assert (args.ali_dir, args.out, args.nj, args.workers) == ("a", "o", 4, -1) and TriOptions.from_args(args) == tri
    args = p.parse_args(["align-gmm", "--beam=12", "d", "l", "m", "o"])
    assert AlignOptions.from_args(args) == AlignOptions(beam=12.0) and args.model_dir == "m" and args.nj == 4
    assert MonoOptions.param_paths()["num_iters"] == "gmm.mono.num_iters"
    assert AlignOptions.param_paths()["beam"] == "gmm.align.beam"
    assert TriOptions.param_paths()["num_leaves"] == "gmm.tri.num_leaves"
    for cls in (MonoOptions, TriOptions, AlignOptions):  # how a stage runs is not a params key
        assert not {"nj", "workers"} & set(cls.param_paths())


def test_options_module_is_light():
    """The Snakefile imports the options: no numpy, no k2-fsa."""
    import subprocess
    import sys

    code = "import sys, babelflow.gmm.options, babelflow.gmm.train_cli; print(sorted({'numpy', 'kaldifst', " \
           "'kaldi_hmm_gmm'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
