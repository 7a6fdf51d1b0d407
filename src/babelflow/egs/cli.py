"""``babelflow egs ...`` subcommands: ali, job, finalize (the step), show, import/export."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import BabelflowError
from .make import TaskSource
from .options import EgsOptions

log = logging.getLogger("babelflow")


def _sets(args: argparse.Namespace) -> list[tuple[str, Path, Path]]:
    sets = []
    for item in args.set:
        try:
            name, data, feats = item.split(":")
        except ValueError:
            raise BabelflowError(f"--set expects NAME:DATA_DIR:FEATS_DIR, got '{item}'") from None
        sets.append((name, Path(data), Path(feats)))
    return sets


def _source(args: argparse.Namespace) -> TaskSource:
    sets = _sets(args)
    classes = args.classes.split(",") if getattr(args, "classes", None) else None
    bad = [item for item in args.ivectors or [] if ":" not in item]
    if bad:
        raise BabelflowError(f"--ivectors expects NAME:IVECTOR_DIR, got '{bad[0]}'")
    ivectors = dict(item.split(":", 1) for item in args.ivectors) if args.ivectors else None
    if ivectors and set(ivectors) != {name for name, _, _ in sets}:
        raise BabelflowError("--ivectors must name every data set of the task (NAME:IVECTOR_DIR)")
    return TaskSource(args.task, args.kind, sets, args.nj, args.labels, classes,
                      {k: Path(v) for k, v in ivectors.items()} if ivectors else None,
                      Path(args.store) if args.store else None)


def _options(args: argparse.Namespace) -> EgsOptions:
    opts = EgsOptions.from_args(args)
    if opts.left_context is None or opts.right_context is None:
        raise BabelflowError("--left-context and --right-context are required (the model's context)")
    return opts


def cmd_ali(args: argparse.Namespace) -> None:
    from .alignments import prepare_pdf_alignments

    n = prepare_pdf_alignments(args.source, args.out, args.num_pdfs)
    log.info("egs ali %s -> %s: %d pdfs", args.source, args.out, n)


def cmd_job(args: argparse.Namespace) -> None:
    from .make import egs_job

    r = egs_job(_source(args), args.archive, args.out, _options(args))
    log.info("egs %s archive %d: %s", args.task, args.archive, r)


def cmd_store(args: argparse.Namespace) -> None:
    from .store import write_store

    info = write_store(_sets(args), args.out, args.dtype)
    log.info("egs store %s: %s", args.out, info)


def cmd_finalize(args: argparse.Namespace) -> None:
    from .make import finalize_egs_dir

    info = finalize_egs_dir(_source(args), args.out, _options(args))
    log.info("egs %s: %s", args.task, info)


def cmd_show(args: argparse.Namespace) -> None:
    from .kaldi_bridge import show

    show(args.egs, limit=args.n, key=args.key)


def cmd_export(args: argparse.Namespace) -> None:
    from .kaldi_bridge import export_kaldi

    n = export_kaldi(args.egs_dir, args.wspecifier, compress=args.compress)
    log.info("exported %d egs to %s", n, args.wspecifier)


def cmd_import(args: argparse.Namespace) -> None:
    from .kaldi_bridge import import_kaldi

    num_pdfs = None
    if args.ali_dir:
        from ..kaldi.alignments import AlignmentDir

        num_pdfs = AlignmentDir(args.ali_dir).num_pdfs
    info = import_kaldi(args.rspecifier, args.egs_dir, dtype=args.dtype, task=args.task, num_pdfs=num_pdfs)
    log.info("imported %s egs from %s: %s", info["num_egs"], args.rspecifier, info)


def _add_step_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True)
    p.add_argument("--kind", choices=["frame", "utterance"], required=True)
    p.add_argument("--set", action="append", required=True, metavar="NAME:DATA:FEATS",
                   help="a data set of the task: name, data dir (babelflow data), features dir; repeatable")
    p.add_argument("--nj", type=int, required=True, help="features jobs per data set")
    p.add_argument("--labels", help="utterance tasks: the utt2<label> file name")
    p.add_argument("--classes", help="utterance tasks: fixed label map, comma-separated")
    p.add_argument("--ivectors", action="append", metavar="NAME:DIR",
                   help="online i-vector dir (ivector_online.scp + ivector_period) of a data set; repeatable")
    p.add_argument("--store", help="utterance tasks: the feature store (`egs store`) to index into, "
                   "instead of storing the features again")
    EgsOptions.add_arguments(p)
    p.add_argument("out", help="the task's egs dir")


def register(sub: argparse._SubParsersAction) -> None:
    egs = sub.add_parser("egs", help="per-task examples (get_egs.sh), and Kaldi egs tools")
    esub = egs.add_subparsers(dest="egs_command", required=True, metavar="EGS_COMMAND")

    p = esub.add_parser("ali", help="alignment dir or pdf rspecifier -> OUT/ali_pdf.{ark,scp} + num_pdfs")
    p.add_argument("--num-pdfs", type=int, help="for a pdf rspecifier source (default: max pdf + 1)")
    p.add_argument("source")
    p.add_argument("out")
    p.set_defaults(func=cmd_ali)

    p = esub.add_parser("job", help="write archive J of a task's egs (one Snakemake job)")
    p.add_argument("--archive", type=int, required=True)
    _add_step_args(p)
    p.set_defaults(func=cmd_job)

    p = esub.add_parser("store", help="the features of data sets once, for the utterance tasks that share them")
    p.add_argument("--set", action="append", required=True, metavar="NAME:DATA:FEATS",
                   help="a data set: name, data dir (babelflow data), features dir; repeatable")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored features")
    p.add_argument("out", help="the store dir")
    p.set_defaults(func=cmd_store)

    p = esub.add_parser("show", help="print egs as `nnet3-copy-egs <in> ark,t:-` does")
    p.add_argument("-n", type=int, help="print at most N examples")
    p.add_argument("--key", help="print only this example")
    p.add_argument("egs", help="a babelflow egs dir, or a Kaldi rspecifier (ark:egs.1.ark, scp:egs.scp)")
    p.set_defaults(func=cmd_show)

    p = esub.add_parser("export-kaldi", help="write the training egs as Kaldi NnetExample archives")
    p.add_argument("--compress", nargs="?", const="auto", choices=["auto", "CM", "CM2", "CM3"],
                   help="compress inputs as nnet3-get-egs --compress=true (CM for >8 rows, else CM2)")
    p.add_argument("egs_dir")
    p.add_argument("wspecifier", help="e.g. ark,scp:egs.1.ark,egs.scp")
    p.set_defaults(func=cmd_export)

    p = esub.add_parser("import-kaldi", help="read Kaldi egs (rspecifier or Kaldi egs dir) into a babelflow egs dir")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--task", default="kaldi", help="task name recorded in info/task")
    p.add_argument("--ali-dir", help="the alignment dir the egs were made from: its model's pdf count must match")
    p.add_argument("rspecifier", help="ark:egs.1.ark, scp:egs.scp, or a Kaldi egs dir")
    p.add_argument("egs_dir")
    p.set_defaults(func=cmd_import)

    p = esub.add_parser("finalize", help="merge job reports, write info/ and check the archives")
    _add_step_args(p)
    p.set_defaults(func=cmd_finalize)
