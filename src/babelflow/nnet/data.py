"""Minibatches from a merged schedule: each block of one task is a minibatch (Kaldi's
monolingual minibatches), or blocks of several tasks form one mixed step.

The schedule is read by :class:`babelflow.egs.merged.MergedDir`; a block is read from the
task's own egs archives by index (no copy of the data was made by the merge); inputs are
sliced with context at read time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..egs.merged import Block, MergedDir

__all__ = ["Batch", "Block", "MergedSchedule", "epoch_plan", "majority_labels"]


@dataclass
class Batch:
    task: int
    weight: float  # supervision weight of the task (merge.weights)
    x: torch.Tensor  # (B, lc + n + rc, feat_dim)
    ivector: torch.Tensor | None
    target: torch.Tensor  # frame tasks (B, n) pdf ids (-1: none); utterance tasks (B,) class
    frame_weight: torch.Tensor | None  # frame tasks (B, n): 1/#chunks covering the frame, 0 where none
    lengths: torch.Tensor | None  # utterance tasks (B,) valid output frames

    @property
    def num_frames(self) -> float:
        """Supervised frames (weighted as Kaldi counts them) or utterances."""
        return float(self.frame_weight.sum()) if self.frame_weight is not None else float(len(self.target))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        """The batch with ``fn`` applied to each tensor (``b.map(lambda t: t.to(dev, non_blocking=True))``)."""
        return replace(self, **{f.name: fn(v) for f in fields(self)
                                if isinstance(v := getattr(self, f.name), torch.Tensor)})


class MergedSchedule:
    """Training's view of a merged egs dir (``babelflow merge``): its :class:`MergedDir`
    (``merged``) and its blocks loaded as tensors."""

    def __init__(self, path: str | Path):
        self.merged = MergedDir(path)
        self.path = self.merged.path
        self.egs = self.merged.egs  # reads and checks tasks.tsv now
        self.names = self.merged.names
        self.egs_dirs = [t.egs_dir for t in self.merged.tasks]  # as in tasks.tsv
        self.num_archives = self.merged.num_archives
        self.left_context, self.right_context = self.merged.left_context, self.merged.right_context
        self.feat_dim, self.ivector_dim = self.merged.feat_dim, self.merged.ivector_dim

    def blocks(self, part: str = "train") -> list[list[Block]]:
        """Per merged archive, its blocks in schedule order."""
        return self.merged.archive_blocks(part)

    def load(self, block: Block, part: str = "train", device: str | torch.device = "cpu") -> Batch:
        """Gather a block's inputs (with context) and targets as tensors."""
        egs = self.egs[block.task]
        xs, ivs, tgt, fw, lens = [], [], [], [], []
        for piece in block.pieces:
            arch = self.merged.piece_archive(block, piece, part)
            ids = np.arange(piece.first, piece.first + piece.count)
            x, n = arch.inputs_padded(ids, self.left_context, self.right_context, dtype=None)
            xs.append(x)
            if arch.ivector is not None:
                ivs.append(arch.ivector[ids])
            if egs.kind == "frame":
                pdf, w = arch.frame_targets(ids)
                tgt.append(pdf), fw.append(w)
            else:
                tgt.append(arch.index["label"][ids]), lens.append(n)
        if len(xs) > 1 and len({x.shape[1] for x in xs}) > 1:  # utterance pieces of other lengths
            width = max(x.shape[1] for x in xs)
            xs = [np.concatenate([x, np.repeat(x[:, -1:], width - x.shape[1], axis=1)], axis=1) for x in xs]
        x = torch.from_numpy(np.concatenate(xs)).to(device=device, dtype=torch.float32)
        iv = torch.from_numpy(np.concatenate(ivs)).to(device) if ivs else None
        if egs.kind == "frame":
            return Batch(block.task, block.weight, x, iv, torch.from_numpy(np.concatenate(tgt)).long().to(device),
                         torch.from_numpy(np.concatenate(fw)).to(device), None)
        return Batch(block.task, block.weight, x, iv, torch.from_numpy(np.concatenate(tgt)).long().to(device),
                     None, torch.from_numpy(np.concatenate(lens)).to(device))


def epoch_plan(archives: list[list[Block]], epoch: int, seed: int, window: int = 20) -> list[Block]:
    """The blocks of one epoch: archives in a seeded order, blocks locally shuffled within
    windows (Kaldi reads archive after archive through a 5000-eg shuffle buffer)."""
    rng = np.random.default_rng([seed, epoch])
    plan: list[Block] = []
    for a in rng.permutation(len(archives)):
        blocks = archives[a]
        for s in range(0, len(blocks), window):
            chunk = blocks[s:s + window]
            plan += [chunk[i] for i in rng.permutation(len(chunk))]
    return plan


def majority_labels(schedule: MergedSchedule) -> list[int]:
    """Per task, the most frequent training label (pdf or class): the baseline's prediction."""
    out = []
    for egs in schedule.egs:
        counts = np.zeros(egs.num_outputs, np.float64)
        for arch in egs.archives("train"):
            if egs.kind == "frame":
                lab = arch.labels[arch.labels["pdf"] >= 0]
                np.add.at(counts, lab["pdf"], lab["weight"])
            else:
                np.add.at(counts, arch.index["label"], 1.0)
        out.append(int(counts.argmax()))
    return out


