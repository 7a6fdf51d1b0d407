"""Builders of fresh nnet3 components, written as ``nnet3-init``/xconfig would write them.

Kept apart from :mod:`.nnet3_components` (reading, writing and Kaldi's re-write of existing
components): only export needs to make new ones, from a trained PyTorch model.
"""

from __future__ import annotations

import numpy as np

from .nnet3_components import Component

__all__ = ["affine_component", "relu_component", "normalize_component", "batchnorm_component",
           "log_softmax_component"]

def affine_component(weight: np.ndarray, bias: np.ndarray, natural_gradient: bool = True,
                     learning_rate: float = 0.001, max_change: float = 0.75, rank_in: int | None = None,
                     rank_out: int | None = None, update_period: int = 4, num_samples_history: float = 2000.0,
                     alpha: float = 4.0) -> Component:
    """A (NaturalGradient)AffineComponent computing ``weight @ x + bias`` (weight is (out, in)),
    written as nnet3-init/xconfig would; NG ranks default to Kaldi's min(20, (in+1)/2) and
    min(80, (out+1)/2). ``max_change`` 0 omits ``<MaxChange>`` (nnet3-init's default)."""
    w = np.asarray(weight, dtype=np.float32)
    b = np.asarray(bias, dtype=np.float32).reshape(-1)
    if w.ndim != 2 or b.shape != (w.shape[0],) or 0 in w.shape:
        raise ValueError(f"affine_component: weight {w.shape} and bias {b.shape} do not match (weight is (out, in))")
    fields: list[tuple[str, object]] = [("<MaxChange>", max_change)] if max_change > 0 else []
    fields += [("<LearningRate>", learning_rate), ("<LinearParams>", w), ("<BiasParams>", b)]
    if not natural_gradient:
        return Component("AffineComponent", fields)
    out_dim, in_dim = w.shape
    fields += [("<RankIn>", min(20, (in_dim + 1) // 2) if rank_in is None else rank_in),
               ("<RankOut>", min(80, (out_dim + 1) // 2) if rank_out is None else rank_out),
               ("<UpdatePeriod>", update_period), ("<NumSamplesHistory>", num_samples_history), ("<Alpha>", alpha)]
    return Component("NaturalGradientAffineComponent", fields)


def _nonlinear(ctype: str, dim: int, self_repair_scale: float = 0.0) -> Component:
    empty = np.zeros(0, dtype=np.float32)
    fields = [("<Dim>", dim), ("<ValueAvg>", empty), ("<DerivAvg>", empty), ("<Count>", 0.0),
              ("<OderivRms>", empty), ("<OderivCount>", 0.0), ("<NumDimsSelfRepaired>", 0.0),
              ("<NumDimsProcessed>", 0.0)]
    if self_repair_scale:
        fields.append(("<SelfRepairScale>", self_repair_scale))
    return Component(ctype, fields)


def relu_component(dim: int, self_repair_scale: float = 0.0) -> Component:
    """A fresh RectifiedLinearComponent (no stats), as nnet3-init writes it
    (xconfig's relu layers pass ``self_repair_scale=1e-05``)."""
    return _nonlinear("RectifiedLinearComponent", dim, self_repair_scale)


def log_softmax_component(dim: int) -> Component:
    return _nonlinear("LogSoftmaxComponent", dim)


def normalize_component(dim: int, target_rms: float = 1.0, add_log_stddev: bool = False) -> Component:
    """NormalizeComponent: ``y = x * target_rms / rms(x)`` per frame (output dim +1 with log-stddev)."""
    return Component("NormalizeComponent", [("<InputDim>", dim), ("<TargetRms>", target_rms),
                                            ("<AddLogStddev>", add_log_stddev)])


def batchnorm_component(dim: int, mean: np.ndarray, var: np.ndarray, epsilon: float = 1e-3,
                        target_rms: float = 1.0, count: float = 1.0, test_mode: bool = True) -> Component:
    """BatchNormComponent in test mode: ``y = (x - mean) * target_rms / sqrt(var + epsilon)``.

    Kaldi has no learned scale/shift here (fold those into the next affine layer). ``count``
    must be > 0: Kaldi replaces stats with random ones when a test-mode count is 0."""
    mean = np.asarray(mean, dtype=np.float32).reshape(-1)
    var = np.asarray(var, dtype=np.float32).reshape(-1)
    if mean.shape != (dim,) or var.shape != (dim,):
        raise ValueError(f"batchnorm_component: mean {mean.shape} / var {var.shape} do not match dim {dim}")
    if count <= 0 or np.any(var < 0):
        raise ValueError("batchnorm_component: count must be > 0 and variances >= 0")
    return Component("BatchNormComponent", [
        ("<Dim>", dim), ("<BlockDim>", dim), ("<Epsilon>", epsilon), ("<TargetRms>", target_rms),
        ("<TestMode>", test_mode), ("<Count>", count), ("<StatsMean>", mean), ("<StatsVar>", var)])
