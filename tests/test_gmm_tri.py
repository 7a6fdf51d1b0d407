"""Triphone GMM training (train_deltas.sh) without Kaldi, from the mono alignments of the tiny espeak corpus:
a valid Kaldi tri dir (tree N=3/P=1 within num_leaves, model and alignments Kaldi's readers take), valid
HMM paths for the new TransitionModel, rising likelihood, byte-reproducibility, and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from babelflow.errors import BabelflowError
from babelflow.gmm.model import read_gmm_model, transition_model_for_tree
from babelflow.gmm.options import AlignOptions, MonoOptions, TriOptions
from babelflow.gmm.train import align, train_mono
from babelflow.gmm.train_tri import train_tri
from babelflow.kaldi.alignments import AlignmentDir
from babelflow.kaldi.hmm_topology import read_topology
from babelflow.kaldi.tree import read_tree

from .test_gmm_train import _phones, agreement, check_hmm_paths

TINY = TriOptions(num_leaves=40, totgauss=100, thresh=50.0)  # 16 utterances (3000 frames): a small tree


@pytest.fixture(scope="module")
def tri(tiny_corpus, tmp_path_factory):
    """en of the tiny corpus: lang, mono (nj=2), mono_ali; tri twice (2 worker processes / in-process), once
    with another seed, once with 3 jobs over the 2-job alignment dir (3 passes)."""
    from babelflow.gmm.lang import prepare_lang

    root = tmp_path_factory.mktemp("tri")
    lexicon = tiny_corpus / "en" / "dict" / "lexicon.txt"
    if not lexicon.is_file():
        pytest.skip("the demo corpus has no lexicon")
    prepare_lang(lexicon, root / "lang", add_oov=True)
    data = tiny_corpus / "en" / "data"
    train_mono(data, root / "lang", root / "mono", MonoOptions(), nj=2, workers=-1, progress=False)
    align(data, root / "lang", root / "mono", root / "mono_ali", AlignOptions(), nj=2, workers=-1)
    runs = {"a": (TINY, 2, 2), "b": (TINY, 2, -1), "seed1": (TriOptions(**{**vars(TINY), "seed": 1}), 2, -1),
            "nj3": (TriOptions(**{**vars(TINY), "num_iters": 3}), 3, -1)}
    info = {name: train_tri(data, root / "lang", root / "mono_ali", root / name, opts, nj=nj, workers=workers,
                            progress=False) for name, (opts, nj, workers) in runs.items()}
    return root, tiny_corpus / "en", info


def test_tri_dir_layout_tree_and_model(tri):
    root, _, info = tri
    out = root / "a"
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"final.mdl", "tree", "final.occs", "num_jobs", "phones.txt", "ali.1.gz", "ali.2.gz", "questions.int",
            "cmvn_opts", "delta_opts", "conf/mfcc.conf", "log/train.tsv", "log/tree.tsv", "log/train.log",
            "info/num_leaves", "info/num_gauss", "info/avg_loglike"} <= names
    tree, model = read_tree(out / "tree"), read_gmm_model(out / "final.mdl")
    assert (tree.context_width, tree.central_position) == (3, 1)
    topo = read_topology(root / "lang" / "topo")
    assert 3 * len(topo.phones) > tree.num_pdfs == info["a"]["num_leaves"] > len(topo.phones)  # fewer than mono's
    assert tree.num_pdfs <= TINY.num_leaves
    assert model.am.num_pdfs == model.transition_model.num_pdfs == tree.num_pdfs
    assert model.transition_model.tuples == transition_model_for_tree(tree, topo).tuples
    assert model.am.num_gauss == info["a"]["num_gauss"] > tree.num_pdfs
    report = dict(line.split("\t") for line in (out / "log" / "tree.tsv").read_text().splitlines()[1:])
    assert int(report["num_leaves"]) == tree.num_pdfs and int(report["split_leaves"]) <= TINY.num_leaves
    assert float(report["like_impr"]) > 0 and int(report["stub_leaves"]) < int(report["split_leaves"])
    assert (out / "questions.int").read_text().count("\n") == int(report["questions"])


def test_tri_alignments_read_back_and_are_valid_paths(tri):
    root, corpus, info = tri
    ali = AlignmentDir(root / "a")
    assert ali.transition_model == read_gmm_model(root / "a" / "final.mdl").transition_model
    check_hmm_paths(ali)
    pdfs = dict(ali.pdf_alignments())
    assert len(pdfs) == info["a"]["num_aligned"] == 16 and sum(map(len, pdfs.values())) == info["a"]["frames"]
    assert np.unique(np.concatenate(list(pdfs.values()))).size > 0.9 * ali.num_pdfs  # the leaves are used
    truth = _phones(corpus / "ali")
    tri_agree, mono_agree = agreement(truth, _phones(root / "a")), agreement(truth, _phones(root / "mono_ali"))
    print(f"frame agreement tri {tri_agree[0]:.3f} / mono {mono_agree[0]:.3f}; "
          f"boundaries within 20 ms tri {tri_agree[1]:.3f} / mono {mono_agree[1]:.3f}")
    assert tri_agree[0] > mono_agree[0] - 0.05 and tri_agree[0] > 0.6


def test_tri_loglike_rises_and_runs_are_reproducible(tri):
    root, _, info = tri
    lines = (root / "a" / "log" / "train.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in lines[1:]]
    like = [float(r[1]) for r in rows]
    assert [int(r[0]) for r in rows] == list(range(1, 35)) and [r[0] for r in rows if r[3] == "yes"] == \
        ["10", "20", "30"]
    assert like[-1] > like[0] + 1 and like[0] < like[9] < like[19] < like[29] < like[-1]  # realigned at 10, 20, 30
    for x in range(TINY.max_iter_inc, 33):  # after the last Gaussian increase: EM on fixed alignments (with
        if rows[x + 1][3] == "no":  # Kaldi's removal and re-splitting of low-count Gaussians) hardly loses
            assert like[x + 1] >= like[x] - 0.05, x
    files = ["final.mdl", "tree", "final.occs", "ali.1.gz", "ali.2.gz", "questions.int", "log/train.tsv",
             "log/tree.tsv", "info/avg_loglike"]
    for name in files:  # 2 worker processes and none: the same bytes
        assert (root / "a" / name).read_bytes() == (root / "b" / name).read_bytes(), name
    assert (root / "a" / "tree").read_bytes() == (root / "seed1" / "tree").read_bytes()  # the tree is not random
    assert (root / "a" / "final.mdl").read_bytes() != (root / "seed1" / "final.mdl").read_bytes()


def test_tri_with_other_number_of_jobs(tri):
    root, _, info = tri
    assert (root / "nj3" / "num_jobs").read_text() == "3\n" and info["nj3"]["num_aligned"] == 16
    assert sum(1 for _ in AlignmentDir(root / "nj3").transition_alignments()) == 16
    assert (root / "nj3" / "log" / "train.log").read_text() == ""  # every utterance found, converted and aligned


def test_tri_cli_and_wrong_lang(tri, tmp_path, capsys):
    from babelflow.cli import main
    from babelflow.gmm.lang import prepare_lang

    root, corpus, _ = tri
    data, out = corpus / "data", tmp_path / "tri"
    argv = ["train-gmm", "tri", "--quiet", "--workers=-1", "--nj=2", "--num-iters=2", "--num-leaves=30",
            "--totgauss=60", "--thresh=50", str(data), str(root / "lang"), str(root / "mono_ali"), str(out)]
    assert main(argv) == 0
    assert read_tree(out / "tree").num_pdfs <= 30 and (out / "log" / "train.tsv").read_text().count("\n") == 2
    prepare_lang(corpus / "dict" / "lexicon.txt", tmp_path / "lang5", add_oov=True, num_sil_states=5)
    with pytest.raises(BabelflowError, match="topology"):
        train_tri(data, tmp_path / "lang5", root / "mono_ali", tmp_path / "bad", TINY, nj=2, workers=-1,
                  progress=False)
    assert not (tmp_path / "bad").exists()
    assert main([a if a != "--nj=2" else "--nj=0" for a in argv]) == 1 and "--nj" in capsys.readouterr().err
