"""Diagnostics between epochs (Kaldi's compute_prob_train/valid) and the batch-norm test statistics
of the model (Kaldi recomputes them at the final combination).

Both run in test mode, where the rows of a block are independent: a block of whole utterances,
padded to its longest, is run through the trunk in sub-blocks of similar length
(:func:`utterance_logp`), which gives the same numbers up to float summation order for about half
the multiply-adds on the demo (its diagnostic blocks are not sorted by length, as training's are).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .batching import BATCH_FRAMES, length_batches
from .data import Batch, Block, MergedSchedule
from .feed import HostFeed, ResidentFeed
from .loss import step_loss, valid_mask
from .model import MultiTaskModel
from .twins import minibatches


def utterance_logp(model: MultiTaskModel, b: Batch, batch_frames: int = BATCH_FRAMES) -> torch.Tensor:
    """An utterance block's log-posteriors with the trunk in test mode: trunk and pooling over
    sub-blocks of similar length (:func:`.batching.length_batches`), the head's classifier over the
    whole block, so that its batch norms, in training mode in the second pass of
    :func:`recompute_batchnorm_stats`, normalise over the same rows as one forward would."""
    return utterance_logps(model, b, [b.task], batch_frames)[0]


def utterance_logps(model: MultiTaskModel, b: Batch, tasks: Sequence[int],
                    batch_frames: int = BATCH_FRAMES) -> list[torch.Tensor]:
    """:func:`utterance_logp` of each of ``tasks`` on the block's inputs (twin blocks, :mod:`.twins`): one trunk
    pass per sub-block, each task's pooling and classifier."""
    if any(m.training for m in model.trunk.modules() if isinstance(m, torch.nn.BatchNorm1d)):
        raise RuntimeError("utterance_logp needs the trunk in test mode (its batch statistics span the block)")
    heads = [model.heads[model.head_names[t]] for t in tasks]
    ctx = model.left_context + model.right_context
    lengths = b.lengths.cpu().numpy()
    if len(lengths) == 0:
        return model.forward_tasks(b.x, list(tasks), b.ivector, valid_mask(model, b))
    rows, parts = [], [[] for _ in heads]
    for idx in length_batches(lengths, ctx, batch_frames):
        n = max(int(lengths[idx].max()), 1)
        sel = torch.from_numpy(idx).to(b.x.device)
        mask = torch.arange(n, device=b.x.device)[None, :] < b.lengths[sel][:, None]
        iv = b.ivector[sel] if b.ivector is not None else None
        layers = model.embed_layers(b.x[sel, :n + ctx], iv, mask)
        for head, part in zip(heads, parts):
            part.append(head.pool(layers, mask))
        rows.append(sel)
    order = torch.cat(rows)
    out = []
    for head, part in zip(heads, parts):
        stats = torch.cat(part)
        pooled = torch.empty_like(stats)
        pooled[order] = stats
        out.append(head.classify(pooled))
    return out


def _minibatch_logps(model: MultiTaskModel, feed, mbs: list[list[Block]], part: str) -> Iterator[tuple[Batch, Any]]:
    """(batch, its utterance log-posteriors or None for a frame block) of every block of ``mbs``, twin blocks'
    from one trunk pass."""
    batches = feed.iterate((b for mb in mbs for b in mb), part)
    for mb in mbs:
        bs = [next(batches)[1] for _ in mb]
        if bs[0].frame_weight is not None:
            yield from ((b, None) for b in bs)
        else:
            yield from zip(bs, utterance_logps(model, bs[0], [b.task for b in bs]))


def recompute_batchnorm_stats(model: MultiTaskModel, schedule: MergedSchedule, device,
                              part: str = "train_diagnostic", feed: HostFeed | ResidentFeed | None = None,
                              tasks: set[int] | None = None, keep_trunk: bool = False,
                              twins: Sequence[tuple[int, ...]] = ()) -> int:
    """Batch-norm test statistics as Kaldi's final combination recomputes them: the plain
    average over the ``part`` blocks with the current weights (not a running average
    over training), so they do not depend on the batch order or on the number of ranks.

    Utterance heads' batch norms come second, from the trunk as it runs at test time: they
    normalise pooled statistics, which vary little from one utterance to the next, so the
    small difference between a block's trunk statistics and the test ones would come out
    amplified (on the demo, voice's valid accuracy halved).

    ``tasks``: the tasks whose blocks to average over (default all): those trained, so that a run
    on some tasks (``train.tasks``) takes no statistics from data it never trained on;
    ``keep_trunk``: a frozen trunk keeps the statistics it came with; ``twins``: tasks whose blocks share their
    inputs (:mod:`.twins`), whose heads' pass then runs the trunk once (the trunk's pass still takes each block,
    as before)."""
    tasks = set(range(len(model.tasks))) if tasks is None else tasks
    # the trunk's (unless frozen) and the heads' of ``tasks``: another head's statistics stay as they came
    owners = ([] if keep_trunk else [model.trunk]) + [model.heads[model.head_names[i]] for i in sorted(tasks)]
    bns = [m for o in owners for m in o.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    if not bns:
        return 0
    utt_heads = [i for i, t in enumerate(model.tasks) if t.kind == "utterance" and i in tasks]
    head_bns = [m for i in utt_heads for m in model.heads[model.head_names[i]].modules()
                if isinstance(m, torch.nn.BatchNorm1d)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    feed = feed or HostFeed(schedule, device)
    n = 0
    for second in (False, True) if head_bns else (False,):
        model.eval()
        for m in head_bns if second else bns:
            m.train()
            m.reset_running_stats()
        with torch.no_grad():
            blocks = [b for bs in schedule.blocks(part) for b in bs
                      if b.task in (utt_heads if second else tasks)]
            if second:
                for batch, logp in _minibatch_logps(model, feed, minibatches(blocks, twins), part):
                    step_loss(model, batch, logp)
            else:
                for _, batch in feed.iterate(blocks, part):
                    step_loss(model, batch)
                    n += 1
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)
    return n


def evaluate(model: MultiTaskModel, schedule: MergedSchedule, part: str, device, majority: list[int] | None = None,
             feed: HostFeed | ResidentFeed | None = None, tasks: set[int] | None = None,
             twins: Sequence[tuple[int, ...]] = ()) -> dict[int, dict[str, float]]:
    """Per task (of ``tasks``, default all): objective and accuracy per frame (Kaldi compute_prob),
    and the majority baseline; ``twins``' blocks from one trunk pass (:mod:`.twins`)."""
    tasks = set(range(len(schedule.egs))) if tasks is None else tasks
    model.eval()
    feed = feed or HostFeed(schedule, device)
    acc = torch.zeros(len(schedule.egs), 4, dtype=torch.float64, device=device)  # obj, correct, frames, baseline hits
    with torch.no_grad():
        blocks = [b for bs in schedule.blocks(part) for b in bs if b.task in tasks]
        for b, logp in _minibatch_logps(model, feed, minibatches(blocks, twins), part):
            b.weight = 1.0
            acc[b.task, :3] += step_loss(model, b, logp)[1]
            if majority is not None:
                hit = (b.target == majority[b.task]).float()
                acc[b.task, 3] += (hit * b.frame_weight).sum() if b.frame_weight is not None else hit.sum()
    res = {}
    for t, (obj, correct, frames, hits) in enumerate(acc.tolist()):
        if t not in tasks:
            continue
        res[t] = {"objective": obj / frames if frames else float("nan"),
                  "accuracy": correct / frames if frames else float("nan"), "frames": frames,
                  "baseline_accuracy": hits / frames if frames else float("nan")}
    return res
