"""Kaldi's natural-gradient affine update (NaturalGradientAffineComponent), with full matrices.

Kaldi preconditions each affine's update on both sides (natural-gradient-online.h): the
input rows x_t (with a 1 appended for the bias) and the output derivatives g_t are each
multiplied by G^-1, G = F + alpha/D tr(F) I, F a running estimate of their uncentred
covariance (eta = 1 - exp(-N / num_samples_history)), then rescaled to their original
Frobenius norm; the update is g_hat^T x_hat. On raw (uncentred) features the feature mean
dominates F, so this damps the update along it and lets the other directions learn; that
is what trains Kaldi's relu-renorm networks on features without CMVN. As in Kaldi, F is kept
as rank 20 (input) / 80 (output) plus a multiple of I; unlike Kaldi's incremental update of
that subspace, it is the top eigenvectors of the running full covariance (same estimate,
simpler code; the layers here are small).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _Side:
    """One side's (input or output) Fisher estimate, Kaldi's form F = U diag(d) U^T + rho I of rank
    R, updated every ``update_period`` calls from that call's rows (Kaldi's update-period 4)."""

    def __init__(self, dim: int, rank: int, alpha: float, num_samples_history: float, update_period: int):
        self.dim, self.rank, self.alpha = dim, min(rank, (dim + 1) // 2), alpha
        self.history, self.period = num_samples_history, update_period
        self.cov: torch.Tensor | None = None
        self.u: torch.Tensor | None = None
        self.c: torch.Tensor | None = None
        self.calls = 0

    def _update(self, x: torch.Tensor) -> None:
        n = x.shape[0]
        s = (x.T @ x / n).double()
        eta = 1.0 - math.exp(-n * self.period / self.history)  # each update stands for `period` batches
        self.cov = s if self.cov is None else (1 - eta) * self.cov + eta * s
        lam, vec = torch.linalg.eigh(self.cov)  # ascending
        lam = lam.clamp_min(0.0)
        top, u = lam[-self.rank:], vec[:, -self.rank:]
        trace = float(lam.sum())
        rho = max((trace - float(top.sum())) / max(self.dim - self.rank, 1), 1e-10)
        beta = rho + self.alpha / self.dim * trace  # G = F + alpha/D tr(F) I = U diag(d) U^T + beta I
        d = (top - rho).clamp_min(0.0)
        self.u, self.c = u.float(), (d / (d + beta)).float()  # G^-1 = (I - U diag(c) U^T) / beta

    def precondition(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.u is None or self.calls % self.period == 0:
            self._update(x)
        self.calls += 1
        xh = x - ((x @ self.u) * self.c) @ self.u.T  # x G^-1, up to the scale fixed below
        norm = xh.norm()
        return xh * (x.norm() / norm) if norm > 0 else xh


class NaturalGradient:
    """Hooks on every affine of the model that replace its gradient with Kaldi's preconditioned one.

    ``begin()`` before a step's forward/backward passes, ``finish()`` after them (before the
    gradient all-reduce and the optimiser step): it writes the accumulated preconditioned
    gradient into ``.grad``.
    """

    def __init__(self, model: nn.Module, alpha: float = 4.0, num_samples_history: float = 2000.0,
                 update_period: int = 4, rank_in: int = 20, rank_out: int = 80):
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear)
                       and any(p.requires_grad for p in m.parameters())]
        self.sides = {id(m): (_Side(m.in_features + 1, rank_in, alpha, num_samples_history, update_period),
                              _Side(m.out_features, rank_out, alpha, num_samples_history, update_period))
                      for m in self.layers}
        self.grads: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for m in self.layers:
            m.register_forward_hook(self._forward)

    def begin(self) -> None:
        self.grads.clear()

    def _forward(self, m: nn.Linear, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        """In training, hook the output's gradient to this call's input (evaluation passes no_grad)."""
        if m.training and torch.is_grad_enabled() and out.requires_grad:
            x = inputs[0].detach().reshape(-1, m.in_features)
            out.register_hook(lambda g: self._accumulate(m, x, g))

    def _accumulate(self, m: nn.Linear, x: torch.Tensor, g: torch.Tensor) -> None:
        x = torch.cat([x.float(), torch.ones(len(x), 1, device=x.device)], dim=1)
        side_in, side_out = self.sides[id(m)]
        with torch.no_grad():
            upd = side_out.precondition(g.detach().reshape(-1, m.out_features)).T @ side_in.precondition(x)
        w, b = upd[:, :-1], upd[:, -1]
        old = self.grads.get(id(m))
        self.grads[id(m)] = (w, b) if old is None else (old[0] + w, old[1] + b)

    def finish(self) -> None:
        for m in self.layers:
            got = self.grads.get(id(m))
            if got is None:
                continue  # not used in this step: its gradient stays None
            if m.weight.requires_grad:
                m.weight.grad = got[0].to(m.weight.dtype)
            if m.bias is not None and m.bias.requires_grad:
                m.bias.grad = got[1].to(m.bias.dtype)
        self.begin()
