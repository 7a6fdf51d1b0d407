"""The multilingual gain on low-resource targets (``params.yaml`` ``lowres:``).

What ``babel_multilang`` is for, measured rather than assumed: each target (a decoded frame
task with little data; the demo's ``demo.low_resource`` languages) is decoded with four systems
on its test set, all from the same egs, network and number of epochs over the target's data:

- ``gmm``: the target's own GMM (``decode.gmm``);
- ``mono``: the network trained on the target's blocks of the merged egs alone;
- ``multi``: the multilingual network of the main chain (``exp/train``), split to the target;
- ``multi_frozen``: the target's head trained alone on a frozen trunk that a multilingual run
  *without* the targets (``multi_base``) learned: does the shared trunk transfer to a new language?
  ``base_tasks: frame`` (the default) trains ``multi_base`` on the other languages' frame tasks
  (Kaldi's multilingual recipe: languages only); ``all`` adds the utterance tasks, which on the demo
  are 80 % of an epoch's compute (whole utterances, pooled by every head) and are not languages.

With Kaldi's sampler every example is seen once per epoch, so ``train.num_epochs`` passes over
the target's data in each system. Results: ``exp/decode/lowres.{json,tsv,png}``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .options import StepOptions, option

if TYPE_CHECKING:
    from .config import Pipeline
    from .layout import Layout
    from .nnet.options import TrainOptions

#: systems trained by the lowres step (``multi`` is the main chain's, ``gmm`` the decode step's)
TRAINED = ("mono", "multi_base", "multi_frozen")
#: systems decoded by the lowres step, in the table's order with the others
DECODED = ("mono", "multi_frozen")
SYSTEMS = ("gmm", "mono", "multi", "multi_frozen")


@dataclass
class LowresOptions(StepOptions):
    """``params.yaml`` ``lowres:`` (read by the workflow only)."""

    SECTION = "lowres"
    tasks: list[str] = option(default_factory=list, cli=False,
                              help="decoded frame tasks also trained monolingually (mono) and heads-only on a "
                                   "trunk trained without them (multi_frozen); demo: demo.low_resource's languages")
    base_tasks: str = option("frame", choices=("frame", "all"), cli=False,
                             help="what multi_base trains on besides nothing of the targets: the other frame tasks "
                                  "(languages) or every other task")


def lowres_tasks(p: Pipeline) -> list[str]:
    return list(p.options(LowresOptions).tasks)


def system_train_options(p: Pipeline, system: str, init: str | None = None) -> TrainOptions:
    """``train:`` with what makes ``system`` differ from the main run (tasks, init, frozen trunk)."""
    from .nnet.options import TrainOptions

    base = p.options(TrainOptions)
    targets = lowres_tasks(p)
    if system == "mono":
        return dataclasses.replace(base, tasks=targets, init=None, freeze_trunk=False)
    if system == "multi_base":
        others = _base_tasks(p)
        return dataclasses.replace(base, tasks=others, init=None, freeze_trunk=False)
    if system == "multi_frozen":
        return dataclasses.replace(base, tasks=targets, init=init, freeze_trunk=True)
    raise ValueError(f"no lowres system {system!r} (trained: {', '.join(TRAINED)})")


def _base_tasks(p: Pipeline) -> list[str]:
    """What multi_base trains: the main run's tasks but the targets (and, with base_tasks: frame, its frame tasks)."""
    from .nnet.options import TrainOptions

    o = p.options(LowresOptions)
    return [t for t in (p.options(TrainOptions).tasks or list(p.tasks))
            if t not in o.tasks and (o.base_tasks == "all" or p.tasks[t].kind == "frame")]


def decode_dirs(p: Pipeline, layout: Layout) -> list[tuple[str, str, str]]:
    """(task, system, decode dir) of every row of the table, in ``SYSTEMS`` order; ``gmm`` with ``decode.gmm``."""
    from .decode.options import DecodeOptions

    gmm = p.options(DecodeOptions).gmm
    where = {"gmm": lambda t: layout.decode(t, "decode_gmm_test"), "multi": lambda t: layout.decode(t, "decode_test")}
    return [(t, s, where[s](t) if s in where else layout.lowres(s, "decode", t))
            for t in lowres_tasks(p) for s in SYSTEMS if gmm or s != "gmm"]


def resolve(p: Pipeline, check_paths: bool) -> None:
    """Targets are decoded frame tasks; the trunk of multi_frozen needs other tasks to learn from."""
    from .decode.options import decoded_tasks

    o = p.options(LowresOptions)
    decoded = decoded_tasks(p)
    for name in o.tasks:
        if name not in decoded:
            raise p.error("lowres.tasks", f"'{name}' is not decoded (decode.tasks: {', '.join(decoded) or 'none'}): "
                          "the comparison is a WER")
    if o.tasks and not _base_tasks(p):
        raise p.error("lowres.tasks", f"no task is left for multi_base (base_tasks: {o.base_tasks}): multi_frozen's "
                                      "trunk needs other tasks to train on")
