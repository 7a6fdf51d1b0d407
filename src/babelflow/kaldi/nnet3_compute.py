"""A small numpy forward pass of a Kaldi nnet3 ``Nnet``: what ``nnet3-compute`` outputs.

It exists to check exported models (and Kaldi's own) without Kaldi: the feed-forward TDNN
family only, i.e. descriptors made of node names, ``Append``, ``Offset``, ``ReplaceIndex``
(plus ``Sum``, ``Scale``, ``Const``) and frame-wise components (affine, ReLU/sigmoid/tanh,
NormalizeComponent, BatchNormComponent, (Log)Softmax). Anything else is a clear error
rather than a silently wrong number. BatchNorm always runs in test mode (stored stats),
whatever ``<TestMode>`` says, as Kaldi's decoders and nnet3-compute force it.

Every node is computed over the widest range of times its inputs allow: the input covers
``[-left, T - 1 + right]`` (edge frames repeated, as Kaldi's decodable pads), an i-vector
exists at t = 0 only (``ReplaceIndex(ivector, t, 0)`` spreads it to every t), and
``Offset(x, o)`` at t reads x at t + o. Arithmetic is float32, as Kaldi's CPU build.
"""

from __future__ import annotations

import numpy as np

from ..errors import BabelflowError
from .nnet3 import Nnet, compute_context
from .nnet3_components import Component
from .nnet3_descriptor import Descriptor

__all__ = ["compute", "apply_component"]

_F32 = np.float32
_SQUARED_NORM_FLOOR = _F32(2.0 ** -66)  # NormalizeComponent's kSquaredNormFloor


class _Value:
    """A node's output rows for times ``start .. start + len - 1``; ``start=None``: the same
    single row at every time (constants, ReplaceIndex(.., t, ..))."""

    __slots__ = ("start", "mat")

    def __init__(self, start: int | None, mat: np.ndarray):
        self.start, self.mat = start, mat

    @property
    def end(self) -> int | None:  # one past the last time
        return None if self.start is None else self.start + self.mat.shape[0]

    def rows(self, lo: int, hi: int) -> np.ndarray:
        if self.start is None:
            return np.broadcast_to(self.mat, (hi - lo, self.mat.shape[1]))
        return self.mat[lo - self.start:hi - self.start]


def _not_supported(what: str) -> BabelflowError:
    return BabelflowError(f"nnet3_compute: {what} is not implemented (this evaluator covers feed-forward "
                          f"TDNNs: affine, nonlinearities, NormalizeComponent, BatchNormComponent, LogSoftmax)")


def _blocks(x: np.ndarray, block: int, what: str) -> np.ndarray:
    """(T, D) -> (T * D / block, block): Kaldi's block-dim normalisation works per block."""
    if block <= 0 or x.shape[1] % block:
        raise BabelflowError(f"nnet3_compute: {what}: block-dim {block} does not divide dim {x.shape[1]}")
    return x.reshape(-1, block)


def _batchnorm(c: Component, x: np.ndarray) -> np.ndarray:
    """Test mode, with the stored stats rebuilt and turned into scale/offset exactly as Kaldi's
    Read + ComputeDerived do (float32 sums; variance = E[x^2] - mean^2, floored at 0)."""
    count = float(c.get("<Count>"))
    if count <= 0:
        raise BabelflowError("nnet3_compute: BatchNormComponent has no statistics (<Count> 0); Kaldi would "
                             "invent random ones in test mode")
    m64 = np.asarray(c.get("<StatsMean>"), np.float64)
    ssum = (m64 * count).astype(_F32)
    ssq = ((np.asarray(c.get("<StatsVar>"), np.float64) + m64 * m64) * count).astype(_F32)
    neg_mean = ssum * _F32(-1.0 / count)
    var = np.maximum(ssq * _F32(1.0 / count) - neg_mean * neg_mean, _F32(0))
    scale = (var + _F32(c.get("<Epsilon>", 1e-3))) ** _F32(-0.5) * _F32(c.get("<TargetRms>", 1.0))
    offset = neg_mean * scale
    dim = x.shape[1]
    block = int(c.get("<BlockDim>", dim))
    if scale.shape != (block,):
        raise BabelflowError(f"nnet3_compute: BatchNormComponent stats have dim {scale.shape[0]}, block-dim {block}")
    return (_blocks(x, block, "BatchNormComponent") * scale + offset).reshape(-1, dim)


def _normalize(c: Component, x: np.ndarray) -> np.ndarray:
    if c.get("<AddLogStddev>", False):
        raise _not_supported("NormalizeComponent with add-log-stddev=true")
    dim = x.shape[1]
    block = int(c.get("<BlockDim>", dim))
    rms = _F32(c.get("<TargetRms>", 1.0))
    b = _blocks(x, block, "NormalizeComponent")
    sq = np.einsum("ij,ij->i", b, b, dtype=_F32) / _F32(block * rms * rms)
    return (b * np.maximum(sq, _SQUARED_NORM_FLOOR)[:, None] ** _F32(-0.5)).reshape(-1, dim)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def apply_component(c: Component, x: np.ndarray) -> np.ndarray:
    """One frame-wise component on a (T, in_dim) float32 matrix (test mode)."""
    t = c.type
    if t in ("AffineComponent", "NaturalGradientAffineComponent", "FixedAffineComponent"):
        return x @ np.asarray(c.get("<LinearParams>"), _F32).T + np.asarray(c.get("<BiasParams>"), _F32)
    if t == "LinearComponent":
        return x @ np.asarray(c.get("<Params>"), _F32).T
    if t in ("RectifiedLinearComponent", "SigmoidComponent", "TanhComponent", "LogSoftmaxComponent",
             "SoftmaxComponent") and c.get("<BlockDim>", x.shape[1]) != x.shape[1]:
        raise _not_supported(f"{t} with block-dim != dim")
    if t == "RectifiedLinearComponent":
        return np.maximum(x, _F32(0))
    if t == "SigmoidComponent":
        return _F32(1) / (_F32(1) + np.exp(-x))
    if t == "TanhComponent":
        return np.tanh(x)
    if t == "LogSoftmaxComponent":
        return _log_softmax(x)
    if t == "SoftmaxComponent":
        return np.exp(_log_softmax(x))
    if t == "NormalizeComponent":
        return _normalize(c, x)
    if t == "BatchNormComponent":
        return _batchnorm(c, x)
    raise _not_supported(f"component type {t}")


def compute(nnet: Nnet, feats: np.ndarray, ivector: np.ndarray | None = None, output: str = "output") -> np.ndarray:
    """``nnet3-compute`` of one utterance: (T, C) values of ``output`` for (T, D) ``feats``, the
    first/last frame repeated over the left/right context; ``ivector`` (I,) feeds the
    ``ivector`` input node (at t = 0, as nnet3-compute's ``--ivectors`` does)."""
    nodes = {n.name: n for n in nnet.nodes()}
    if output not in nodes or nodes[output].kind != "output-node":
        raise BabelflowError(f"nnet3_compute: no output node {output!r} (outputs: {', '.join(nnet.output_nodes())})")
    feats = np.asarray(feats, _F32)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise BabelflowError(f"nnet3_compute: features must be a non-empty (T, D) matrix, got shape {feats.shape}")
    left, right = compute_context(nnet, output)
    inputs: dict[str, _Value] = {}
    for name, node in nodes.items():
        if node.kind != "input-node":
            continue
        dim = int(node.attrs["dim"])
        if name == "input":
            if feats.shape[1] != dim:
                raise BabelflowError(f"nnet3_compute: features have dim {feats.shape[1]}, the nnet's input {dim}")
            pad = np.concatenate([np.repeat(feats[:1], left, 0), feats, np.repeat(feats[-1:], right, 0)])
            inputs[name] = _Value(-left, pad)
        elif name == "ivector" and ivector is not None:
            iv = np.asarray(ivector, _F32).reshape(1, -1)
            if iv.shape[1] != dim:
                raise BabelflowError(f"nnet3_compute: i-vector has dim {iv.shape[1]}, the nnet's ivector input {dim}")
            inputs[name] = _Value(0, iv)
    memo: dict[str, _Value] = {}
    active: set[str] = set()

    def node_value(name: str) -> _Value:
        if name in memo:
            return memo[name]
        if name in inputs:
            return inputs[name]
        n = nodes[name]
        if n.kind == "input-node":
            raise BabelflowError(f"nnet3_compute: the nnet needs input {name!r}" +
                                 (" (give an i-vector)" if name == "ivector" else ""))
        if name in active:
            raise _not_supported(f"a recurrent network (node {name!r} depends on itself)")
        active.add(name)
        if n.kind == "dim-range-node":
            src = node_value(n.attrs["input-node"])
            off = int(n.attrs["dim-offset"])
            v = _Value(src.start, src.mat[:, off:off + int(n.attrs["dim"])])
        else:
            v = desc_value(n.desc)
            if n.kind == "component-node":
                y = apply_component(nnet.component(n.attrs["component"]), v.mat)
                v = _Value(v.start, y.astype(_F32, copy=False))
        memo[name] = v
        active.discard(name)
        return v

    def desc_value(d: Descriptor) -> _Value:
        if d.op == "node":
            return node_value(d.params[0])
        if d.op == "Offset":
            if d.params[1]:
                raise _not_supported("Offset() in x")
            v = desc_value(d.args[0])
            return v if v.start is None else _Value(v.start - d.params[0], v.mat)
        if d.op == "ReplaceIndex":
            v = desc_value(d.args[0])
            var, value = d.params
            if var == "x":
                if value != 0:
                    raise _not_supported("ReplaceIndex(.., x, nonzero)")
                return v
            if v.start is not None and not v.start <= value < v.end:
                raise BabelflowError(f"nnet3_compute: {d} needs time {value}, which is not available")
            return _Value(None, v.mat[value - v.start][None] if v.start is not None else v.mat)
        if d.op == "Scale":
            v = desc_value(d.args[0])
            return _Value(v.start, v.mat * _F32(d.params[0]))
        if d.op == "Const":
            return _Value(None, np.full((1, d.params[1]), d.params[0], _F32))
        if d.op in ("Append", "Sum"):
            vals = [desc_value(a) for a in d.args]
            timed = [v for v in vals if v.start is not None]
            if not timed:
                rows = [v.mat for v in vals]
                return _Value(None, np.concatenate(rows, 1) if d.op == "Append" else rows[0] + rows[1])
            lo, hi = max(v.start for v in timed), min(v.end for v in timed)
            if hi <= lo:
                raise BabelflowError(f"nnet3_compute: {d}: its inputs have no time in common")
            rows = [v.rows(lo, hi) for v in vals]
            return _Value(lo, np.concatenate(rows, 1) if d.op == "Append" else rows[0] + rows[1])
        raise _not_supported(f"descriptor {d.op}()")

    out = node_value(output)
    if out.start is None:
        return np.repeat(out.mat, feats.shape[0], 0)
    if out.start > 0 or out.end < feats.shape[0]:
        raise BabelflowError(f"nnet3_compute: output {output!r} covers times [{out.start}, {out.end}), "
                             f"not all of [0, {feats.shape[0]})")
    return np.ascontiguousarray(out.rows(0, feats.shape[0]))
