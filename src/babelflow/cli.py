"""``babelflow <step>``: one subcommand per pipeline step, plus Kaldi-named tools.

Steps read an input dir and write an output dir (Kaldi ``steps/`` style); their flags
come from the step's options dataclass, as the rules render them. Tools keep the
argument order of the Kaldi binary they stand for (``babelflow kaldi <tool>``). Errors
in user input print one line naming the file/key and exit 1, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .data.options import DataOptions
from .demo.options import DemoOptions
from .errors import BabelflowError
from .features import FeaturesOptions
from .merge import MergeOptions

log = logging.getLogger("babelflow")


def cmd_demo_corpus(args: argparse.Namespace) -> None:
    from .demo.corpus import DemoConfig, generate_corpus

    o = DemoOptions.from_args(args)
    cfg = DemoConfig(langs=o.langs, voices=o.voices, utts_per_lang=o.num_utts, low_resource=o.low_resource,
                     seed=o.seed, ali_jobs=o.ali_jobs,
                     test_voices=o.test_voices, test_utts_per_lang=o.test_utts_per_lang,
                     test_snr_db=tuple(o.test_snr_db))
    only = args.lang.split(",") if args.lang else None
    for s in generate_corpus(args.out, cfg, only, jobs=args.jobs):
        log.info("demo %(lang)s: %(num_utts)d utts, %(hours).3f h, %(num_phones)d phones, %(num_pdfs)d pdfs", s)


def cmd_data(args: argparse.Namespace) -> None:
    from .data.split import prepare_data_dir

    opts = DataOptions.from_args(args)
    summary = prepare_data_dir(args.src, args.out, opts.nj, opts.root)
    log.info("data %s -> %s: %s", args.src, args.out, summary)


def cmd_validate_data(args: argparse.Namespace) -> None:
    from .data.datadir import validate_data_dir

    summary = validate_data_dir(args.dir, check_audio=not args.no_audio)
    print(f"{args.dir}: OK {summary}")


def cmd_features(args: argparse.Namespace) -> None:
    from .make_feats import feats_job, finalize_feats_dir

    o = FeaturesOptions.from_args(args)
    cfg = o.feature_config(origin="command line")
    if args.existing:
        from .make_feats import import_feats_dir

        info = import_feats_dir(args.existing, args.data, args.out, o.cmvn_opts, cfg)
        log.info("features %s: adopted from %s: %s", args.out, args.existing, info)
    elif args.job is not None:
        n = feats_job(cfg, f"{args.data}/split{args.nj}/{args.job}", args.out, args.job)
        log.info("features job %d: %d utterances", args.job, n)
    else:
        info = finalize_feats_dir(cfg, args.data, args.out, args.nj, o.cmvn_opts)
        log.info("features %s: %s", args.out, info)


def cmd_check_config(args: argparse.Namespace) -> None:
    from .config import load_pipeline

    p = load_pipeline(args.params, check_paths=not args.no_paths)
    if not (p.demo or args.no_paths):
        _try_first_recordings(p.datasets, args.params, p.config["data"].get("root"))
    kinds = ", ".join(f"{t.name} ({t.kind}, w={t.weight:g})" for t in p.tasks.values())
    print(f"{args.params}: OK; {'demo corpus; ' if p.demo else ''}{len(p.datasets)} data set(s); tasks: {kinds}")


def _try_first_recordings(datasets: dict[str, str], origin: str, root: str | None = None) -> None:
    """Each data dir's first recording, read as the jobs will (its pipe run): a broken command shows now."""
    from .data.audio import load_recording, pipe_programs, read_wav_scp, rooted_wav_value

    for name, src in datasets.items():
        wav = Path(src) / "wav.scp"
        if not wav.is_file():
            raise BabelflowError(f"{origin}: data.dirs.{name}: {wav} not found")
        progs = pipe_programs(wav)
        if progs:
            print(f"{name}: wav.scp pipes run (as shell commands, with your rights): {', '.join(progs)}")
        entries = read_wav_scp(wav)
        if entries:
            try:
                key, value, line = entries[0]
                load_recording(wav, key, rooted_wav_value(value, root), line)
            except BabelflowError as e:
                raise BabelflowError(f"{origin}: data.dirs.{name}: {e}") from None


def cmd_merge(args: argparse.Namespace) -> None:
    from .merge import merge_egs, parse_task_arg

    tasks = [parse_task_arg(t) for t in args.task]
    if not tasks:
        raise BabelflowError("merge: no tasks (give --task NAME=EGS_DIR:WEIGHT per task, in output order)")
    info = merge_egs(tasks, args.out, MergeOptions.from_args(args), seed=args.seed)
    log.info("merge -> %s: %d archives, %s", args.out, info["num_archives"], info["examples_per_task"])


def cmd_import_local_conf(args: argparse.Namespace) -> None:
    """Print the params.yaml lines that make a recipe's local.conf the source of its weights."""
    import yaml

    from .kaldi.local_conf import read_local_conf

    conf = read_local_conf(args.local_conf)
    weights = conf.weights()
    block: dict = {"merge": {"local_conf": args.local_conf}}
    if conf.decode_lang_list:
        block["decode"] = {"tasks": conf.decode_lang_list}
    print(f"# {args.local_conf}: lang_list of {len(weights)}; weights (lang2weight): "
          + ", ".join(f"{k}={v:g}" for k, v in weights.items()))
    print(yaml.safe_dump(block, sort_keys=False), end="")


def cmd_dvc_sync(args: argparse.Namespace) -> None:
    from .dvcsync import dvc_sync

    current = dvc_sync(args.project, check=args.check, snakefile=args.snakefile)
    log.info("dvc.yaml %s", "is current" if current else "written")


def cmd_touch(args: argparse.Namespace) -> None:
    from .smk import touch_outputs

    n = touch_outputs(args.project)
    log.info("%d job(s) marked up to date: `snakemake -n` has nothing to do", n)


def build_parser() -> argparse.ArgumentParser:
    from . import kaldi_tools
    from .decode.cli import register as register_graph
    from .decode.decode_cli import register as register_decode
    from .decode.decode_cli import register_tools as register_decode_tools
    from .egs.cli import register as register_egs
    from .gmm.cli import register as register_gmm
    from .gmm.cli import register_compare
    from .gmm.train_cli import register as register_gmm_train
    from .nnet.cli import register as register_nnet
    from .nnet.cli import register_export, register_models

    p = argparse.ArgumentParser(prog="babelflow", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("demo-corpus", help="synthesise the espeak-ng demo corpus (data + alignment dirs)")
    s.add_argument("--out", default="corpus", help="writes OUT/<lang>/{wav,data,ali}")
    s.add_argument("--lang", help="only these languages (comma list of names from --langs)")
    s.add_argument("-j", "--jobs", type=int, default=1, help="languages generated in parallel")
    DemoOptions.add_arguments(s)
    s.set_defaults(func=cmd_demo_corpus)

    s = sub.add_parser("data", help="validate a Kaldi data dir, copy it and split it by speaker (split_data.sh)")
    DataOptions.add_arguments(s)
    s.add_argument("src")
    s.add_argument("out")
    s.set_defaults(func=cmd_data)

    s = sub.add_parser("validate-data", help="validate a Kaldi data dir (utils/validate_data_dir.sh)")
    s.add_argument("--no-audio", action="store_true", help="do not open audio files")
    s.add_argument("dir")
    s.set_defaults(func=cmd_validate_data)

    s = sub.add_parser("features", help="features step: one job (--job) or the merge + CMVN stats of all jobs")
    s.add_argument("--nj", type=int, required=True)
    s.add_argument("--job", type=int, help="run this job (1-based); without it, finalize the dir")
    s.add_argument("--existing", metavar="KALDI_DIR",
                   help="adopt the features Kaldi made (feats.scp + cmvn.scp in KALDI_DIR) instead of computing")
    FeaturesOptions.add_arguments(s)
    s.add_argument("data", help="data dir written by `babelflow data`")
    s.add_argument("out", help="features dir")
    s.set_defaults(func=cmd_features)

    register_gmm(sub)
    register_gmm_train(sub)
    register_compare(sub)
    register_egs(sub)

    s = sub.add_parser("merge", help="interleave task egs dirs into one schedule (combine_egs.sh)")
    s.add_argument("--task", action="append", default=[], metavar="NAME=EGS_DIR[:WEIGHT]",
                   help="a task, in output order (output-0, output-1, ...); WEIGHT is Kaldi's lang2weight (1.0)")
    MergeOptions.add_arguments(s)
    s.add_argument("--seed", type=int, default=0, help="recorded in info/ (all samplers are deterministic)")
    s.add_argument("out", metavar="OUT_DIR")
    s.set_defaults(func=cmd_merge)

    s = sub.add_parser("import-local-conf", help="params.yaml lines for a babel_multilang local.conf "
                       "(lang_list + lang2weight -> merge.local_conf, decode_lang_list -> decode.tasks)")
    s.add_argument("local_conf", metavar="LOCAL_CONF")
    s.set_defaults(func=cmd_import_local_conf)

    register_nnet(sub)
    register_models(sub)
    register_export(sub)

    register_graph(sub)
    register_decode(sub)

    s = sub.add_parser("kaldi", help="Kaldi-named tools (compute-feats, compute-cmvn-stats, apply-cmvn, ali-to-pdf, "
                                     "compute-wer)")
    tools = s.add_subparsers(dest="tool", required=True, metavar="TOOL")
    kaldi_tools.register(tools)
    register_decode_tools(tools)
    kaldi_tools.register(sub, alias=True)

    s = sub.add_parser("dvc-sync", help="write dvc.yaml from the Snakemake DAG (--check: fail if it is stale)")
    s.add_argument("project", nargs="?", default=".")
    s.add_argument("--check", action="store_true", help="only compare; exit 1 with a diff when dvc.yaml is stale")
    s.add_argument("-s", "--snakefile", help="babelflow's Snakefile, for an experiment folder without one: the "
                   "stages run `snakemake -s SNAKEFILE` there")
    s.set_defaults(func=cmd_dvc_sync)

    s = sub.add_parser("touch", help="after dvc pull/checkout: mark the restored outputs up to date for Snakemake")
    s.add_argument("project", nargs="?", default=".")
    s.set_defaults(func=cmd_touch)

    s = sub.add_parser("check-config", help="validate params.yaml (schema + references + paths)")
    s.add_argument("params", nargs="?", default="params.yaml")
    s.add_argument("--no-paths", action="store_true", help="skip checks that paths exist")
    s.set_defaults(func=cmd_check_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s babelflow %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return args.func(args) or 0  # a command may return its exit status (torchrun)
    except BabelflowError as e:
        print(f"babelflow {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `babelflow ali-to-pdf ... ark,t:- | head`
        sys.stderr.close()
        return 141


if __name__ == "__main__":
    sys.exit(main())
