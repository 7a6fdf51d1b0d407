"""Kaldi nnet3's update rules for the trainer: xconfig initialisation and max-change.

Kaldi trains relu-renorm networks on raw features with plain SGD at learning rates that
are large for a summed objective; what keeps that stable is the *max-change* of
``UpdateNnetWithMaxChange`` (nnet-utils.cc): each updatable component's update (weights
and bias together) is scaled down to norm ``max-change`` (0.75 for hidden affines, 1.5
for output layers), then the whole update to norm ``max-param-change`` (2.0). Both act
on the update (the learning rate already in it), not on the gradient, so they work the
same under any optimiser here: :class:`MaxChange` measures ``new - old`` after
``optimizer.step()`` and shrinks it. As in Kaldi, the momentum buffer keeps the unscaled
update. ``kaldi_init`` is the xconfig initialisation: affine weights N(0, 1/in_dim),
biases N(0, 1), output layers zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .model import FrameHead, MultiTaskModel, UtteranceHead


def kaldi_init(model: MultiTaskModel, bias_stddev: float = 1.0) -> None:
    """Kaldi's NaturalGradientAffineComponent defaults: param-stddev 1/sqrt(in), bias-stddev
    ``bias_stddev``; output layers keep param-stddev=0 bias-stddev=0 (xconfig output-layer)."""
    outputs = {id(h.output) for h in model.heads.values() if isinstance(h, (FrameHead, UtteranceHead))}
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) and id(m) not in outputs:
                m.weight.normal_(0.0, 1.0 / math.sqrt(m.in_features))
                if m.bias is not None:
                    m.bias.normal_(0.0, bias_stddev)


def components(model: MultiTaskModel, max_change: float, max_change_output: float
               ) -> list[tuple[list[nn.Parameter], float]]:
    """The updatable components (each affine: weight + bias) with their max-change, as xconfig
    sets them: ``max_change`` for trunk and hidden head layers, ``max_change_output`` for outputs."""
    outputs = {id(h.output) for h in model.heads.values() if isinstance(h, (FrameHead, UtteranceHead))}
    comps = []
    for m in model.modules():
        params = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if params:
            comps.append((params, max_change_output if id(m) in outputs else max_change))
    return comps


class MaxChange:
    """Per-component and global max-change on the update of one optimiser step (0 turns either off).

    Usage: ``mc.before()``; ``optimizer.step()``; ``mc.after()``. Returns from ``after`` the
    smallest per-component factor and the global one (1.0 where nothing was scaled).
    """

    def __init__(self, comps: list[tuple[list[nn.Parameter], float]], max_param_change: float):
        self.comps, self.max_param_change = comps, max_param_change
        self._old: list[list[torch.Tensor]] = []
        self._caps: torch.Tensor | None = None  # on the parameters' device, made once (a copy there syncs)

    @property
    def active(self) -> bool:
        return self.max_param_change > 0 or any(mc > 0 for _, mc in self.comps)

    def before(self) -> None:
        self._old = [[p.detach().clone() for p in params] for params, _ in self.comps] if self.active else []

    @torch.no_grad()
    def after(self) -> tuple[torch.Tensor, torch.Tensor] | tuple[float, float]:
        """Scales the step's update; returns the smallest per-component factor and the global one
        (0-dim tensors on the parameters' device: computed there, without a host sync)."""
        if not self._old:
            return 1.0, 1.0
        deltas = [[p - o for p, o in zip(params, old)] for (params, _), old in zip(self.comps, self._old)]
        norms = torch.stack([torch.sqrt(sum((d.float() ** 2).sum() for d in ds)) for ds in deltas])
        if self._caps is None or self._caps.device != norms.device:
            self._caps = torch.tensor([mc for _, mc in self.comps], dtype=norms.dtype, device=norms.device)
        caps = self._caps
        one = torch.ones((), dtype=norms.dtype, device=norms.device)
        factors = torch.where((caps > 0) & (norms > caps), caps / norms, one)
        total = torch.sqrt(((factors * norms) ** 2).sum())
        mpc = self.max_param_change
        glob = torch.where(total > mpc, mpc / total, one) if mpc > 0 else one
        finite = torch.isfinite(total)  # Kaldi: "Infinite parameter change, will not apply": keep the old values
        scale = torch.where(finite, factors * glob, torch.zeros_like(factors))
        for (params, _), old, ds, f in zip(self.comps, self._old, deltas, scale):
            for p, o, d in zip(params, old, ds):  # where unscaled, p stays bit for bit the optimiser's
                p.copy_(torch.where(f == 1.0, p, torch.where(finite, o + d * f.to(d.dtype), o)))
        self._old = []
        return torch.where(finite, factors.min(), 0.0 * one), torch.where(finite, glob, 0.0 * one)
