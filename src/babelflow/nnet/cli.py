"""``babelflow train``: the training step (rules/train.smk runs it, through torchrun when nproc > 1)."""

from __future__ import annotations

import argparse
import logging

from ..errors import BabelflowError
from ..options import parse_bool
from .batching import BATCH_FRAMES, DEVICES
from .modelconfig import ModelConfig
from .options import PriorsOptions, TrainOptions

log = logging.getLogger("babelflow")


def cmd_train(args: argparse.Namespace) -> None:
    from .modelconfig import load_model_config
    from .train import train

    train(args.merged_dir, args.out_dir, load_model_config(args.model_config), TrainOptions.from_args(args),
          fresh_on_config_change=args.fresh_on_config_change)


def cmd_model_config(args: argparse.Namespace) -> None:
    """Resolve params.yaml's ``model:`` (layers as flags, or ``--config`` naming a file) into one file."""
    import yaml

    from ..io import write_text
    from .modelconfig import load_model_config

    if args.config and args.layer:
        raise BabelflowError("model-config: give --config FILE or --layer flags, not both")
    cfg = load_model_config(args.config) if args.config else ModelConfig.from_args(args)
    write_text(args.out, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    log.info("model: context (%d, %d), %d layers", cfg.left_context, cfg.right_context, len(cfg.layers))


def cmd_torchrun(args: argparse.Namespace) -> int:
    from .launch import torchrun

    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    return torchrun(args.nproc_per_node, argv)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("torchrun", help="run a babelflow command on N processes per node: torchrun locally, "
                                        "srun + torchrun per node inside a SLURM job")
    p.add_argument("--nproc-per-node", type=int, default=1, metavar="N")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- train ...")
    p.set_defaults(func=cmd_torchrun)

    p = sub.add_parser("train", help="multi-task training on a merged egs dir (train_raw_dnn.py)")
    p.add_argument("--model-config", required=True, help="YAML: layers, bottleneck, frame_head, utterance_head")
    TrainOptions.add_arguments(p)
    p.add_argument("--fresh-on-config-change", action="store_true",
                   help="start over (keeping the old checkpoint as checkpoint.pt.old) when the existing "
                        "checkpoint was written with another config, instead of failing")
    p.add_argument("merged_dir")
    p.add_argument("out_dir")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("model-config", help="write the resolved model config (params.yaml model:) as YAML")
    p.add_argument("--config", help="a model config file (instead of the layer flags)")
    ModelConfig.add_arguments(p)
    p.add_argument("out")
    p.set_defaults(func=cmd_model_config)


def cmd_split(args: argparse.Namespace) -> None:
    from .taskmodel import compute_priors, split_model

    info = split_model(args.model, args.task, args.out_dir, args.feats_dir, args.ali)
    log.info("split %s -> %s (%s, %d outputs, context %d/%d)", info["source_output"], args.out_dir, info["kind"],
             info["num_outputs"], info["left_context"], info["right_context"])
    if info["kind"] == "frame" and not args.no_priors:
        o = PriorsOptions.from_args(args)
        log.info("priors: %s", compute_priors(args.out_dir, None, o.method, o.num_egs, o.floor, o.seed,
                                              args.batch_frames, args.device))


def cmd_priors(args: argparse.Namespace) -> None:
    from .taskmodel import compute_priors

    o = PriorsOptions.from_args(args)
    r = compute_priors(args.model_dir, args.egs_dir, o.method, o.num_egs, o.floor, o.seed, args.batch_frames,
                       args.device)
    log.info("priors: %s", r)


def cmd_compute(args: argparse.Namespace) -> None:
    from .infer import compute

    n = compute(args.model_dir, args.feats_rspecifier, args.out_wspecifier, use_priors=not args.no_priors,
                cmvn=args.cmvn, utt2spk=args.utt2spk, labels_out=args.labels_out, batch_frames=args.batch_frames,
                device=args.device)
    log.info("computed %d utterances", n)


def cmd_bottleneck(args: argparse.Namespace) -> None:
    from .infer import bottleneck

    n = bottleneck(args.model_dir, args.feats_rspecifier, args.out_wspecifier, cmvn=args.cmvn, utt2spk=args.utt2spk,
                   batch_frames=args.batch_frames, device=args.device)
    log.info("wrote bottleneck features of %d utterances", n)


def cmd_eval(args: argparse.Namespace) -> None:
    from .report import collect_metrics, evaluate_task_model

    if args.collect:
        collect_metrics(args.model_dirs, args.collect)
        return
    extra = None
    if args.ref_ali:
        from .phone_eval import phone_accuracy

        if len(args.model_dirs) != 1 or not (args.feats_dir and args.data_dir):
            raise BabelflowError("eval --ref-ali: one MODEL_DIR, with --feats-dir and --data-dir")
        extra = phone_accuracy(args.model_dirs[0], args.feats_dir, args.data_dir, args.ref_ali, args.batch_frames,
                               args.device)
    for d in args.model_dirs:
        log.info("%s: %s", d, evaluate_task_model(d, extra=extra, batch_frames=args.batch_frames, device=args.device))


def _batch_args(p: argparse.ArgumentParser) -> None:
    """Where and how many frames per forward pass (compute, bottleneck, split/priors, eval): CLI-only,
    since neither changes a result beyond float summation order."""
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto (default): the GPU when torch sees one, else the CPU")
    p.add_argument("--batch-frames", type=int, default=BATCH_FRAMES, metavar="N",
                   help=f"input frames (context and padding included) per forward pass, utterances or egs sorted "
                        f"by length (default {BATCH_FRAMES}); 0: one utterance per pass")


def _inference_args(p: argparse.ArgumentParser) -> None:
    """What compute and bottleneck share: CMVN options, MODEL_DIR FEATS_RSPECIFIER OUT_WSPECIFIER."""
    _batch_args(p)
    p.add_argument("--cmvn", help="CMVN stats rspecifier, when the model's cmvn_opts normalise")
    p.add_argument("--utt2spk", help="utt2spk file for --cmvn (per-speaker stats)")
    p.add_argument("model_dir")
    p.add_argument("feats_rspecifier")
    p.add_argument("out_wspecifier")


def register_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("split", help="one standalone model per task: trunk + head renamed output (nnet3-am-init)")
    p.add_argument("--task", required=True)
    p.add_argument("--ali", help="frame tasks: the alignment dir whose final.mdl TransitionModel to attach")
    p.add_argument("--feats-dir", help="the features dir whose conf/ to carry along")
    p.add_argument("--no-priors", action="store_true", help="frame tasks: do not compute priors now (run priors)")
    PriorsOptions.add_arguments(p.add_argument_group("priors of frame tasks (as `babelflow priors`)"))
    _batch_args(p)
    p.add_argument("model", help="the trained multi-task model (final.pt)")
    p.add_argument("out_dir")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("priors", help="priors from average posteriors on the task's egs (adjust_priors.sh)")
    PriorsOptions.add_arguments(p)
    _batch_args(p)
    p.add_argument("--egs-dir", help="default: the task's egs dir recorded in the model")
    p.add_argument("model_dir")
    p.set_defaults(func=cmd_priors)

    p = sub.add_parser("compute", help="nnet3-compute: log-likelihoods (or class posteriors) as a Kaldi ark")
    p.add_argument("--no-priors", action="store_true", help="write log-posteriors")
    p.add_argument("--labels-out", help="utterance tasks: write the argmax label per utterance (text)")
    _inference_args(p)
    p.set_defaults(func=cmd_compute)

    p = sub.add_parser("bottleneck", help="the shared bottleneck layer's outputs as Kaldi features")
    _inference_args(p)
    p.set_defaults(func=cmd_bottleneck)

    p = sub.add_parser("eval", help="evaluation report of task models on their valid egs")
    p.add_argument("--collect", metavar="METRICS_JSON", help="instead: gather the models' eval/metrics.json into one")
    p.add_argument("--ref-ali", metavar="ALI_DIR", help="frame tasks: also the phone accuracy against these (true) "
                                                        "alignments on the valid utterances (phones by symbol)")
    p.add_argument("--feats-dir", help="with --ref-ali: the task's features dir")
    p.add_argument("--data-dir", help="with --ref-ali: the task's data dir (utt2spk for CMVN)")
    _batch_args(p)
    p.add_argument("model_dirs", nargs="+")
    p.set_defaults(func=cmd_eval)


def cmd_export_kaldi(args: argparse.Namespace) -> None:
    from .export import export_kaldi, export_kaldi_dir  # imports torch: only when the command runs

    if args.dir:
        if args.raw:
            raise BabelflowError("export-kaldi: --raw goes with a .mdl output, not with --dir")
        export_kaldi_dir(args.model_dir, args.out, binary=args.binary)
    else:
        export_kaldi(args.model_dir, args.out, binary=args.binary, raw=args.raw)


def register_export(sub: argparse._SubParsersAction) -> None:
    """``babelflow export-kaldi [--dir] MODEL_DIR OUT.mdl|OUT_DIR [--binary=true|false] [--raw OUT.raw]``."""
    p = sub.add_parser("export-kaldi", help="a frame task model as a Kaldi nnet3 AmNnetSimple .mdl "
                                            "(nnet3-am-init + priors), optionally also the raw nnet")
    p.add_argument("--binary", type=parse_bool, default=True, metavar="BOOL",
                   help="binary (default) or text Kaldi files")
    p.add_argument("--raw", default=None, metavar="OUT.raw",
                   help="also write the raw nnet (as nnet3-am-copy --raw=true)")
    p.add_argument("--dir", action="store_true",
                   help="OUT is a Kaldi model dir: final.mdl + the model's cmvn_opts, conf/ and info/")
    p.add_argument("model_dir", help="a task model dir (babelflow split [+ priors]) with trans.mdl")
    p.add_argument("out", metavar="OUT.mdl|OUT_DIR")
    p.set_defaults(func=cmd_export_kaldi)
