"""Options of the egs step (``params.yaml`` ``egs:``), apart from the code so that the
Snakefile can render them without importing the egs writer."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..options import StepOptions, option

if TYPE_CHECKING:
    from ..config import Pipeline


@dataclass
class EgsOptions(StepOptions):
    """``params.yaml`` ``egs:`` -> ``babelflow egs job|finalize`` (Kaldi's get_egs.sh)."""

    SECTION = "egs"
    frames_per_eg: int = 8
    left_context: int | None = option(None, help="frames of left context (null in params: the model's)")
    right_context: int | None = option(None, help="frames of right context (null in params: the model's)")
    num_valid_utts: int = option(300, help="held out; valid_fraction of the task when it has < 4x this")
    num_train_subset_utts: int = 300
    valid_fraction: float = 0.1
    valid_by: str = option("utterance", choices=("utterance", "speaker"),
                           help="utterance: Kaldi's held-out utterances; speaker: whole speakers, unseen in training")
    length_tolerance: int = option(2, help="frames (nnet3-get-egs --targets-length-tolerance)")
    dtype: str = option("float16", choices=("float16", "float32"), help="stored features")
    chunking: str = option("whole", param="egs.utterance.chunking", choices=("whole", "random"),
                           help="utterance tasks: the whole utterance, or random chunks")
    min_chunk: int = option(100, param="egs.utterance.min_chunk")
    max_chunk: int = option(300, param="egs.utterance.max_chunk")
    sort_window: int = option(512, param="egs.utterance.sort_window",
                              help="utterance tasks: after the shuffle, examples sorted by length within windows "
                                   "of this many, so that a block pads little (0: off)")
    seed: int = 0


def resolve(p: Pipeline, check_paths: bool) -> None:
    """The egs section against the model (context) and the tasks (one i-vector dim for all)."""
    o = p.options(EgsOptions)
    if o.min_chunk > o.max_chunk:
        raise p.error("egs.utterance.min_chunk", "larger than egs.utterance.max_chunk")
    if check_paths or not p.config["model"].get("config"):
        left, right = context(p)
        mc = p.model_config
        if left < mc.left_context or right < mc.right_context:
            raise p.error("egs.left_context/right_context", f"({left}, {right}) are smaller than the "
                          f"model's context ({mc.left_context}, {mc.right_context})")
    _check_ivectors(p, check_paths)
    if check_paths:
        _check_imported(p)


def context(p: Pipeline) -> tuple[int, int]:
    """(left, right) context of the examples: params' values, or the model's where null."""
    o = p.options(EgsOptions)
    mc = p.model_config
    return (mc.left_context if o.left_context is None else o.left_context,
            mc.right_context if o.right_context is None else o.right_context)


STORE_DIR = "_store"  # exp/egs/_store/<name>: the feature stores (egs.store), beside the tasks' egs dirs
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def store_name(data_sets: list[str]) -> str:
    """A feature store's dir name: its data sets, sorted and joined by '+' (the demo's ``de+en+es+fr``),
    or a digest of them when that would be long or not a plain file name."""
    joined = "+".join(sorted(data_sets))
    if len(joined) <= 80 and _PLAIN.fullmatch(joined):
        return joined
    return f"{len(data_sets)}sets-{hashlib.sha1(joined.encode()).hexdigest()[:12]}"


def feature_stores(p: Pipeline) -> dict[str, list[str]]:
    """Store name -> its data sets (sorted): one for each set of data sets that two utterance tasks or
    more read, which would otherwise each store the same features (dtype and CMVN are the step's)."""
    readers: dict[frozenset[str], int] = {}
    for t in p.tasks.values():
        if t.kind == "utterance":
            readers[frozenset(t.data)] = readers.get(frozenset(t.data), 0) + 1
    return {store_name(list(sets)): sorted(sets) for sets, n in readers.items() if n > 1}


def task_store(p: Pipeline, task: str) -> str | None:
    """The name of the feature store a task's egs index into (None: the task stores its own)."""
    t = p.tasks[task]
    name = store_name(t.data)
    return name if t.kind == "utterance" and name in feature_stores(p) else None


def store_args(p: Pipeline, name: str) -> list[str]:
    """The flags of ``babelflow egs store`` for one store."""
    L = p.layout
    return [f"--set={s}:{L.data(s)}:{L.feats(s)}" for s in feature_stores(p)[name]] + [
        f"--dtype={p.options(EgsOptions).dtype}"]


def task_args(p: Pipeline, task: str) -> list[str]:
    """The flags of ``babelflow egs job|finalize`` for one task."""
    t, L = p.tasks[task], p.layout
    args = [f"--task={task}", f"--kind={t.kind}", f"--nj={p.config['data']['nj']}"]
    args += [f"--set={s}:{L.data(s)}:{L.feats(s)}" for s in t.data]
    store = task_store(p, task)
    if store:
        args.append(f"--store={L.egs(STORE_DIR, store)}")
    args += [f"--ivectors={s}:{d}" for s, d in (t.ivectors or {}).items()]
    if t.kind == "utterance":
        args.append(f"--labels={t.labels}")
        if t.classes:
            args.append(f"--classes={','.join(t.classes)}")
    left, right = context(p)
    return args + replace(p.options(EgsOptions), left_context=left, right_context=right).to_args()


def _check_ivectors(p: Pipeline, check_paths: bool) -> None:
    """Kaldi's combine_egs.sh requires one i-vector dim for all tasks (0 = none)."""
    with_iv = [t for t in p.tasks.values() if t.ivectors]
    if not with_iv:
        return
    without = [t.name for t in p.tasks.values() if not t.ivectors]
    if without:
        raise p.error(f"tasks.{without[0]}.ivectors", f"missing, but tasks.{with_iv[0].name} has i-vectors "
                      "(the shared network takes one i-vector input: give every task one)")
    if not check_paths:
        return
    from .ivectors import IvectorSource

    dims = {(t.name, s): IvectorSource.open(d).dim for t in with_iv for s, d in t.ivectors.items()}
    (t0, s0), d0 = next(iter(dims.items()))
    for (t, s), d in dims.items():
        if d != d0:
            raise p.error(f"tasks.{t}.ivectors", f"dim {d} ({s}) differs from {d0} (tasks.{t0}, {s0}); "
                          "all tasks must share the i-vector dim")


def _check_imported(p: Pipeline) -> None:
    """A Kaldi egs dir (``tasks.<t>.egs``) is merged with the other tasks' egs: Kaldi's combine_egs.sh
    wants one context for all; said now, not after hours of feature extraction."""
    from pathlib import Path

    left, right = context(p)
    for t in p.tasks.values():
        if not t.egs:
            continue
        for name, want in (("left_context", left), ("right_context", right)):
            f = Path(t.egs) / "info" / name
            if not f.is_file():
                raise p.error(f"tasks.{t.name}.egs", f"'{f}' not found (not a Kaldi egs dir from get_egs.sh?)")
            got = f.read_text().strip()
            if got != str(want):
                raise p.error(f"tasks.{t.name}.egs", f"{f} is {got}, but the egs made here get {name} {want} "
                              f"(set egs.{name}: {got} so all tasks share Kaldi's context)")
