"""The loss of one block, as training steps and diagnostics compute it (Kaldi's objective: the
log-probability of the supervision per frame; an utterance task counts one frame per utterance)."""

from __future__ import annotations

import torch

from .data import Batch
from .model import MultiTaskModel


def step_loss(model: MultiTaskModel, b: Batch, logp: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted loss for backward, detached [objective sum, correct sum, frames]) of a block.
    ``logp``: an utterance block's log-posteriors when the caller computed them (the diagnostics).

    The statistics stay on the device: reading them costs a host sync, which training does once
    per ``SYNC_EVERY`` steps, not per block."""
    if b.frame_weight is not None:
        logp = model(b.x, b.task, b.ivector)  # (B, n, C)
        tgt = b.target.clamp_min(0)
        lp = logp.gather(-1, tgt[..., None])[..., 0]
        fw = b.frame_weight
        frames = fw.sum()
        obj = (fw * lp).sum()
        correct = (fw * (logp.argmax(-1) == tgt).float()).sum()
    else:
        if logp is None:
            logp = model(b.x, b.task, b.ivector, valid_mask(model, b))  # (B, C)
        lp = logp.gather(-1, b.target[:, None])[:, 0]
        frames = torch.full((), float(len(lp)), device=lp.device)  # a fill, not a host copy (no sync)
        obj = lp.sum()
        correct = (logp.argmax(-1) == b.target).float().sum()
    loss = -b.weight * obj / frames.clamp_min(1e-8)
    return loss, torch.stack([obj.detach().float(), correct.float(), frames.float()])


def minibatch_loss(model: MultiTaskModel, batches: list[Batch]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(summed weighted loss, each block's statistics) of a minibatch: one block, or twin blocks (:mod:`.twins`:
    the same inputs, an utterance task each) over one trunk pass, as Kaldi sums the objectives of an eg's outputs."""
    if len(batches) == 1:
        loss, stats = step_loss(model, batches[0])
        return loss, [stats]
    first = batches[0]
    mask = valid_mask(model, first)
    logps = model.forward_tasks(first.x, [b.task for b in batches], first.ivector, mask)
    losses, stats = zip(*(step_loss(model, b, lp) for b, lp in zip(batches, logps)))
    return torch.stack(losses).sum(), list(stats)


def valid_mask(model: MultiTaskModel, b: Batch) -> torch.Tensor:
    """(B, padded output frames): an utterance block's valid output frames, a prefix of each row."""
    width = b.x.shape[1] - model.left_context - model.right_context
    return torch.arange(width, device=b.x.device)[None, :] < b.lengths[:, None]
