"""Reading a merged egs dir (``babelflow merge``): the tasks and their block schedule.

A merged dir holds no examples, only where to find them (as Kaldi's multilingual
``egs.A.scp``): ``tasks.tsv`` (name, egs dir, weight per task) and per part the
``*.blocks.tsv`` schedule, one row per (block, source archive) piece. This module is the
one reader of both; Kaldi NnetExamples (``egs show``) are made from it in
:mod:`babelflow.egs.examples`, training tensors in :mod:`babelflow.nnet.data`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from ..errors import BabelflowError
from .format import Archive
from .reader import EgsDir, InfoDir

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
    egs_dir: str  # as written in tasks.tsv (relative paths: to the working directory)
    egs: EgsDir
    weight: float  # supervision weight (merge.weights)
    output: str  # output-<index>


class Piece(NamedTuple):
    """Consecutive examples of one source archive of the task: ``count`` from ``first``."""

    archive: int
    first: int
    count: int


@dataclass(frozen=True)
class Block:
    """One block of the schedule: examples of one task, read as one minibatch. A block
    spanning two of the task's archives has two pieces (two rows of the schedule file)."""

    task: int
    output: str
    weight: float
    pieces: tuple[Piece, ...]

    @property
    def size(self) -> int:
        return sum(p.count for p in self.pieces)


class MergedDir(InfoDir):
    """A merged egs dir: ``tasks`` (:class:`MergedTask`), ``info/`` and the block schedules.

    Task egs dirs are stored as given to ``merge`` (relative paths are relative to the
    working directory, as paths in Kaldi scp files are)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not is_merged_dir(self.path):
            raise BabelflowError(f"{self.path}: not a merged egs dir (no tasks.tsv or info/num_tasks; "
                                 "run `babelflow merge`)")
        self._archives: dict[tuple[int, str, int], Archive] = {}

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
            tasks.append(MergedTask(k, r["name"], r["egs_dir"], egs, float(r["weight"]), f"output-{k}"))
        if len(tasks) != self._int("num_tasks"):
            raise BabelflowError(f"{self.path}: tasks.tsv lists {len(tasks)} tasks, info/num_tasks says "
                                 f"{self.info['num_tasks']}")
        return tasks

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def egs(self) -> list[EgsDir]:
        return [t.egs for t in self.tasks]

    def block_files(self, part: str = "train") -> list[Path]:
        """The schedule files of ``part``: one per merged archive (train), or one."""
        if part not in BLOCK_FILES:
            raise BabelflowError(f"unknown part '{part}' (choose from {', '.join(BLOCK_FILES)})")
        if part != "train":
            return [self.path / BLOCK_FILES[part]]
        return [self.path / BLOCK_FILES[part].format(a) for a in range(1, self.num_archives + 1)]

    def archive_blocks(self, part: str = "train") -> list[list[Block]]:
        """Per merged archive, its blocks in schedule order."""
        return [_read_blocks(f) for f in self.block_files(part)]

    def blocks(self, part: str = "train", archive: int | None = None) -> Iterator[Block]:
        """Blocks in schedule order: of merged archive ``archive``, or of all archives."""
        files = self.block_files(part)
        if archive is not None:
            if not 1 <= archive <= len(files):
                raise BabelflowError(f"{self.path}: no merged archive {archive} of part '{part}'")
            files = [files[archive - 1]]
        for f in files:
            yield from _read_blocks(f)

    def archive(self, task: int, part: str, number: int) -> Archive:
        """Source archive ``number`` of ``part`` of task ``task`` (opened once)."""
        key = (task, part, number)
        if key not in self._archives:
            self._archives[key] = self.tasks[task].egs.archive(part, number)
        return self._archives[key]

    def piece_archive(self, block: Block, piece: Piece, part: str = "train") -> Archive:
        """The archive a piece of a block reads, checked to hold the piece's examples."""
        arch = self.archive(block.task, part, piece.archive)
        if piece.first + piece.count > len(arch):
            raise BabelflowError(f"{self.path}: block of task {block.task} reaches example "
                                 f"{piece.first + piece.count - 1} of {arch.prefix}, which has {len(arch)}")
        return arch


def _read_blocks(path: Path) -> list[Block]:
    """A schedule file's rows grouped into blocks (the rows of one block are consecutive)."""
    if not path.exists():
        raise BabelflowError(f"{path}: missing")
    blocks: list[Block] = []
    current = -1
    with open(path, newline="") as f:
        for line, r in enumerate(csv.DictReader(f, delimiter="\t"), 2):
            number, piece = int(r["block"]), Piece(int(r["src_archive"]), int(r["first"]), int(r["count"]))
            if number == current:
                b = blocks[-1]
                blocks[-1] = Block(b.task, b.output, b.weight, (*b.pieces, piece))
            elif number > current:
                blocks.append(Block(int(r["task"]), r["output"], float(r["weight"]), (piece,)))
                current = number
            else:
                raise BabelflowError(f"{path}:{line}: block {number} after block {current}")
    return blocks
