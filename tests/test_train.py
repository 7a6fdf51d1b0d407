"""Multi-task training: learning, diagnostics files, kill + resume, DDP parity, errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import kaldiio
import pandas as pd
import pytest
import torch
import yaml

from babelflow.egs.make import EgsOptions, TaskSource, egs_job, finalize_egs_dir
from babelflow.errors import BabelflowError
from babelflow.merge import MergeOptions, MergeTask, merge_egs
from babelflow.nnet.checkpoint import load_model, load_task_model
from babelflow.nnet.infer import compute, padded
from babelflow.nnet.model import ModelConfig
from babelflow.nnet.options import TrainOptions
from babelflow.nnet.taskmodel import split_model
from babelflow.nnet.train import train

pytestmark = pytest.mark.slow

SMALL = {"layers": [{"dim": 48, "splice": [-1, 0, 1]}, {"dim": 48, "splice": [0]}, {"dim": 48, "splice": [-2, 2]}],
         "bottleneck": {"dim": 24}, "frame_head": {"hidden": [32]}, "utterance_head": {"hidden": [32]},
         "norm": "batchnorm"}
OPTS = EgsOptions(valid_fraction=0.2, left_context=3, right_context=3, dtype="float16")


@pytest.fixture(scope="module")
def merged(tiny_corpus, tiny_features, tmp_path_factory):
    """en + de frame tasks and a lang utterance task, merged with weights 1, 0.5, 1."""
    from babelflow.egs.alignments import prepare_pdf_alignments

    root = tmp_path_factory.mktemp("train")
    dirs = []
    for lang in ("en", "de"):
        src = TaskSource(lang, "frame", [(lang, tiny_features / "data" / lang, tiny_features / "feats" / lang)], nj=2)
        prepare_pdf_alignments(str(tiny_corpus / lang / "ali"), root / lang)
        for a in (1, 2):
            egs_job(src, a, root / lang, OPTS, progress=False)
        finalize_egs_dir(src, root / lang, OPTS)
        dirs.append(root / lang)
    sets = [(s, tiny_features / "data" / s, tiny_features / "feats" / s) for s in ("en", "de")]
    src = TaskSource("lang", "utterance", sets, nj=2, labels="utt2lang")
    for a in range(1, 5):
        egs_job(src, a, root / "lang", OPTS, progress=False)
    finalize_egs_dir(src, root / "lang", OPTS)
    dirs.append(root / "lang")
    merge_egs([MergeTask(n, d, w) for n, d, w in zip(["en", "de", "lang"], dirs, [1.0, 0.5, 1.0])], root / "merged",
              MergeOptions(block_size=16))
    (root / "model.yaml").write_text(yaml.safe_dump(SMALL))
    return root


@pytest.fixture(scope="module")
def trained(merged):
    out = merged / "run"
    metrics = train(merged / "merged", out, ModelConfig.from_dict(SMALL), TrainOptions(num_epochs=5, lr_initial=4e-3,
                    lr_final=1e-3, checkpoint_every=5), progress=False)
    return out, metrics


def test_training_outputs(trained):
    out, metrics = trained
    assert set(metrics) == {"en", "de", "lang"}
    for m in metrics.values():
        assert set(m) == {"valid_accuracy", "valid_objective", "train_accuracy", "train_objective", "baseline_accuracy"}
    for task in ("en", "de"):  # 16 utterances per language are enough to beat the majority pdf clearly
        assert metrics[task]["valid_accuracy"] > 2 * metrics[task]["baseline_accuracy"], task
    log = pd.read_csv(out / "train_log.tsv", sep="\t")
    assert set(log["task"]) == {"en", "de", "lang"} and (log["weight"][log["task"] == "de"] == 0.5).all()
    for task in ("en", "de"):  # the per-frame objective improves
        obj = log[log["task"] == task]["objective"].to_numpy()
        assert obj[-5:].mean() > obj[:5].mean() + 0.5
    diag = pd.read_csv(out / "diagnostics.tsv", sep="\t")
    assert sorted(diag["epoch"].unique()) == [1, 2, 3, 4, 5] and set(diag["set"]) == {"valid", "train_diagnostic"}
    assert (out / "curves.png").stat().st_size > 10_000
    model, blob = load_model(out / "final.pt")  # weights_only load
    assert [t.name for t in model.tasks] == ["en", "de", "lang"] and blob["left_context"] == 3


def test_checkpoint_from_other_config_is_refused(trained, merged):
    out, _ = trained
    other = {**SMALL, "bottleneck": {"dim": 20}}
    with pytest.raises(BabelflowError, match="checkpoint from a different model/task/training config"):
        train(merged / "merged", out, ModelConfig.from_dict(other), TrainOptions(num_epochs=5), progress=False)


def test_egs_context_too_small(merged):
    wide = {**SMALL, "layers": SMALL["layers"] + [{"dim": 16, "splice": [-3, 3]}]}
    with pytest.raises(BabelflowError, match=r"egs context \(3, 3\) is smaller than the model's \(6, 6\)"):
        train(merged / "merged", merged / "wide", ModelConfig.from_dict(wide), TrainOptions(), progress=False)


def test_unknown_train_task(merged):
    with pytest.raises(BabelflowError, match="train.tasks: unknown task"):
        train(merged / "merged", merged / "x", ModelConfig.from_dict(SMALL), TrainOptions(tasks=["klingon"]),
              progress=False)


def test_frozen_trunk_trains_heads_only(trained, merged):
    out, _ = trained
    before, _ = load_model(out / "final.pt")
    m = train(merged / "merged", merged / "heads", ModelConfig.from_dict(SMALL),
              TrainOptions(num_epochs=1, freeze_trunk=True, init=str(out / "final.pt"), tasks=["lang"]),
              progress=False)
    assert set(m) == {"lang"}  # diagnostics of the trained task only
    after, _ = load_model(merged / "heads" / "final.pt")
    b, a = before.state_dict(), after.state_dict()
    trunk = [k for k in b if k.startswith("trunk.")]
    assert all(torch.equal(b[k], a[k]) for k in trunk)  # batch-norm statistics too: a frozen trunk keeps its own
    assert not torch.equal(b["heads.output-2.output.weight"], a["heads.output-2.output.weight"])
    others = [k for k in b if k.startswith(("heads.output-0.", "heads.output-1."))]
    assert any("running_mean" in k for k in others)  # the untrained heads keep their batch-norm statistics too
    assert all(torch.equal(b[k], a[k]) for k in others)  # not trained


def test_mixed_batching(merged):
    m = train(merged / "merged", merged / "mixed", ModelConfig.from_dict(SMALL),
              TrainOptions(num_epochs=2, batching="mixed", lr_initial=4e-3, lr_final=1e-3), progress=False)
    log = pd.read_csv(merged / "mixed" / "train_log.tsv", sep="\t")
    per_step = log.groupby("step")["task"].nunique()
    assert per_step.max() == 3  # every task in a step while all have blocks left
    assert m["en"]["valid_accuracy"] > m["en"]["baseline_accuracy"]


def test_layers_attentive_stats_norm_utterance_head(merged, tiny_features, tmp_path):
    """The utterance head over every trunk layer with attentive pooling trains, resumes from its
    checkpoint, splits, and computes through its task model dir what the multi-task head computes."""
    utt = {"hidden": [32], "input": "layers", "pooling": "attentive", "attention_dim": 16, "stats_norm": True,
           "project": 24}
    cfg = ModelConfig.from_dict({**SMALL, "utterance_head": utt})
    opts = TrainOptions(num_epochs=2, lr_initial=4e-3, lr_final=1e-3, checkpoint_every=5)
    out = tmp_path / "run"
    m = train(merged / "merged", out, cfg, opts, progress=False)
    assert set(m) == {"en", "de", "lang"} and all(v == v for t in m.values() for v in t.values())  # no NaN
    assert train(merged / "merged", out, cfg, opts, progress=False) == m  # the finished checkpoint resumes
    model, blob = load_model(out / "final.pt")
    assert blob["model_config"]["utterance_head"] == utt
    split_model(out / "final.pt", "lang", tmp_path / "lang", tiny_features / "feats" / "en")
    single, _ = load_task_model(tmp_path / "lang")
    feats = f"scp:{tiny_features / 'feats' / 'en' / 'feats.scp'}"
    compute(tmp_path / "lang", feats, f"ark:{tmp_path / 'p.ark'}")
    utt_id, feat = next(iter(kaldiio.load_scp(str(tiny_features / "feats" / "en" / "feats.scp")).items()))
    x = torch.from_numpy(padded(feat.astype("float32"), model.left_context, model.right_context))[None]
    want = model.eval()(x, 2)[0].exp().detach().numpy()
    got = dict(kaldiio.load_ark(str(tmp_path / "p.ark")))[utt_id][0]
    assert abs(got - want).max() < 1e-5 and torch.allclose(single(x, 0), model(x, 2))


def _cli(merged, out, *extra, nproc=1):
    opts = ["--num-epochs=3", "--lr-initial=0.004", "--lr-final=0.001", "--threads=1", *extra]
    args = ["train", "--model-config", str(merged / "model.yaml"), *opts, str(merged / "merged"), str(out)]
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        return [sys.executable, "-m", "babelflow.cli", *args], env
    return ["torchrun", "--standalone", f"--nproc_per_node={nproc}", "-m", "babelflow.cli", *args], env


def test_killed_run_resumes_where_it_stopped(merged):
    ref = merged / "ref"
    cmd, env = _cli(merged, ref, "--checkpoint-every=2")
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    out = merged / "killed"
    cmd, env = _cli(merged, out, "--checkpoint-every=2")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final.pt").exists(), "the run finished before it could be killed"
    for f in ("train_log.tsv", "metrics.json", "diagnostics.tsv"):  # what Snakemake deletes before a retry
        (out / f).unlink(missing_ok=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming from" in done.stderr
    a, _ = load_model(ref / "final.pt")
    b, _ = load_model(out / "final.pt")
    for k, v in a.state_dict().items():  # the resumed run ends where an uninterrupted one does
        assert torch.allclose(v.float(), b.state_dict()[k].float(), atol=1e-5), k
    steps = pd.read_csv(out / "train_log.tsv", sep="\t")["step"]  # every step once, across the kill
    assert list(steps) == list(pd.read_csv(ref / "train_log.tsv", sep="\t")["step"])


def test_two_processes_match_one(merged):
    """torchrun with 2 CPU processes (gloo) = 1 process with the same global batch (2 blocks). fp32: the
    two sum the same gradients in another order, which bf16 steps would amplify past the tolerance."""
    one, two = merged / "p1", merged / "p2"
    cmd, env = _cli(merged, one, "--blocks-per-step=2", "--precision=fp32")
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    cmd, env = _cli(merged, two, "--blocks-per-step=2", "--precision=fp32", nproc=2)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    d1 = pd.read_csv(one / "diagnostics.tsv", sep="\t")
    d2 = pd.read_csv(two / "diagnostics.tsv", sep="\t")
    assert len(d1) == len(d2) == 3 * 3 * 2
    assert (abs(d1["objective"] - d2["objective"]) < 1e-3).all(), pd.concat([d1, d2], axis=1)
    a, _ = load_model(one / "final.pt")
    b, _ = load_model(two / "final.pt")
    for k, v in a.state_dict().items():
        assert torch.allclose(v.float(), b.state_dict()[k].float(), atol=1e-4), k


def test_two_processes_start_over_from_a_stale_checkpoint(merged):
    """Changed options + the old run's checkpoint: every rank starts over (none may resume alone,
    which would leave the other waiting in a collective forever)."""
    out = merged / "p2"  # the 2-process run of the test above, or a fresh one
    if not (out / "checkpoint.pt").exists():
        cmd, env = _cli(merged, out, "--blocks-per-step=2", nproc=2)
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    cmd, env = _cli(merged, out, "--blocks-per-step=2", "--seed=7", "--fresh-on-config-change", nproc=2)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "starting over" in proc.stderr and "resuming from" not in proc.stderr
    assert (out / "checkpoint.pt.old").exists()


def test_renorm_on_raw_features_learns_with_kaldis_update_rules(merged, tmp_path):
    """The recipe's relu-renorm layers on features without CMVN, trained through train() with
    the natural gradient, Kaldi's initialisation and max-change (nnet/optim.py, nnet/natgrad.py)."""
    cfg = ModelConfig.from_dict({**SMALL, "norm": "renorm"})
    opts = TrainOptions(num_epochs=5, optimizer="sgd", momentum=0.0, lr_initial=0.2, lr_final=0.05, max_grad_norm=0,
                        natural_gradient=True, param_init="kaldi", max_change=0.75, max_change_output=1.5,
                        max_param_change=2.0, checkpoint_every=0)
    metrics = train(merged / "merged", tmp_path / "run", cfg, opts, progress=False)
    for task in ("en", "de"):
        assert metrics[task]["valid_accuracy"] > 1.5 * metrics[task]["baseline_accuracy"], task


def test_bf16_steps_learn_as_fp32_steps_do_and_are_not_resumed_as_fp32(merged, tmp_path):
    """train.precision: bf16 autocast in the steps changes the weights (it is applied) but not what
    the model learns; the resolved precision is in info/ and in the config hash."""
    cfg, runs = ModelConfig.from_dict(SMALL), {}
    for p in ("fp32", "bf16"):
        opts = TrainOptions(num_epochs=5, lr_initial=4e-3, lr_final=1e-3, checkpoint_every=5, precision=p)
        runs[p] = train(merged / "merged", tmp_path / p, cfg, opts, progress=False)
        assert (tmp_path / p / "info" / "precision").read_text() == f"{p}\n"
    a, b = (load_model(tmp_path / p / "final.pt")[1]["state_dict"] for p in ("fp32", "bf16"))
    assert any(not torch.equal(a[k], b[k]) for k in a) and all(b[k].dtype == a[k].dtype for k in a)
    for task in ("en", "de"):
        acc = {p: runs[p][task]["valid_accuracy"] for p in runs}
        assert acc["bf16"] > 2 * runs["bf16"][task]["baseline_accuracy"] and abs(acc["bf16"] - acc["fp32"]) < 0.05, acc
    with pytest.raises(BabelflowError, match="checkpoint from a different model/task/training config"):
        train(merged / "merged", tmp_path / "bf16", cfg, TrainOptions(num_epochs=6, lr_initial=4e-3, lr_final=1e-3,
              checkpoint_every=5, precision="fp32"), progress=False)


def test_config_hash_takes_the_resolved_precision_only_where_it_is_new(merged):
    """Checkpoints from before train.precision (fp32 on a CPU, bf16 on CUDA) keep their hash and resume."""
    from babelflow.nnet.data import MergedSchedule
    from babelflow.nnet.train import _config_hash

    s, cfg, cpu, cuda = MergedSchedule(merged / "merged"), ModelConfig.from_dict(SMALL), torch.device("cpu"), \
        torch.device("cuda")
    h = {(p, r, d.type): _config_hash(cfg, [], TrainOptions(precision=p), s, r, d)
         for p, r, d in [("auto", "fp32", cpu), ("fp32", "fp32", cpu), ("bf16", "bf16", cpu), ("auto", "bf16", cuda),
                         ("fp32", "fp32", cuda)]}
    assert h["auto", "fp32", "cpu"] == h["fp32", "fp32", "cpu"] != h["bf16", "bf16", "cpu"]
    assert h["auto", "bf16", "cuda"] == h["auto", "fp32", "cpu"] != h["fp32", "fp32", "cuda"]
