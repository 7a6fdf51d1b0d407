"""train.precision: which arithmetic the training steps get on which hardware."""

from __future__ import annotations

import pytest
import torch

from babelflow.nnet import precision
from babelflow.nnet.precision import cpu_has_native_bf16, resolve_precision, step_autocast

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512dq\n"


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    for text, want in ((ZEN4, True), (SKYLAKE, False), (SKYLAKE.replace("avx512dq", "amx_bf16 amx_tile"), True)):
        (tmp_path / "cpuinfo").write_text(text)
        assert cpu_has_native_bf16(tmp_path / "cpuinfo") is want
    assert cpu_has_native_bf16(tmp_path / "absent") is False  # no /proc (not Linux): fp32, the safe side


@pytest.mark.parametrize("native", [True, False])
def test_auto_takes_bf16_only_where_the_cpu_has_it(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"  # as asked
    with pytest.raises(ValueError, match="precision 'fp16'"):
        resolve_precision("fp16", cpu)


def test_step_autocast_computes_products_in_bf16_and_fp32_leaves_them():
    lin, x = torch.nn.Linear(8, 4), torch.randn(3, 8)
    with step_autocast("bf16", torch.device("cpu")):
        assert lin(x).dtype == torch.bfloat16
    with step_autocast("fp32", torch.device("cpu")):
        assert lin(x).dtype == torch.float32
    assert lin.weight.dtype == torch.float32  # the weights stay float32 either way


@pytest.mark.parametrize("pooling", ["stats", "attentive"])
def test_bf16_steps_keep_log_softmax_and_pooling_in_float32(pooling):
    """As CUDA autocast does: log-posteriors and the pooled sums over frames in float32 (CPU autocast would
    leave them in bf16, where a count of 477 frames reads 476)."""
    from babelflow.nnet.model import ModelConfig, MultiTaskModel, TaskSpec

    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({"layers": [{"dim": 16, "splice": [-1, 0, 1]}], "frame_head": {"hidden": [8]},
                                 "utterance_head": {"hidden": [8], "pooling": pooling, "attention_dim": 4},
                                 "norm": "batchnorm"})
    model = MultiTaskModel(cfg, 5, [TaskSpec("en", "frame", 3), TaskSpec("lang", "utterance", 2)]).train()
    x, mask = torch.randn(2, 479, 5), torch.ones(2, 477, dtype=torch.bool)
    with step_autocast("bf16", torch.device("cpu")):
        assert model(x[:, :10], 0).dtype == torch.float32
        assert model(x, 1, mask=mask).dtype == torch.float32
        head = model.heads["output-1"]
        stats = head.pool(model.embed(x, mask=mask), mask)
    assert stats.dtype == torch.float32
