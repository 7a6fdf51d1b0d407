"""The network's description (``params.yaml`` ``model:`` or a file), without torch.

The Snakefile reads the model's context from it for the egs step; importing torch there
would add seconds to every ``snakemake -n``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import BabelflowError

NONLINEARITIES = ("relu", "sigmoid", "tanh")
UTTERANCE_INPUTS = ("last", "layers")  # the trunk's output | every trunk layer's, on the output frames
UTTERANCE_POOLINGS = ("stats", "attentive")  # mean + std | attentive statistics pooling


@dataclass
class LayerConfig:
    dim: int
    splice: list[int] = field(default_factory=lambda: [0])
    nonlinearity: str = "relu"
    norm: str | None = "renorm"

    @property
    def left(self) -> int:
        return -min(self.splice)

    @property
    def right(self) -> int:
        return max(self.splice)


@dataclass
class ModelConfig:
    """The network, as ``params.yaml``'s ``model:`` (or a file it names) describes it."""

    layers: list[LayerConfig]
    bottleneck: LayerConfig | None = None
    frame_head: list[int] = field(default_factory=list)  # hidden (prefinal) dims per frame task
    utterance_head: list[int] = field(default_factory=list)  # hidden dims after statistics pooling
    nonlinearity: str = "relu"
    norm: str | None = "renorm"
    # what utterance heads pool; these defaults are the heads before these keys existed, so that older
    # model files (which lack them) load as they were trained (params.yaml's: layers, attentive)
    utterance_input: str = "last"
    utterance_pooling: str = "stats"
    utterance_attention_dim: int = 64  # attentive pooling's hidden dim
    utterance_stats_norm: bool = False  # the model's norm on the pooled statistics (ECAPA-TDNN's BN)
    utterance_project: int = 0  # input layers: a per-frame affine + nonlinearity to this dim before pooling (0: none)

    @classmethod
    def from_dict(cls, d: dict[str, Any], origin: str = "model") -> ModelConfig:
        nonlin, norm = d.get("nonlinearity", "relu"), d.get("norm", "renorm")

        def layer(item: dict, where: str) -> LayerConfig:
            unknown = set(item) - {"dim", "splice", "nonlinearity", "norm"}
            if unknown or "dim" not in item:
                raise BabelflowError(f"{origin}: {where}: expected keys dim, splice, nonlinearity, norm "
                                     f"(got {', '.join(sorted(item))})")
            cfg = LayerConfig(int(item["dim"]), [int(o) for o in item.get("splice", [0])],
                              item.get("nonlinearity", nonlin), item.get("norm", norm))
            if cfg.nonlinearity not in NONLINEARITIES:
                raise BabelflowError(f"{origin}: {where}.nonlinearity: '{cfg.nonlinearity}' is not one of "
                                     f"{', '.join(NONLINEARITIES)}")
            if cfg.norm not in (None, "renorm", "batchnorm"):
                raise BabelflowError(f"{origin}: {where}.norm: '{cfg.norm}' (use renorm, batchnorm or null)")
            if cfg.dim < 1 or not cfg.splice or len(set(cfg.splice)) != len(cfg.splice):
                raise BabelflowError(f"{origin}: {where}: dim must be >= 1 and splice distinct offsets")
            return cfg

        if not d.get("layers"):
            raise BabelflowError(f"{origin}: layers: at least one TDNN layer is required")
        layers = [layer(x, f"layers[{i}]") for i, x in enumerate(d["layers"])]
        bn = d.get("bottleneck")
        utt = d.get("utterance_head") or {}
        unknown = set(utt) - {"hidden", "input", "pooling", "attention_dim", "stats_norm", "project"}
        if unknown:
            raise BabelflowError(f"{origin}: utterance_head: unknown keys {', '.join(sorted(unknown))} "
                                 f"(expected hidden, input, pooling, attention_dim, stats_norm, project)")
        cfg = cls(layers, layer(bn, "bottleneck") if bn else None,
                  [int(x) for x in (d.get("frame_head") or {}).get("hidden", [])],
                  [int(x) for x in utt.get("hidden", [])], nonlin, norm,
                  utt.get("input", "last"), utt.get("pooling", "stats"), int(utt.get("attention_dim", 64)),
                  bool(utt.get("stats_norm", False)), int(utt.get("project", 0)))
        for key, value, allowed in (("input", cfg.utterance_input, UTTERANCE_INPUTS),
                                    ("pooling", cfg.utterance_pooling, UTTERANCE_POOLINGS)):
            if value not in allowed:
                raise BabelflowError(f"{origin}: utterance_head.{key}: '{value}' is not one of {', '.join(allowed)}")
        if cfg.utterance_attention_dim < 1:
            raise BabelflowError(f"{origin}: utterance_head.attention_dim must be >= 1")
        if cfg.utterance_project < 0:
            raise BabelflowError(f"{origin}: utterance_head.project must be >= 0 (0: none)")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        lay = lambda c: {"dim": c.dim, "splice": list(c.splice), "nonlinearity": c.nonlinearity, "norm": c.norm}
        return {"layers": [lay(c) for c in self.layers],
                "bottleneck": lay(self.bottleneck) if self.bottleneck else None,
                "frame_head": {"hidden": list(self.frame_head)},
                "utterance_head": {"hidden": list(self.utterance_head), "input": self.utterance_input,
                                   "pooling": self.utterance_pooling, "attention_dim": self.utterance_attention_dim,
                                   "stats_norm": self.utterance_stats_norm, "project": self.utterance_project},
                "nonlinearity": self.nonlinearity, "norm": self.norm}

    def to_args(self) -> list[str]:
        """The flags of ``babelflow model-config``: one ``--layer=DIM:SPLICE:NONLINEARITY:NORM`` per TDNN layer."""
        args = [f"--layer={_layer_arg(c)}" for c in self.layers]
        if self.bottleneck:
            args.append(f"--bottleneck={_layer_arg(self.bottleneck)}")
        return args + [f"--frame-head={','.join(map(str, self.frame_head))}",
                       f"--utterance-head={','.join(map(str, self.utterance_head))}",
                       f"--utterance-input={self.utterance_input}", f"--utterance-pooling={self.utterance_pooling}",
                       f"--utterance-attention-dim={self.utterance_attention_dim}",
                       f"--utterance-stats-norm={str(self.utterance_stats_norm).lower()}",
                       f"--utterance-project={self.utterance_project}",
                       f"--nonlinearity={self.nonlinearity}", f"--norm={self.norm or 'none'}"]

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--layer", action="append", default=[], metavar="DIM:SPLICE[:NONLIN[:NORM]]",
                            help="a TDNN layer, e.g. 512:-1,0,1:relu:batchnorm (repeat in order)")
        parser.add_argument("--bottleneck", metavar="DIM:SPLICE[:NONLIN[:NORM]]", help="the shared bottleneck layer")
        parser.add_argument("--frame-head", default="", metavar="D,D", help="hidden dims of each frame task's head")
        parser.add_argument("--utterance-head", default="", metavar="D,D",
                            help="hidden dims after statistics pooling, per utterance task")
        parser.add_argument("--utterance-input", default="layers", choices=UTTERANCE_INPUTS,
                            help="what utterance heads pool: the trunk's output or every trunk layer's")
        parser.add_argument("--utterance-pooling", default="attentive", choices=UTTERANCE_POOLINGS,
                            help="mean + std, or attentive statistics pooling")
        parser.add_argument("--utterance-attention-dim", type=int, default=64, metavar="D",
                            help="hidden dim of attentive pooling")
        parser.add_argument("--utterance-stats-norm", default="true", choices=["true", "false"],
                            help="the model's norm (--norm) on the pooled statistics")
        parser.add_argument("--utterance-project", type=int, default=0, metavar="D",
                            help="input layers: per-frame affine + nonlinearity to D dims before pooling (0: none)")
        parser.add_argument("--nonlinearity", default="relu", choices=NONLINEARITIES)
        parser.add_argument("--norm", default="renorm", choices=["renorm", "batchnorm", "none"])

    @classmethod
    def from_args(cls, args) -> ModelConfig:
        def layer(text: str, flag: str) -> dict:
            parts = text.split(":")
            try:
                d: dict[str, Any] = {"dim": int(parts[0])}
                if len(parts) > 1:
                    d["splice"] = [int(o) for o in parts[1].split(",")]
            except ValueError:
                raise BabelflowError(f"{flag} {text}: expected DIM:SPLICE[:NONLINEARITY[:NORM]]") from None
            if len(parts) > 2:
                d["nonlinearity"] = parts[2]
            if len(parts) > 3:
                d["norm"] = None if parts[3] == "none" else parts[3]
            return d

        dims = lambda text: [int(x) for x in text.split(",") if x]
        norm = None if args.norm == "none" else args.norm
        return cls.from_dict({"layers": [layer(x, "--layer") for x in args.layer],
                              "bottleneck": layer(args.bottleneck, "--bottleneck") if args.bottleneck else None,
                              "frame_head": {"hidden": dims(args.frame_head)},
                              "utterance_head": {"hidden": dims(args.utterance_head), "input": args.utterance_input,
                                                 "pooling": args.utterance_pooling,
                                                 "attention_dim": args.utterance_attention_dim,
                                                 "stats_norm": args.utterance_stats_norm == "true",
                                                 "project": args.utterance_project},
                              "nonlinearity": args.nonlinearity, "norm": norm}, origin="command line")

    @property
    def left_context(self) -> int:
        return sum(c.left for c in self.trunk_layers)

    @property
    def right_context(self) -> int:
        return sum(c.right for c in self.trunk_layers)

    @property
    def trunk_layers(self) -> list[LayerConfig]:
        return self.layers + ([self.bottleneck] if self.bottleneck else [])


def _layer_arg(c: LayerConfig) -> str:
    return f"{c.dim}:{','.join(map(str, c.splice))}:{c.nonlinearity}:{c.norm or 'none'}"


def load_model_config(path: str) -> ModelConfig:
    """A model config file (YAML with layers, bottleneck, frame_head, utterance_head)."""
    import yaml

    try:
        with open(path) as f:
            return ModelConfig.from_dict(yaml.safe_load(f) or {}, origin=path)
    except FileNotFoundError:
        raise BabelflowError(f"{path}: model config not found") from None
