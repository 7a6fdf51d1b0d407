"""Batched inference (many utterances per forward pass) equals the per-utterance path.

Batching only changes float summation order (BatchNorm is in eval mode, padding repeats edge
frames), so outputs must agree to 1e-5 absolute, for utterances of very different lengths,
some shorter than the model's context, and with batch budgets small enough to cut long
utterances into pieces. Priors and eval (on real egs) are in test_models.py.
"""

from __future__ import annotations

import kaldiio
import numpy as np
import pytest
import torch

from babelflow.errors import BabelflowError
from babelflow.nnet.batching import length_batches, resolve_device
from babelflow.nnet.infer import bottleneck, compute, frame_outputs, outputs

from .test_export import make_model, save_dir, torch_forward

TOL = 1e-5  # absolute: batching changes the order of float sums, nothing else
LENGTHS = [1, 2, 4, 9, 10, 11, 37, 150, 155, 160, 300, 1200, 3]  # the model's context is 5 + 1 + 5 = 11


def features(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"u{i:02d}": rng.normal(size=(n, 7)).astype(np.float32) for i, n in enumerate(LENGTHS)}


def test_length_batches_bounded_sorted_and_complete():
    lengths = np.array([5, 1, 40, 3, 3, 100, 2])
    batches = length_batches(lengths, 10, 60)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert [lengths[b].tolist() for b in batches] == [[1, 2, 3, 3], [5], [40], [100]]  # 100 alone, past budget
    assert all(len(b) * (10 + lengths[b].max()) <= 60 for b in batches[:-1])
    assert [lengths[b].tolist() for b in length_batches(lengths, 0, 1000, same_length=True)] == \
        [[1], [2], [3, 3], [5], [40], [100]]
    assert length_batches(np.zeros(0, int), 3, 10) == []


@pytest.mark.parametrize("norm,bottleneck_", [("batchnorm", True), ("renorm", False)])
@pytest.mark.parametrize("batch_frames", [16384, 200, 12])  # all at once; several batches; pieces of 1 frame
def test_batched_frame_outputs_equal_per_utterance(norm, bottleneck_, batch_frames):
    model = make_model(norm, 0, bottleneck_, [10])
    feats = features()
    alone = dict(outputs(model, feats.items(), batch_frames=0))
    batched = list(outputs(model, feats.items(), batch_frames=batch_frames))
    assert [u for u, _ in batched] == list(feats)  # input order kept
    for utt, out in batched:
        assert out.shape == (len(feats[utt]), 12)
        np.testing.assert_allclose(out, alone[utt], atol=TOL, rtol=0)
        np.testing.assert_allclose(out, torch_forward(model, feats[utt], None), atol=TOL, rtol=0)
    for utt, emb in outputs(model, feats.items(), batch_frames=batch_frames, embed=True):
        np.testing.assert_allclose(emb, frame_outputs(model, feats[utt], embed=True), atol=TOL, rtol=0)


@pytest.mark.parametrize("batch_frames", [16384, 200, 30])
def test_batched_utterance_posteriors_equal_per_utterance(batch_frames):
    model = make_model("batchnorm", 0, True, [10], kind="utterance")
    feats = features(1)
    alone = dict(outputs(model, feats.items(), "utterance", batch_frames=0))
    for utt, post in outputs(model, feats.items(), "utterance", batch_frames=batch_frames):
        assert post.shape == (12,) and abs(post.sum() - 1) < 1e-5
        np.testing.assert_allclose(post, alone[utt], atol=TOL, rtol=0)


def write_feats(path, feats: dict[str, np.ndarray]) -> str:
    with kaldiio.WriteHelper(f"ark,scp:{path}.ark,{path}.scp") as w:
        for k, m in feats.items():
            w[k] = m
    return f"scp:{path}.scp"


def test_compute_and_bottleneck_batched_equal_per_utterance(tmp_path):
    priors = np.random.default_rng(2).dirichlet(np.ones(12))
    d = save_dir(tmp_path / "model", make_model("batchnorm", 0, True, [10]), priors, trans=False)
    feats = write_feats(tmp_path / "feats", features())
    runs = {}
    for name, bf, dev in (("alone", 0, "cpu"), ("batched", 16384, "cpu"), ("small", 100, "auto")):
        assert compute(d, feats, f"ark:{tmp_path / name}.ark", batch_frames=bf, device=dev) == len(LENGTHS)
        runs[name] = dict(kaldiio.load_ark(str(tmp_path / f"{name}.ark")))
        bottleneck(d, feats, f"ark:{tmp_path / name}.bn.ark", batch_frames=bf, device=dev)
        runs[name + ".bn"] = dict(kaldiio.load_ark(str(tmp_path / f"{name}.bn.ark")))
    for name in ("batched", "small"):
        for suffix in ("", ".bn"):
            assert list(runs[name + suffix]) == list(runs["alone" + suffix])
            for utt, m in runs[name + suffix].items():
                np.testing.assert_allclose(m, runs["alone" + suffix][utt], atol=TOL, rtol=0)


def test_device_option():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BabelflowError, match="--device tpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BabelflowError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU path cannot be run")
def test_cuda_equals_cpu(tmp_path):
    d = save_dir(tmp_path / "model", make_model("batchnorm", 0, True, [10]), np.full(12, 1 / 12), trans=False)
    feats = write_feats(tmp_path / "feats", features())
    for dev in ("cpu", "cuda"):
        compute(d, feats, f"ark:{tmp_path / dev}.ark", device=dev)
    cpu, gpu = (dict(kaldiio.load_ark(str(tmp_path / f"{dev}.ark"))) for dev in ("cpu", "cuda"))
    for utt, m in cpu.items():
        np.testing.assert_allclose(gpu[utt], m, atol=1e-4, rtol=0)  # TF32/cuBLAS sums: a looser bound
