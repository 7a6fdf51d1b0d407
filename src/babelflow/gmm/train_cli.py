"""``babelflow train-gmm mono DATA LANG OUT``, ``babelflow train-gmm tri DATA LANG ALI_DIR OUT`` and
``babelflow align-gmm DATA LANG MODEL_DIR OUT``.

The options classes live in :mod:`.options` (``params.yaml`` ``gmm.mono.*`` / ``gmm.tri.*`` /
``gmm.align.*``); ``--nj`` and ``--workers`` are plain flags, because they say how a stage runs,
not what it computes (the results do not depend on ``--workers``, and the workflow takes ``--nj``
from ``data.nj``). This module imports no numpy nor k2-fsa code; the work is imported when a
command runs.
"""

from __future__ import annotations

import argparse
import logging

from ..errors import BabelflowError
from .options import AlignOptions, MonoOptions, TriOptions

__all__ = ["register", "MonoOptions", "TriOptions", "AlignOptions"]  # the options re-exported for older imports

log = logging.getLogger("babelflow")


def _check_nj(args: argparse.Namespace) -> None:
    if args.nj < 1:
        raise BabelflowError(f"--nj must be at least 1 (got {args.nj})")


def cmd_train_mono(args: argparse.Namespace) -> None:
    from .train import train_mono

    _check_nj(args)
    info = train_mono(args.data, args.lang, args.out, MonoOptions.from_args(args), nj=args.nj, workers=args.workers,
                      progress=not args.quiet)
    log.info("train-gmm mono %s -> %s: %s", args.data, args.out, info)


def cmd_train_tri(args: argparse.Namespace) -> None:
    from .train_tri import train_tri

    _check_nj(args)
    info = train_tri(args.data, args.lang, args.ali_dir, args.out, TriOptions.from_args(args), nj=args.nj,
                     workers=args.workers, progress=not args.quiet)
    log.info("train-gmm tri %s -> %s: %s", args.data, args.out, info)


def cmd_align(args: argparse.Namespace) -> None:
    from .train import align

    _check_nj(args)
    info = align(args.data, args.lang, args.model_dir, args.out, AlignOptions.from_args(args), nj=args.nj,
                 workers=args.workers)
    log.info("align-gmm %s -> %s: %s", args.data, args.out, info)


def _add_common(p: argparse.ArgumentParser, positionals: tuple[tuple[str, str], ...], quiet: str) -> None:
    for name, what in positionals:
        p.add_argument(name, help=what)
    p.add_argument("--nj", type=int, default=4, help="jobs: the data dir is split by speaker (default: 4)")
    p.add_argument("--workers", type=int, default=0,
                   help="worker processes (0: one per job up to the CPU count; -1: none, all in this process); "
                        "the results do not depend on it")
    p.add_argument("--quiet", action="store_true", help=quiet)


def register(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add ``train-gmm`` (returns its sub-subparsers, for more stages) and ``align-gmm``."""
    p = sub.add_parser("train-gmm", help="GMM-HMM training from a flat start (Kaldi steps/train_*.sh)")
    stages = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    data, lang = ("data", "data dir with text"), ("lang", "lang dir (prepare_lang)")
    m = stages.add_parser("mono", help="monophone flat start (train_mono.sh): alignments from scratch")
    MonoOptions.add_arguments(m)
    _add_common(m, (data, lang, ("out", "output model + alignment dir")), "no progress bar")
    m.set_defaults(func=cmd_train_mono)

    t = stages.add_parser("tri", help="triphone tree + GMM on delta features from a GMM alignment dir "
                                      "(train_deltas.sh)")
    TriOptions.add_arguments(t)
    _add_common(t, (data, lang, ("ali_dir", "alignment dir (e.g. mono_ali, from align-gmm)"),
                    ("out", "output model + alignment dir")), "no progress bar")
    t.set_defaults(func=cmd_train_tri)

    a = sub.add_parser("align-gmm", help="align a data dir with a GMM model dir (Kaldi steps/align_si.sh)")
    AlignOptions.add_arguments(a)
    _add_common(a, (data, ("lang", "lang dir"), ("model_dir", "GMM dir (final.mdl, tree)"),
                    ("out", "output alignment dir")), "accepted for symmetry with train-gmm (no progress bar here)")
    a.set_defaults(func=cmd_align)
    return stages
