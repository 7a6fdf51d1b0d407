"""``babelflow train``: the training step (rules/train.smk runs it, through torchrun when nproc > 1)."""

from __future__ import annotations

import argparse
import dataclasses
import logging

log = logging.getLogger("babelflow")


def _bool(s: str) -> bool:
    if s.lower() in ("true", "1"):
        return True
    if s.lower() in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got '{s}'")


def cmd_train(args: argparse.Namespace) -> None:
    from .model import load_model_config
    from .options import TrainOptions
    from .train import train

    opts = TrainOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions)})
    train(args.merged_dir, args.out_dir, load_model_config(args.model_config), opts,
          fresh_on_config_change=args.fresh_on_config_change)


def cmd_model_config(args: argparse.Namespace) -> None:
    """Resolve params.yaml's ``model:`` (inline, or ``config:`` naming a file) into one file."""
    import json

    import yaml

    from ..io import write_text
    from .model import ModelConfig, load_model_config

    d = json.loads(args.json)
    cfg = load_model_config(d["config"]) if d.get("config") else ModelConfig.from_dict(
        {k: v for k, v in d.items() if k != "config"}, origin="params: model")
    write_text(args.out, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    log.info("model: context (%d, %d), %d layers", cfg.left_context, cfg.right_context, len(cfg.layers))


def register(sub: argparse._SubParsersAction) -> None:
    from .options import TrainOptions

    p = sub.add_parser("train", help="multi-task training on a merged egs dir (train_raw_dnn.py)")
    p.add_argument("--model-config", required=True, help="YAML: layers, bottleneck, frame_head, utterance_head")
    defaults = TrainOptions()
    for f in dataclasses.fields(TrainOptions):
        value = getattr(defaults, f.name)
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(value, bool):
            p.add_argument(flag, type=_bool, default=value, metavar="BOOL")
        elif isinstance(value, list):
            p.add_argument(flag, type=lambda s: [t for t in s.split(",") if t], default=value, metavar="A,B")
        elif f.name == "init":
            p.add_argument(flag, default=None)
        else:
            p.add_argument(flag, type=type(value), default=value)
    p.add_argument("--fresh-on-config-change", action="store_true",
                   help="start over (keeping the old checkpoint as checkpoint.pt.old) when the existing "
                        "checkpoint was written with another config, instead of failing")
    p.add_argument("merged_dir")
    p.add_argument("out_dir")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("model-config", help="write the resolved model config (params.yaml model:) as YAML")
    p.add_argument("--json", required=True, help="the model: section as JSON")
    p.add_argument("out")
    p.set_defaults(func=cmd_model_config)
