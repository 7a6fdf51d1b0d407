"""Per-task models: split, priors, compute (= the multi-task head minus log priors), safety."""

from __future__ import annotations

import pickle
import shutil

import kaldiio
import numpy as np
import pytest
import torch

from babelflow.egs.reader import EgsDir
from babelflow.errors import BabelflowError
from babelflow.nnet.checkpoint import load_model, load_task_model
from babelflow.nnet.export import export_kaldi_dir
from babelflow.nnet.infer import compute, padded
from babelflow.nnet.modeldir import ModelDir
from babelflow.nnet.report import evaluate_task_model
from babelflow.nnet.taskmodel import average_posteriors, compute_priors, count_priors, split_model

from . import test_train

merged, trained = test_train.merged, test_train.trained  # module fixtures reused

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def en_model(trained, tiny_corpus, tiny_features, tmp_path_factory):
    out, _ = trained
    d = tmp_path_factory.mktemp("models") / "en"
    split_model(out / "final.pt", "en", d, tiny_features / "feats" / "en", str(tiny_corpus / "en" / "ali"))
    return d


def test_split_is_self_contained(en_model, trained):
    model, blob = load_task_model(en_model)
    assert blob["kind"] == "frame" and blob["num_outputs"] == model.tasks[0].num_outputs
    assert (blob["left_context"], blob["right_context"]) == (3, 3)
    assert blob["cmvn_opts"] == "--norm-means=false --norm-vars=false"
    assert "--num-mel-bins=40" in blob["feature_conf"] and (en_model / "conf" / "fbank.conf").is_file()
    assert (en_model / "trans.mdl").is_file() and list(model.heads) == ["output"]
    multi, _ = load_model(trained[0] / "final.pt")
    x = torch.randn(2, 20, 40)
    assert torch.allclose(multi.eval()(x, 0), model(x, 0), atol=1e-6)  # the head of output-0, renamed


def test_priors_are_average_posteriors(en_model):
    r = compute_priors(en_model, num_egs=100000)
    model, blob = load_task_model(en_model)
    priors = blob["priors"].numpy()
    assert abs(priors.sum() - 1) < 1e-5 and (priors > 0).all() and r["frames"] > 100
    assert r["kl_from_counts"] >= 0
    counts = compute_priors(en_model, method="counts")
    assert counts["kl_from_counts"] == pytest.approx(0.0, abs=1e-9)
    _, blob = load_task_model(en_model)
    np.testing.assert_allclose(blob["priors"].numpy(), count_priors(EgsDir(blob["egs_dir"]), 1e-8), rtol=1e-5)
    compute_priors(en_model)  # back to posterior priors for the next tests


def test_priors_and_eval_batched_equal_one_eg_per_pass(en_model, tmp_path):
    """Priors and eval batch egs by length within --batch-frames: the same figures as one eg per
    forward pass (priors to 1e-6: float summation order; accuracies exactly), on the CPU."""
    egs = EgsDir(load_task_model(en_model)[1]["egs_dir"])
    model, _ = load_task_model(en_model)
    one = 3 + 3 + int(egs.info["frames_per_eg"])  # one eg's input frames: one eg per pass
    p_one, n_one = average_posteriors(model, egs, 100000, batch_frames=one)
    p_all, n_all = average_posteriors(model, egs, 100000)
    assert n_one == n_all > 100
    np.testing.assert_allclose(p_all, p_one, atol=1e-6, rtol=0)
    m_one = evaluate_task_model(en_model, tmp_path / "one", batch_frames=one, device="cpu")
    m_all = evaluate_task_model(en_model, tmp_path / "all", device="cpu")
    assert m_one == m_all
    assert (tmp_path / "one" / "per_pdf.tsv").read_text() == (tmp_path / "all" / "per_pdf.tsv").read_text()


def test_compute_equals_multitask_head_minus_log_priors(en_model, trained, tiny_features, tmp_path):
    feats_scp = tiny_features / "feats" / "en" / "feats.scp"
    out = tmp_path / "loglik.ark"
    n = compute(en_model, f"scp:{feats_scp}", f"ark:{out}")
    assert n == 16
    multi, _ = load_model(trained[0] / "final.pt")
    multi.eval()
    _, blob = load_task_model(en_model)
    log_prior = np.log(blob["priors"].numpy())
    ours = dict(kaldiio.load_ark(str(out)))
    for utt, m in list(kaldiio.load_scp(str(feats_scp)).items())[:4]:
        x = torch.from_numpy(padded(np.asarray(m, np.float32), 3, 3))[None]  # Kaldi's edge padding
        direct = multi(x, 0)[0].detach().numpy() - log_prior
        assert ours[utt].shape == (m.shape[0], blob["num_outputs"])
        np.testing.assert_allclose(ours[utt], direct, atol=1e-5)
    compute(en_model, f"scp:{feats_scp}", f"ark:{tmp_path / 'post.ark'}", use_priors=False)
    post = dict(kaldiio.load_ark(str(tmp_path / "post.ark")))
    np.testing.assert_allclose(np.exp(post[utt]).sum(axis=1), 1.0, atol=1e-4)


def test_utterance_task_labels(trained, tiny_features, tmp_path):
    d = tmp_path / "lang"
    split_model(trained[0] / "final.pt", "lang", d, tiny_features / "feats" / "en")
    _, blob = load_task_model(d)
    assert blob["labels"] == ["de", "en"]
    with pytest.raises(BabelflowError, match="priors are for frame tasks"):
        compute_priors(d)
    labels = tmp_path / "labels.txt"
    feats = f"scp:{tiny_features / 'feats' / 'en' / 'feats.scp'}"
    compute(d, feats, f"ark:{tmp_path / 'p.ark'}", labels_out=str(labels))
    lines = labels.read_text().split("\n")
    assert len([x for x in lines if x]) == 16 and all(x.split()[1] in ("de", "en") for x in lines if x)
    for _, p in kaldiio.load_ark(str(tmp_path / "p.ark")):
        assert p.shape == (1, 2) and abs(p.sum() - 1) < 1e-5
    metrics = evaluate_task_model(d)
    assert set(metrics) >= {"valid_accuracy", "baseline_accuracy"} and (d / "eval" / "confusion.png").is_file()
    assert evaluate_task_model(d, tmp_path / "one", batch_frames=1) == metrics  # one utterance per pass
    one = dict(kaldiio.load_ark(str(tmp_path / "p.ark")))
    compute(d, feats, f"ark:{tmp_path / 'p1.ark'}", batch_frames=0)
    for utt, p in kaldiio.load_ark(str(tmp_path / "p1.ark")):
        np.testing.assert_allclose(p, one[utt], atol=1e-5, rtol=0)


def test_eval_report_frame_task(en_model):
    metrics = evaluate_task_model(en_model)
    assert metrics["valid_accuracy"] > metrics["baseline_accuracy"]
    table = (en_model / "eval" / "per_pdf.tsv").read_text().splitlines()
    assert table[0] == "pdf\tframes\taccuracy" and len(table) == 1 + load_task_model(en_model)[1]["num_outputs"]


def test_bad_inputs(en_model, tmp_path):
    with kaldiio.WriteHelper(f"ark:{tmp_path / 'bad.ark'}") as w:
        w["u1"] = np.zeros((20, 13), np.float32)
    with pytest.raises(BabelflowError, match="utterance 'u1' has feature dim 13, the model expects 40"):
        compute(en_model, f"ark:{tmp_path / 'bad.ark'}", f"ark:{tmp_path / 'o.ark'}")
    assert not (tmp_path / "o.ark").exists()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.pt").write_bytes(b"not a model at all")
    with pytest.raises(BabelflowError, match="not a babelflow task model"):
        load_task_model(tmp_path / "junk")


class _Evil:
    def __reduce__(self):
        return (open, ("/tmp/babelflow-pwned", "w"))


def test_tampered_model_executes_nothing(en_model, tmp_path):
    import os

    blob = torch.load(en_model / "model.pt", weights_only=True)
    blob["evil"] = _Evil()
    (tmp_path / "t").mkdir()
    with open(tmp_path / "t" / "model.pt", "wb") as f:
        torch.save(blob, f, pickle_module=pickle)
    if os.path.exists("/tmp/babelflow-pwned"):
        os.unlink("/tmp/babelflow-pwned")
    with pytest.raises(BabelflowError, match="refusing to load it"):
        load_task_model(tmp_path / "t")
    assert not os.path.exists("/tmp/babelflow-pwned")


def _ali_copy(tiny_corpus, dest, tree: bytes | None):
    """The en alignment dir, with the given tree (or none, whatever the demo corpus wrote)."""
    shutil.copytree(tiny_corpus / "en" / "ali", dest)
    (dest / "tree").unlink(missing_ok=True)
    if tree is not None:
        (dest / "tree").write_bytes(tree)
    return dest


def test_model_dir_and_export_carry_the_tree(trained, tiny_corpus, tiny_features, kaldi_fixtures, tmp_path):
    """mkgraph.sh needs the alignment dir's tree beside final.mdl: split and export copy it byte for byte."""
    tree = (kaldi_fixtures / "lang0" / "tree").read_bytes()
    ali = _ali_copy(tiny_corpus, tmp_path / "ali", tree)
    d = tmp_path / "models" / "en"
    info = split_model(trained[0] / "final.pt", "en", d, tiny_features / "feats" / "en", str(ali))
    md = ModelDir(d)
    assert info["has_tree"] and md.has_tree and md.tree.read_bytes() == tree
    assert (d / "info" / "has_tree").read_text() == "true\n"
    out = export_kaldi_dir(d, tmp_path / "kaldi" / "en")
    assert (tmp_path / "kaldi" / "en" / "tree").read_bytes() == tree and out["tree"].endswith("tree")
    assert (tmp_path / "kaldi" / "en" / "info" / "has_tree").read_text() == "true\n"


def test_model_dir_without_tree(trained, tiny_corpus, tiny_features, tmp_path):
    """No tree in the alignment dir: not an error (yet), recorded in info/has_tree; none exported."""
    ali = _ali_copy(tiny_corpus, tmp_path / "ali", None)
    d = tmp_path / "models" / "en"
    d.mkdir(parents=True)
    (d / "tree").write_bytes(b"\0BContextDependency stale")  # from an earlier split: must not survive
    info = split_model(trained[0] / "final.pt", "en", d, tiny_features / "feats" / "en", str(ali))
    md = ModelDir(d)
    assert not info["has_tree"] and not md.has_tree and md.info["has_tree"] == "false"
    with pytest.raises(BabelflowError, match=r"models/en: no tree \("):
        _ = md.tree
    out = export_kaldi_dir(d, tmp_path / "kaldi")
    assert out["tree"] is None and not (tmp_path / "kaldi" / "tree").exists()
    (ali / "tree").write_bytes(b"not a tree")
    with pytest.raises(BabelflowError, match="ali/tree: not a Kaldi decision tree"):
        split_model(trained[0] / "final.pt", "en", tmp_path / "x", None, str(ali))


def test_model_dir_reader(en_model):
    md = ModelDir(en_model)
    assert md.kind == "frame" and md.context == (3, 3) and md.num_outputs == md.load()[0].tasks[0].num_outputs
    assert md.cmvn_opts == "--norm-means=false --norm-vars=false" and md.classes == []
    assert [p.name for p in md.conf_files] == ["fbank.conf"] and md.trans_mdl == en_model / "trans.mdl"
    assert ModelDir(en_model / "model.pt").path == en_model  # the model file names its dir
    if md.has_priors:
        np.testing.assert_allclose(md.priors, md.load()[1]["priors"].numpy(), rtol=1e-6)
