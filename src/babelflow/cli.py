"""``babelflow <step>``: one subcommand per pipeline step, plus Kaldi-named tools.

Steps read an input dir and write an output dir (Kaldi ``steps/`` style); tools keep
the argument order of the Kaldi binary they stand for. Errors in user input print one
line naming the file/key and exit 1, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import BabelflowError
from .features import OPTIONS, FeatureConfig, canonical_option

log = logging.getLogger("babelflow")


def _feature_options(parser: argparse.ArgumentParser) -> None:
    """Kaldi's ``--opt=value`` flags of compute-{fbank,mfcc}-feats."""
    parser.add_argument("--config", help="Kaldi conf file with --option=value lines")
    names = sorted(set(OPTIONS["fbank"]) | set(OPTIONS["mfcc"]))
    group = parser.add_argument_group("Kaldi feature options (override --config)")
    for name in names:
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"opt_{name}", metavar="V")


def _feature_config(args: argparse.Namespace, feat_type: str) -> FeatureConfig:
    overrides = {canonical_option(k[4:]): v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    return FeatureConfig.build(feat_type, args.config, overrides, origin="command line")


def cmd_demo_corpus(args: argparse.Namespace) -> None:
    from .demo.corpus import SIZES, DemoConfig, generate_corpus

    langs = dict(item.split("=", 1) for item in args.langs.split(","))
    cfg = DemoConfig(langs=langs, voices=args.voices.split(","),
                     utts_per_lang=args.utts_per_lang or SIZES[args.size], seed=args.seed, ali_jobs=args.ali_jobs)
    only = args.lang.split(",") if args.lang else None
    for s in generate_corpus(args.out, cfg, only, jobs=args.jobs):
        log.info("demo %(lang)s: %(num_utts)d utts, %(hours).3f h, %(num_phones)d phones, %(num_pdfs)d pdfs", s)


def cmd_data(args: argparse.Namespace) -> None:
    from .data.split import prepare_data_dir

    summary = prepare_data_dir(args.src, args.out, args.nj)
    log.info("data %s -> %s: %s", args.src, args.out, summary)


def cmd_validate_data(args: argparse.Namespace) -> None:
    from .data.datadir import validate_data_dir

    summary = validate_data_dir(args.dir, check_audio=not args.no_audio)
    print(f"{args.dir}: OK {summary}")


def cmd_features(args: argparse.Namespace) -> None:
    from .make_feats import feats_job, finalize_feats_dir

    cfg = _feature_config(args, args.type)
    if args.job is not None:
        n = feats_job(cfg, f"{args.data}/split{args.nj}/{args.job}", args.out, args.job)
        log.info("features job %d: %d utterances", args.job, n)
    else:
        info = finalize_feats_dir(cfg, args.data, args.out, args.nj, args.cmvn_opts)
        log.info("features %s: %s", args.out, info)


def cmd_compute_feats(args: argparse.Namespace) -> None:
    from .make_feats import compute_feats

    n = compute_feats(_feature_config(args, args.type), args.wav_rspecifier, args.feats_wspecifier,
                      segments=args.segments)
    log.info("computed features for %d utterances", n)


def cmd_compute_cmvn_stats(args: argparse.Namespace) -> None:
    from .features import cmvn_stats
    from .io import read_table
    from .tables import open_matrix_writer, read_matrices

    feats = dict(read_matrices(args.feats_rspecifier))
    with open_matrix_writer(args.stats_wspecifier) as w:
        if args.spk2utt:
            for _, spk, utts in read_table(args.spk2utt.removeprefix("ark:")):
                absent = [u for u in utts if u not in feats]
                if absent:
                    raise BabelflowError(f"{args.spk2utt}: speaker '{spk}': no features for '{absent[0]}'")
                w[spk] = cmvn_stats(feats[u] for u in utts)
        else:
            for key, m in feats.items():
                w[key] = cmvn_stats([m])


def cmd_apply_cmvn(args: argparse.Namespace) -> None:
    from .features import apply_cmvn, parse_cmvn_opts
    from .io import read_table
    from .tables import open_matrix_writer, read_matrices

    opts = " ".join(f"--norm-{k}={str(v).lower()}" for k, v in (("means", args.norm_means), ("vars", args.norm_vars)))
    means, variances = parse_cmvn_opts(opts)
    stats = dict(read_matrices(args.cmvn_rspecifier))
    utt2spk = {k: v[0] for _, k, v in read_table(args.utt2spk.removeprefix("ark:"), 2, 2)} if args.utt2spk else {}
    with open_matrix_writer(args.feats_wspecifier) as w:
        for key, m in read_matrices(args.feats_rspecifier):
            skey = utt2spk.get(key, key)
            if skey not in stats:
                raise BabelflowError(f"{args.cmvn_rspecifier}: no CMVN stats for '{skey}' (utterance '{key}')")
            w[key] = apply_cmvn(m, stats[skey], means, variances)


def cmd_ali_to_pdf(args: argparse.Namespace) -> None:
    from .kaldi.alignments import ali_to_pdf

    n = ali_to_pdf(args.model, args.ali_rspecifier, args.pdf_wspecifier)
    log.info("ali-to-pdf: converted %d alignments", n)


def cmd_check_config(args: argparse.Namespace) -> None:
    from .config import load_pipeline

    p = load_pipeline(args.params, check_paths=not args.no_paths)
    kinds = ", ".join(f"{t.name} ({t.kind}, w={t.weight:g})" for t in p.tasks.values())
    print(f"{args.params}: OK; {'demo corpus; ' if p.demo else ''}{len(p.datasets)} data set(s); tasks: {kinds}")


def cmd_merge(args: argparse.Namespace) -> None:
    from .merge import merge_egs

    def floats(text: str) -> list[float]:
        try:
            return [float(x) for x in text.split(",")]
        except ValueError:
            raise BabelflowError(f"--weights: expected comma-separated numbers, got '{text}'") from None

    info = merge_egs(args.egs_dirs, args.out, weights=floats(args.weights) if args.weights else None,
                     block_size=args.block_size, num_archives=args.num_archives, sampler=args.sampler,
                     temperature=args.temperature, seed=args.seed,
                     task_names=args.task_names.split(",") if args.task_names else None)
    log.info("merge -> %s: %d archives, %s", args.out, info["num_archives"], info["examples_per_task"])


def parse_bool(s: str) -> bool:
    if s.lower() in ("true", "1"):
        return True
    if s.lower() in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got '{s}'")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="babelflow", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("demo-corpus", help="synthesise the espeak-ng demo corpus (data + alignment dirs)")
    s.add_argument("--out", default="corpus", help="writes OUT/<lang>/{wav,data,ali}")
    s.add_argument("--lang", help="only these languages (comma list of names from --langs)")
    s.add_argument("--langs", default="en=en-us,de=de,es=es,fr=fr", help="name=espeak-voice,...")
    s.add_argument("--voices", default="m1,m2,m3,m5,f1,f2,f3,f4", help="espeak voice variants (speakers)")
    s.add_argument("--size", choices=["default", "large"], default="default")
    s.add_argument("--utts-per-lang", type=int, help="overrides --size")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--ali-jobs", type=int, default=2, help="number of ali.N.gz files per language")
    s.add_argument("-j", "--jobs", type=int, default=1, help="languages generated in parallel")
    s.set_defaults(func=cmd_demo_corpus)

    s = sub.add_parser("data", help="validate a Kaldi data dir, copy it and split it by speaker (split_data.sh)")
    s.add_argument("--nj", type=int, required=True)
    s.add_argument("src")
    s.add_argument("out")
    s.set_defaults(func=cmd_data)

    s = sub.add_parser("validate-data", help="validate a Kaldi data dir (utils/validate_data_dir.sh)")
    s.add_argument("--no-audio", action="store_true", help="do not open audio files")
    s.add_argument("dir")
    s.set_defaults(func=cmd_validate_data)

    s = sub.add_parser("features", help="features step: one job (--job) or the merge + CMVN stats of all jobs")
    s.add_argument("--type", choices=sorted(OPTIONS), required=True)
    s.add_argument("--nj", type=int, required=True)
    s.add_argument("--job", type=int, help="run this job (1-based); without it, finalize the dir")
    s.add_argument("--cmvn-opts", default="--norm-means=false --norm-vars=false")
    _feature_options(s)
    s.add_argument("data", help="data dir written by `babelflow data`")
    s.add_argument("out", help="features dir")
    s.set_defaults(func=cmd_features)

    s = sub.add_parser("compute-feats", help="compute-fbank-feats / compute-mfcc-feats")
    s.add_argument("type", choices=sorted(OPTIONS))
    s.add_argument("--segments", help="segments file (extract-segments)")
    _feature_options(s)
    s.add_argument("wav_rspecifier")
    s.add_argument("feats_wspecifier")
    s.set_defaults(func=cmd_compute_feats)

    s = sub.add_parser("compute-cmvn-stats", help="compute-cmvn-stats [--spk2utt=ark:spk2utt]")
    s.add_argument("--spk2utt")
    s.add_argument("feats_rspecifier")
    s.add_argument("stats_wspecifier")
    s.set_defaults(func=cmd_compute_cmvn_stats)

    s = sub.add_parser("apply-cmvn", help="apply-cmvn [--norm-means] [--norm-vars] [--utt2spk]")
    s.add_argument("--norm-means", type=parse_bool, default=True)
    s.add_argument("--norm-vars", type=parse_bool, default=False)
    s.add_argument("--utt2spk")
    s.add_argument("cmvn_rspecifier")
    s.add_argument("feats_rspecifier")
    s.add_argument("feats_wspecifier")
    s.set_defaults(func=cmd_apply_cmvn)

    s = sub.add_parser("ali-to-pdf", help="ali-to-pdf MODEL ALI_RSPECIFIER PDF_WSPECIFIER")
    s.add_argument("model")
    s.add_argument("ali_rspecifier")
    s.add_argument("pdf_wspecifier")
    s.set_defaults(func=cmd_ali_to_pdf)

    from .egs.cli import register as register_egs
    from .nnet.cli import register as register_nnet
    from .nnet.cli import register_models
    from .nnet.cli import register_export

    register_egs(sub)
    register_nnet(sub)
    register_models(sub)
    register_export(sub)

    s = sub.add_parser("merge", help="interleave task egs dirs into one schedule (combine_egs.sh)")
    s.add_argument("--weights", help="one weight per task, comma-separated (Kaldi's lang2weight; default 1.0)")
    s.add_argument("--block-size", type=int, default=256, help="consecutive examples taken from one task")
    s.add_argument("--num-archives", type=int, help="default: the sum of the tasks' num_archives")
    s.add_argument("--sampler", choices=["kaldi", "uniform", "temperature"], default="kaldi",
                   help="kaldi: every example once per epoch; others resample tasks (a deviation from Kaldi)")
    s.add_argument("--temperature", type=float, default=1.0, help="temperature sampler: p ∝ n^(1/T)")
    s.add_argument("--seed", type=int, default=0, help="recorded in info/ (all samplers are deterministic)")
    s.add_argument("--task-names", help="comma-separated (default: the egs dirs' names)")
    s.add_argument("egs_dirs", nargs="+", metavar="EGS_DIR")
    s.add_argument("out", metavar="OUT_DIR")
    s.set_defaults(func=cmd_merge)

    s = sub.add_parser("dvc-sync", help="write dvc.yaml from the Snakemake DAG (--check: fail if it is stale)")
    s.add_argument("project", nargs="?", default=".")
    s.add_argument("--check", action="store_true", help="only compare; exit 1 with a diff when dvc.yaml is stale")
    s.set_defaults(func=cmd_dvc_sync)

    s = sub.add_parser("touch", help="after dvc pull/checkout: mark the restored outputs up to date for Snakemake")
    s.add_argument("project", nargs="?", default=".")
    s.set_defaults(func=cmd_touch)

    s = sub.add_parser("check-config", help="validate params.yaml (schema + references + paths)")
    s.add_argument("params", nargs="?", default="params.yaml")
    s.add_argument("--no-paths", action="store_true", help="skip checks that paths exist")
    s.set_defaults(func=cmd_check_config)
    return p


def cmd_dvc_sync(args: argparse.Namespace) -> None:
    from .dvcsync import dvc_sync

    current = dvc_sync(args.project, check=args.check)
    log.info("dvc.yaml %s", "is current" if current else "written")


def cmd_touch(args: argparse.Namespace) -> None:
    from .smk import touch_outputs

    n = touch_outputs(args.project)
    log.info("%d job(s) marked up to date: `snakemake -n` has nothing to do", n)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s babelflow %(levelname)s %(message)s", stream=sys.stderr)
    try:
        args.func(args)
    except BabelflowError as e:
        print(f"babelflow {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `babelflow ali-to-pdf ... ark,t:- | head`
        sys.stderr.close()
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
