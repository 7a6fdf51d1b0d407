"""Reading a merged egs dir (``babelflow merge``): the tasks and their block schedule.

A merged dir holds no examples, only where to find them (as Kaldi's multilingual
``egs.A.scp``). Reading applies what Kaldi's training pipes do with
``nnet3-copy-egs --outputs=... --weights=...``: the ``output`` NnetIo is scaled by the
task weight in float32 (``ScaleSupervisionWeight``, a no-op for 1.0) and renamed
``output-<i>``, so a merged eg equals the one Kaldi's trainer would see.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from ..errors import BabelflowError
from ..kaldi.general_matrix import SparseMatrix
from ..kaldi.nnet_example import NnetExample
from .format import Archive
from .kaldi_bridge import example_at
from .reader import EgsDir

#: schedule file of each part (train: one per merged archive A), written by babelflow.merge
BLOCK_FILES = {"train": "egs.{}.blocks.tsv", "valid": "valid.blocks.tsv",
                "train_diagnostic": "train_diagnostic.blocks.tsv"}


def is_merged_dir(path: str | os.PathLike) -> bool:
    """True for a dir written by ``babelflow merge`` (rather than a per-task egs dir)."""
    p = Path(path)
    return (p / "tasks.tsv").is_file() and (p / "info" / "num_tasks").is_file()


@dataclass(frozen=True)
class MergedTask:
    index: int
    name: str
    egs: EgsDir
    weight: float
    output: str


class Block(NamedTuple):
    """One schedule row: ``count`` examples of ``task`` from its archive ``archive``, from ``first``."""

    task: int
    output: str
    weight: float
    archive: int
    first: int
    count: int


def scale_and_rename(eg: NnetExample, output: str, weight: float) -> NnetExample:
    """Kaldi's ScaleSupervisionWeight then rename of the NnetIo ``output`` (in place)."""
    for nio in eg.io:
        if nio.name == "output":
            if weight != 1.0:
                w = np.float32(weight)
                feats = nio.features
                if isinstance(feats, SparseMatrix):
                    nio.features = SparseMatrix([(d, [(c, float(np.float32(v) * w)) for c, v in pairs])
                                                 for d, pairs in feats.rows])
                else:
                    nio.features = np.asarray(feats, np.float32) * w
            nio.name = output
            return eg
    raise BabelflowError("eg has no NnetIo named 'output'")


class MergedEgs:
    """A merged egs dir: ``tasks`` (name, EgsDir, weight, output) and the block schedules.

    Task egs dirs are stored as given to ``merge`` (relative paths are relative to the
    working directory, as paths in Kaldi scp files are)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not is_merged_dir(self.path):
            raise BabelflowError(f"{self.path}: not a merged egs dir (no tasks.tsv or info/num_tasks)")

    @cached_property
    def info(self) -> dict[str, str]:
        return {p.name: p.read_text().strip() for p in sorted((self.path / "info").iterdir()) if p.is_file()}

    @property
    def num_archives(self) -> int:
        return int(self.info["num_archives"])

    @cached_property
    def tasks(self) -> list[MergedTask]:
        with open(self.path / "tasks.tsv", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        tasks = []
        for k, r in enumerate(rows):
            if int(r["index"]) != k:
                raise BabelflowError(f"{self.path}/tasks.tsv: row {k + 1} has index {r['index']}")
            try:
                egs = EgsDir(r["egs_dir"])
            except BabelflowError as e:
                raise BabelflowError(f"{self.path}: task {k} '{r['name']}': {e}") from None
            tasks.append(MergedTask(k, r["name"], egs, float(r["weight"]), f"output-{k}"))
        if len(tasks) != int(self.info["num_tasks"]):
            raise BabelflowError(f"{self.path}: tasks.tsv lists {len(tasks)} tasks, info/num_tasks says "
                                 f"{self.info['num_tasks']}")
        return tasks

    def _files(self, part: str, archive: int | None) -> list[Path]:
        if part not in BLOCK_FILES:
            raise BabelflowError(f"unknown part '{part}' (choose from {', '.join(BLOCK_FILES)})")
        if part != "train":
            return [self.path / BLOCK_FILES[part]]
        numbers = range(1, self.num_archives + 1) if archive is None else [archive]
        return [self.path / BLOCK_FILES[part].format(a) for a in numbers]

    def blocks(self, part: str = "train", archive: int | None = None) -> Iterator[Block]:
        """Schedule rows in order (of merged archive ``archive``, or of all archives).
        A block spanning two source archives is two rows."""
        for path in self._files(part, archive):
            if not path.exists():
                raise BabelflowError(f"{path}: missing")
            with open(path, newline="") as f:
                for r in csv.DictReader(f, delimiter="\t"):
                    yield Block(int(r["task"]), r["output"], float(r["weight"]), int(r["src_archive"]),
                                int(r["first"]), int(r["count"]))

    def nnet_examples(self, part: str = "train", archive: int | None = None) -> Iterator[tuple[str, NnetExample]]:
        """(key, NnetExample) in schedule order, with ``output`` renamed and scaled as Kaldi does."""
        tasks = self.tasks
        opened: dict[tuple[int, int], Archive] = {}
        for b in self.blocks(part, archive):
            task = tasks[b.task]
            arch = opened.get((b.task, b.archive))
            if arch is None:
                arch = opened[(b.task, b.archive)] = task.egs.archive(part, b.archive)
            if b.first + b.count > len(arch):
                raise BabelflowError(f"{self.path}: block of task {b.task} reaches example {b.first + b.count - 1} "
                                     f"of {arch.prefix}, which has {len(arch)}")
            for i in range(b.first, b.first + b.count):
                key, eg = example_at(task.egs, arch, i)
                yield key, scale_and_rename(eg, b.output, b.weight)
