"""Minibatches from a merged schedule: each block of one task is a minibatch (Kaldi's
monolingual minibatches), or blocks of several tasks form one mixed step.

A block is read from the task's own egs archives by index (no copy of the data was
made by the merge); inputs are sliced with context at read time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..egs.format import Archive
from ..egs.reader import EgsDir
from ..errors import BabelflowError

PART_FILES = {"train": "egs.{a}.blocks.tsv", "valid": "valid.blocks.tsv", "train_diagnostic": "train_diagnostic.blocks.tsv"}


@dataclass
class Block:
    """One minibatch's worth of examples of one task: [(source archive, first, count)]."""

    task: int
    weight: float
    pieces: list[tuple[int, int, int]]

    @property
    def size(self) -> int:
        return sum(c for _, _, c in self.pieces)


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


class MergedSchedule:
    """A merged egs dir (``babelflow merge``): its tasks and blocks per part."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        tasks = self.path / "tasks.tsv"
        if not tasks.is_file():
            raise BabelflowError(f"{self.path}: not a merged egs dir (no tasks.tsv; run `babelflow merge`)")
        self.tasks = pd.read_csv(tasks, sep="\t", keep_default_na=False)
        self.egs = [EgsDir(d) for d in self.tasks["egs_dir"]]
        info = {p.name: p.read_text().strip() for p in (self.path / "info").iterdir()}
        self.num_archives = int(info["num_archives"])
        self.left_context, self.right_context = int(info["left_context"]), int(info["right_context"])
        self.feat_dim, self.ivector_dim = int(info["feat_dim"]), int(info.get("ivector_dim", 0))
        self._archives: dict[tuple[int, str, int], Archive] = {}

    @property
    def names(self) -> list[str]:
        return list(self.tasks["name"])

    def blocks(self, part: str = "train") -> list[list[Block]]:
        """Per merged archive, its blocks in schedule order."""
        files = ([self.path / PART_FILES["train"].format(a=a) for a in range(1, self.num_archives + 1)]
                 if part == "train" else [self.path / PART_FILES[part]])
        out = []
        for f in files:
            if not f.exists():
                out.append([])
                continue
            df = pd.read_csv(f, sep="\t")
            blocks = []
            for _, rows in df.groupby("block", sort=True):
                r0 = rows.iloc[0]
                blocks.append(Block(int(r0["task"]), float(r0["weight"]),
                                    [(int(r["src_archive"]), int(r["first"]), int(r["count"])) for _, r in rows.iterrows()]))
            out.append(blocks)
        return out

    def archive(self, task: int, part: str, number: int) -> Archive:
        key = (task, part, number)
        if key not in self._archives:
            self._archives[key] = self.egs[task].archive(part, number)
        return self._archives[key]

    def load(self, block: Block, part: str = "train", device: str | torch.device = "cpu") -> Batch:
        """Gather a block's inputs (with context) and targets as tensors."""
        egs = self.egs[block.task]
        xs, ivs, tgt, fw, lens = [], [], [], [], []
        for src, first, count in block.pieces:
            arch = self.archive(block.task, part, src)
            ids = np.arange(first, first + count)
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
    for t, egs in enumerate(schedule.egs):
        counts = np.zeros(egs.num_outputs, np.float64)
        for arch in egs.archives("train"):
            if egs.kind == "frame":
                lab = arch.labels[arch.labels["pdf"] >= 0]
                np.add.at(counts, lab["pdf"], lab["weight"])
            else:
                np.add.at(counts, arch.index["label"], 1.0)
        out.append(int(counts.argmax()))
    return out


