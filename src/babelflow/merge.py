"""Merging per-task egs dirs into one multi-task schedule (Kaldi's ``combine_egs.sh``).

Kaldi's ``steps/nnet3/multilingual/combine_egs.sh`` copies no example data either: it
writes per merged archive an scp of pointers into the languages' archives, plus
``<key> output-<i>`` and ``<key> <weight>`` tables that ``nnet3-copy-egs --outputs
--weights`` applies when training reads them. Here the pointers are block rows
``(task, source archive, first example, count)`` in ``egs.A.blocks.tsv``; the rename
and scaling are applied when the schedule is read (:class:`babelflow.egs.merged.MergedDir`).

The interleaving is ``allocate_multilingual_examples.py`` (Kaldi >= 191b39a14), step
for step (Python 3 ``round``, i.e. half to even; float fractions; ties to the lowest
task; the final flush round into the last archive), so a merged dir lists the very
examples, in the very order, that Kaldi's ``egs.A.scp`` would. Samplers other than
``kaldi`` are a deliberate deviation (Kaldi never resamples tasks).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .egs.format import INDEX_DTYPE
from .egs.merged import BLOCK_FILES
from .egs.reader import PARTS, EgsDir
from .errors import BabelflowError
from .io import atomic_dir, write_info
from .options import StepOptions, option

if TYPE_CHECKING:
    from .config import Pipeline

log = logging.getLogger("babelflow")

SAMPLERS = ("kaldi", "uniform", "temperature")
BLOCK_COLUMNS = ("block", "task", "output", "weight", "src_archive", "first", "count")
TASK_COLUMNS = ("index", "name", "egs_dir", "kind", "num_outputs", "weight", "num_egs")
#: fields every task must agree on (combine_egs.sh's check_params), with defaults for absent files
CHECKED = {"feat_dim": None, "left_context": None, "right_context": None, "left_context_initial": "-1",
           "right_context_final": "-1", "ivector_dim": "0", "cmvn_opts": ""}


@dataclass
class MergeOptions(StepOptions):
    """``params.yaml`` ``merge:`` -> ``babelflow merge`` (Kaldi's combine_egs.sh)."""

    SECTION = "merge"
    weights: dict[str, float] = option(default_factory=dict, cli=False,
                                       help="task -> supervision weight (lang2weight): every task, or none")
    local_conf: str | None = option(None, cli=False,
                                    help="Kaldi's local.conf: its lang_list + lang2weight weigh those tasks")
    block_size: int = option(256, help="consecutive examples taken from one task (a minibatch)")
    sampler: str = option("kaldi", choices=("kaldi", "uniform", "temperature"),
                         help="kaldi: every example once per epoch; uniform, temperature: resample tasks")
    temperature: float = option(1.0, help="temperature sampler: p ~ n^(1/T)")
    num_archives: int | None = option(None, help="default: the sum of the tasks' num_archives (Kaldi)")


def resolve(p: Pipeline, check_paths: bool) -> None:
    """Task weights (Kaldi's lang2weight): one per task, finite and > 0, or none at all (1.0 each).
    With ``merge.local_conf`` the recipe's own ``lang_list`` + ``lang2weight`` weigh its languages;
    ``merge.weights`` then names only the other tasks (if any)."""
    o = p.options(MergeOptions)
    weights = dict(o.weights)
    for name, w in weights.items():
        if name not in p.tasks:
            raise p.error(f"merge.weights.{name}", f"no such task (tasks: {', '.join(p.tasks)})")
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
            raise p.error(f"merge.weights.{name}", f"weight must be a finite number > 0, got {w}")
    if o.local_conf and (check_paths or Path(o.local_conf).is_file()):
        weights = _with_local_conf(p, o.local_conf, weights)
    missing = [t for t in p.tasks if weights and t not in weights]
    if missing and not (o.local_conf and not o.weights):
        raise p.error("merge.weights", f"no weight for task(s) {', '.join(missing)} "
                      "(give every task a weight, or none for 1.0 each)")
    for name, w in weights.items():
        p.tasks[name].weight = float(w)


def _with_local_conf(p: Pipeline, path: str, weights: dict[str, float]) -> dict[str, float]:
    from .kaldi.local_conf import read_local_conf

    if not Path(path).is_file():
        raise p.error("merge.local_conf", f"file '{path}' not found")
    try:
        conf = read_local_conf(path)
        recipe = conf.weights()
    except BabelflowError as e:
        raise p.error("merge.local_conf", str(e)) from None
    for lang in recipe:
        if lang not in p.tasks:
            raise p.error("merge.local_conf", f"{conf.where('lang_list')}: lang_list names '{lang}', not a task "
                          f"(tasks: {', '.join(p.tasks)})")
        if lang in weights:
            raise p.error(f"merge.weights.{lang}", f"also weighed by {conf.where('lang2weight')}: give it in one place")
    return {**weights, **recipe}


def task_args(p: Pipeline) -> list[str]:
    """The flags of ``babelflow merge``: the options, then one ``--task NAME=EGS_DIR:WEIGHT`` per task in order."""
    o = p.options(MergeOptions)
    args = o.to_args(exclude=() if o.sampler == "temperature" else ("temperature",))
    return args + [f"--task={t.name}={p.layout.egs(t.name)}:{t.weight!r}" for t in p.tasks.values()]


class MergeTask(NamedTuple):
    """One task of a merge: its name (output order is list order), egs dir and supervision weight."""

    name: str
    egs_dir: str | os.PathLike
    weight: float = 1.0


def parse_task_arg(text: str) -> MergeTask:
    """``NAME=EGS_DIR[:WEIGHT]`` -> (name, dir, weight); a bare ``EGS_DIR`` is named after its folder."""
    name, sep, rest = text.partition("=")
    if not sep:
        name, rest = Path(text).name, text
    egs_dir, weight = rest, "1"
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        egs_dir, weight = head, tail
    try:
        return MergeTask(name, egs_dir, float(weight))
    except ValueError:
        raise BabelflowError(f"--task {text}: weight '{weight}' is not a number (NAME=EGS_DIR:WEIGHT)") from None


def allocate(counts: list[int], num_archives: int, block_size: int) -> list[list[tuple[int, int, int]]]:
    """Kaldi's allocation: per archive, blocks ``(task, first example in task order, count)``.

    Archive a gets ``round((remaining / block_size) / remaining_archives)`` blocks; each
    block takes up to ``block_size`` next examples of the task with the largest remaining
    fraction (ties: lowest index); then one flush round of ``len(counts)`` blocks goes to
    the last archive. Empty blocks (Kaldi reads no lines) are left out. A task with no
    examples is never picked (Kaldi would divide by zero).
    """
    if num_archives < 1 or block_size < 1:
        raise BabelflowError(f"allocate: num_archives ({num_archives}) and block_size ({block_size}) must be >= 1")
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts):
        raise BabelflowError(f"allocate: negative example count in {counts}")
    remaining = list(counts)
    frac = [1.0 if c else 0.0 for c in counts]
    pick = frac.__getitem__
    tasks = range(len(counts))
    num_remaining = sum(counts)
    out: list[list[tuple[int, int, int]]] = [[] for _ in range(num_archives)]
    for a in range(num_archives + 1):
        if a < num_archives:  # the same two float divisions as the script, then round-half-even
            num_blocks = int(round(float(num_remaining) / block_size / (num_archives - a)))
            blocks = out[a]
        else:  # second round for the last archive: flush what rounding left
            num_blocks, blocks = len(counts), out[-1]
        for _ in range(num_blocks):
            t = max(tasks, key=pick)  # first maximum = lowest index on ties, as Python's max()
            n = min(block_size, remaining[t])
            if n == 0:
                continue
            blocks.append((t, counts[t] - remaining[t], n))
            remaining[t] -= n
            num_remaining -= n
            frac[t] = float(remaining[t]) / counts[t]
    if num_remaining:
        log.warning("allocate: %d examples left after the flush round (Kaldi drops them too)", num_remaining)
    return out


def sampler_counts(counts: list[int], sampler: str = "kaldi", temperature: float = 1.0) -> list[int]:
    """Examples each task contributes per epoch: its own count (``kaldi``), or
    ``total * p_l`` with ``p_l ∝ n_l^(1/T)`` (``temperature``; ``uniform`` = equal shares),
    rounded by largest remainder (ties to the lowest index) so the total is kept."""
    if sampler == "kaldi":
        return [int(c) for c in counts]
    if sampler not in SAMPLERS:
        raise BabelflowError(f"unknown sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")
    if not (math.isfinite(temperature) and temperature > 0):
        raise BabelflowError(f"temperature must be a finite number > 0, got {temperature!r}")
    n = np.asarray(counts, np.float64)
    p = np.ones_like(n) if sampler == "uniform" else np.where(n > 0, n ** (1.0 / temperature), 0.0)
    exact = int(n.sum()) * p / p.sum()
    out = np.floor(exact).astype(np.int64)
    short = int(n.sum()) - int(out.sum())
    order = sorted(range(len(n)), key=lambda i: (-(exact[i] - out[i]), i))
    out[order[:short]] += 1
    return [int(x) for x in out]


@dataclass
class _Source:
    """One part of one task: its archives (J, example count) in Kaldi's example order."""

    archives: list[int]
    offsets: np.ndarray  # example index of each archive's first example, plus the total
    frames: np.ndarray  # cumulative output frames, length total + 1

    @property
    def total(self) -> int:
        return int(self.offsets[-1])

    def rows(self, first: int, count: int) -> Iterator[tuple[int, int, int]]:
        """(archive J, first in archive, count) covering ``count`` examples from virtual
        index ``first``; indices past the end wrap around (samplers that repeat a task)."""
        n = self.total
        while count > 0:
            s = first % n
            k = int(np.searchsorted(self.offsets, s, side="right")) - 1
            take = min(count, int(self.offsets[k + 1]) - s)
            yield self.archives[k], s - int(self.offsets[k]), take
            first, count = first + take, count - take

    def num_frames(self, first: int, count: int) -> int:
        n = self.total
        full, rest = divmod(count, n) if n else (0, 0)
        s = first % n if n else 0
        e = s + rest
        tail = self.frames[min(e, n)] - self.frames[s] + (self.frames[e - n] if e > n else 0)
        return int(full * self.frames[-1] + tail)


def _source(egs: EgsDir, part: str, where: str) -> _Source:
    js, sizes, frames = [], [], []
    for j in range(1, egs.num_archives + 1):
        index = egs.path / f"{PARTS[part]}.{j}.index"
        if not index.exists():
            if part == "train":
                raise BabelflowError(f"{where}: archive {index} missing (info/num_archives is {egs.num_archives})")
            continue
        n = np.fromfile(index, INDEX_DTYPE)["n"]
        js.append(j), sizes.append(len(n)), frames.append(n)
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    cum = np.concatenate([[0], np.cumsum(np.concatenate(frames) if frames else [], dtype=np.int64)])
    return _Source(js, offsets, cum)


def _task_field(egs: EgsDir, field: str) -> str:
    if field == "cmvn_opts":  # combine_egs.sh compares the cmvn_opts file
        f = egs.path / "cmvn_opts"
        return f.read_text().strip() if f.exists() else egs.info.get("cmvn_opts", "")
    value = egs.info.get(field, CHECKED.get(field))
    if value is None:
        raise BabelflowError(f"{egs.path}/info/{field}: missing")
    return value.strip()


def _open_tasks(given: Sequence[MergeTask | str | os.PathLike]) -> list[tuple[str, EgsDir, float]]:
    """Open and cross-check the tasks; every error names the task (index, name, dir)."""
    if not given:
        raise BabelflowError("merge: no egs dirs given")
    tasks = [t if isinstance(t, MergeTask) else MergeTask(Path(t).name, t) for t in given]
    names, egs_dirs, weights = [t.name for t in tasks], [t.egs_dir for t in tasks], [t.weight for t in tasks]
    bad = [n for n in names if not n or any(c.isspace() for c in n)]
    if bad or len(set(names)) != len(names):
        raise BabelflowError(f"merge: task names must be unique and without whitespace, got {names}")
    label = [f"task {i} '{n}' ({d})" for i, (n, d) in enumerate(zip(names, egs_dirs))]
    for i, w in enumerate(weights):
        try:
            ok = math.isfinite(float(w)) and float(w) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise BabelflowError(f"merge: {label[i]}: weight {w!r} must be a finite number > 0")
    dirs = []
    for i, d in enumerate(egs_dirs):
        try:
            egs = EgsDir(d)
            _ = (egs.num_archives, egs.feat_dim, egs.num_outputs)  # required info/ entries
        except BabelflowError as e:
            raise BabelflowError(f"merge: {label[i]}: cannot open egs dir: {e}") from None
        dirs.append(egs)
    for field in CHECKED:
        ref = _task_field(dirs[0], field)
        for i, egs in enumerate(dirs[1:], 1):
            if (v := _task_field(egs, field)) != ref:
                raise BabelflowError(f"merge: {label[i]}: {field} is '{v}', but {label[0]} has '{ref}'")
    ie = [(i, egs.info.get("final.ie.id")) for i, egs in enumerate(dirs) if egs.ivector_dim]
    if len({v for _, v in ie}) > 1:
        raise BabelflowError("merge: i-vector extractor ids (info/final.ie.id) differ: "
                             + ", ".join(f"{label[i]}: {v}" for i, v in ie))
    frame = [i for i, egs in enumerate(dirs) if egs.kind == "frame"]
    for i in frame[1:]:
        a, b = _task_field(dirs[i], "frames_per_eg"), _task_field(dirs[frame[0]], "frames_per_eg")
        if a != b:
            raise BabelflowError(f"merge: {label[i]}: frames_per_eg is '{a}', but {label[frame[0]]} has '{b}'")
    return [(n, egs, float(w)) for n, egs, w in zip(names, dirs, weights)]


def _fmt(v: object) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def merge_egs(tasks: Sequence[MergeTask | str | os.PathLike], out_dir: str | os.PathLike,
              opts: MergeOptions | None = None, seed: int = 0) -> dict:
    """Write a merged egs dir (a schedule over the tasks' archives; no example data copied).

    ``tasks`` in output order (``output-0``, ...); a bare egs dir is a task named after its
    folder with weight 1.0. ``opts.weights`` is params' view and is not read here: each
    task carries its own weight.

    ``sampler='kaldi'`` is combine_egs.sh: every example once per epoch. ``uniform`` /
    ``temperature`` change how many examples each task contributes to the training part
    (its examples in order, repeated or cut); diagnostics always keep every example once.
    ``seed`` is recorded only: all samplers are deterministic. Returns the info written.
    """
    import pandas as pd

    opts = opts or MergeOptions()
    block_size, num_archives, sampler, temperature = opts.block_size, opts.num_archives, opts.sampler, opts.temperature
    if sampler not in SAMPLERS:
        raise BabelflowError(f"merge: unknown sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")
    if block_size < 1:
        raise BabelflowError(f"merge: block size must be >= 1, got {block_size}")
    if num_archives is not None and num_archives < 1:
        raise BabelflowError(f"merge: number of archives must be >= 1, got {num_archives}")
    egs_dirs = [t.egs_dir if isinstance(t, MergeTask) else t for t in tasks]
    tasks = _open_tasks(list(tasks))
    sources = {part: [_source(egs, part, f"task {i} '{n}' ({egs.path})") for i, (n, egs, _) in enumerate(tasks)]
               for part in BLOCK_FILES}
    for i, src in enumerate(sources["train"]):
        if src.total == 0:
            raise BabelflowError(f"merge: task {i} '{tasks[i][0]}' ({egs_dirs[i]}): no training examples")
        declared = tasks[i][1].info.get("num_egs")
        if declared is not None and int(declared) != src.total:
            raise BabelflowError(f"merge: task {i} '{tasks[i][0]}' ({egs_dirs[i]}): info/num_egs is {declared}, "
                                 f"its archives hold {src.total}")
    if num_archives is None:
        num_archives = sum(egs.num_archives for _, egs, _ in tasks)
    contributed = sampler_counts([s.total for s in sources["train"]], sampler, temperature)

    alloc_rows = []
    schedules: dict[str, list[list[str]]] = {}
    for part, srcs in sources.items():
        counts = contributed if part == "train" else [s.total for s in srcs]
        plan = allocate(counts, num_archives if part == "train" else 1, block_size)
        files = []
        for a, blocks in enumerate(plan, 1):
            lines = ["\t".join(BLOCK_COLUMNS)]
            stats = np.zeros((len(tasks), 3), np.int64)  # examples, frames, blocks
            for b, (t, first, count) in enumerate(blocks):
                w = _fmt(tasks[t][2])
                for j, f, c in srcs[t].rows(first, count):
                    lines.append(f"{b}\t{t}\toutput-{t}\t{w}\t{j}\t{f}\t{c}")
                stats[t] += (count, srcs[t].num_frames(first, count), 1)
            files.append(lines)
            alloc_rows += [(part, str(a), t, tasks[t][0], *map(int, stats[t])) for t in range(len(tasks))]
        schedules[part] = files
    alloc = pd.DataFrame(alloc_rows, columns=["part", "archive", "task", "name", "examples", "frames", "blocks"])
    totals = alloc.groupby(["part", "task", "name"], sort=False)[["examples", "frames", "blocks"]].sum().reset_index()
    totals.insert(1, "archive", "total")
    grand = alloc.groupby("part", sort=False)[["examples", "frames", "blocks"]].sum().reset_index()
    for pos, (col, value) in enumerate((("archive", "total"), ("task", "all"), ("name", "all")), 1):
        grand.insert(pos, col, value)
    alloc = pd.concat([alloc, totals, grand], ignore_index=True)
    order = {p: k for k, p in enumerate(BLOCK_FILES)}
    alloc = alloc.sort_values("part", key=lambda s: s.map(order), kind="stable")

    first = tasks[0][1]
    info = {"num_tasks": len(tasks), "num_archives": num_archives,
            **{k: _task_field(first, k) for k in ("feat_dim", "ivector_dim", "left_context", "right_context",
                                                   "left_context_initial", "right_context_final")},
            "frames_per_eg": _task_field(first, "frames_per_eg"), "cmvn_opts": _task_field(first, "cmvn_opts"),
            "sampler": sampler, "block_size": block_size, "temperature": float(temperature), "seed": seed,
            "num_egs": int(sum(contributed))}
    if first.ivector_dim and "final.ie.id" in first.info:
        info["final.ie.id"] = first.info["final.ie.id"]
    with atomic_dir(out_dir) as tmp:
        write_info(tmp, {k: _fmt(v) for k, v in info.items()})
        (tmp / "cmvn_opts").write_text(f"{info['cmvn_opts']}\n")
        for part, files in schedules.items():
            for a, lines in enumerate(files, 1):
                (tmp / BLOCK_FILES[part].format(a)).write_text("\n".join(lines) + "\n")
        task_lines = ["\t".join(TASK_COLUMNS)] + [
            "\t".join(map(_fmt, (i, n, os.fspath(d), egs.kind, egs.num_outputs, w, sources["train"][i].total)))
            for i, ((n, egs, w), d) in enumerate(zip(tasks, egs_dirs))]
        (tmp / "tasks.tsv").write_text("\n".join(task_lines) + "\n")
        alloc.to_csv(tmp / "allocation.tsv", sep="\t", index=False)
    info["examples_per_task"] = {n: c for (n, _, _), c in zip(tasks, contributed)}
    return info
