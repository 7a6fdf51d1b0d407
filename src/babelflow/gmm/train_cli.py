"""``babelflow train-gmm mono DATA LANG OUT`` and ``babelflow align-gmm DATA LANG MODEL_DIR OUT``, and their
options (``params.yaml`` ``gmm.mono.*`` / ``gmm.align.*``).

This module imports no numpy nor k2-fsa code, so that the CLI and the workflow can list the
options cheaply; the work is imported when a command runs.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from ..options import StepOptions, option

log = logging.getLogger("babelflow")

KALDI_REALIGN_ITERS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 23, 26, 29, 32, 35, 38]


@dataclass
class MonoOptions(StepOptions):
    """``params.yaml`` ``gmm.mono:`` -> ``babelflow train-gmm mono`` (Kaldi's train_mono.sh defaults)."""

    SECTION = "gmm"
    nj: int = option(4, param="gmm.mono.nj", help="jobs (the data dir is split by speaker)")
    workers: int = option(0, param="gmm.mono.workers", help="worker processes (0: one per job up to the CPU count; "
                          "-1: none, all in this process); the results do not depend on it")
    num_iters: int = option(40, param="gmm.mono.num_iters")
    max_iter_inc: int = option(30, param="gmm.mono.max_iter_inc", help="last pass that adds Gaussians")
    totgauss: int = option(1000, param="gmm.mono.totgauss", help="target number of Gaussians")
    realign_iters: list[int] = option(default_factory=lambda: list(KALDI_REALIGN_ITERS),
                                      param="gmm.mono.realign_iters")
    boost_silence: float = option(1.0, param="gmm.mono.boost_silence",
                                  help="factor on the optional-silence GMMs' weights when aligning")
    beam: float = option(6.0, param="gmm.mono.beam", help="first realignment (pass 1)")
    retry_beam: float = option(24.0, param="gmm.mono.retry_beam", help="first realignment (pass 1)")
    later_beam: float = option(10.0, param="gmm.mono.later_beam", help="realignments after pass 1")
    later_retry_beam: float = option(40.0, param="gmm.mono.later_retry_beam", help="realignments after pass 1")
    careful: bool = option(False, param="gmm.mono.careful")
    acoustic_scale: float = option(0.1, param="gmm.mono.acoustic_scale")
    transition_scale: float = option(1.0, param="gmm.mono.transition_scale")
    self_loop_scale: float = option(0.1, param="gmm.mono.self_loop_scale")
    power: float = option(0.25, param="gmm.mono.power", help="#Gauss per pdf grows as occupancy^power")
    perturb: float = option(0.01, param="gmm.mono.perturb", help="mix-up mean perturbation, in standard deviations")
    mixup_min_count: float = option(20.0, param="gmm.mono.mixup_min_count", help="frames per Gaussian at least")
    seed: int = option(0, param="gmm.mono.seed", help="mix-up perturbations")
    mfcc_config: str | None = option(None, param="gmm.mono.mfcc_config",
                                     help="Kaldi mfcc.conf (default: Kaldi's MFCC defaults); dither is always 0")
    cmvn_opts: str = option("", param="gmm.mono.cmvn_opts", help="apply-cmvn options (default: means only)")
    delta_order: int = option(2, param="gmm.mono.delta_order")
    delta_window: int = option(2, param="gmm.mono.delta_window")

    def __post_init__(self) -> None:
        if self.num_iters < 1 or self.nj < 1 or self.totgauss < 1:
            raise ValueError("num_iters, nj and totgauss must be positive")
        if self.beam <= 0 or self.later_beam <= 0:
            raise ValueError("beams must be positive")


@dataclass
class AlignOptions(StepOptions):
    """``params.yaml`` ``gmm.align:`` -> ``babelflow align-gmm`` (Kaldi's align_si.sh defaults)."""

    SECTION = "gmm"
    nj: int = option(4, param="gmm.align.nj", help="jobs (the data dir is split by speaker)")
    workers: int = option(0, param="gmm.align.workers",
                          help="worker processes (0: one per job up to the CPU count; -1: none)")
    beam: float = option(10.0, param="gmm.align.beam")
    retry_beam: float = option(40.0, param="gmm.align.retry_beam")
    careful: bool = option(False, param="gmm.align.careful")
    boost_silence: float = option(1.0, param="gmm.align.boost_silence")
    acoustic_scale: float = option(0.1, param="gmm.align.acoustic_scale")
    transition_scale: float = option(1.0, param="gmm.align.transition_scale")
    self_loop_scale: float = option(0.1, param="gmm.align.self_loop_scale")


def cmd_train_mono(args: argparse.Namespace) -> None:
    from .train import train_mono

    info = train_mono(args.data, args.lang, args.out, MonoOptions.from_args(args), progress=not args.quiet)
    log.info("train-gmm mono %s -> %s: %s", args.data, args.out, info)


def cmd_align(args: argparse.Namespace) -> None:
    from .train import align

    info = align(args.data, args.lang, args.model_dir, args.out, AlignOptions.from_args(args))
    log.info("align-gmm %s -> %s: %s", args.data, args.out, info)


def register(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add ``train-gmm`` (returns its sub-subparsers, for more stages) and ``align-gmm``."""
    p = sub.add_parser("train-gmm", help="GMM-HMM training from a flat start (Kaldi steps/train_*.sh)")
    stages = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    m = stages.add_parser("mono", help="monophone flat start (train_mono.sh): alignments from scratch")
    for name, what in (("data", "data dir with text"), ("lang", "lang dir (prepare_lang)"),
                       ("out", "output model + alignment dir")):
        m.add_argument(name, help=what)
    MonoOptions.add_arguments(m)
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=cmd_train_mono)

    a = sub.add_parser("align-gmm", help="align a data dir with a GMM model dir (Kaldi steps/align_si.sh)")
    for name, what in (("data", "data dir with text"), ("lang", "lang dir"), ("model_dir", "GMM dir (final.mdl, tree)"),
                       ("out", "output alignment dir")):
        a.add_argument(name, help=what)
    AlignOptions.add_arguments(a)
    a.set_defaults(func=cmd_align)
    return stages
