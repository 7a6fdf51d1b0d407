"""A Kaldi-style TDNN trunk with per-task heads, built from a plain config dict.

Layers mirror the xconfig of the multilingual recipe: each ``relu-renorm-layer`` is
Append(Offset(x, o) for o in splice) -> affine -> ReLU -> NormalizeComponent (or
BatchNorm). The model works on chunks with their context, like nnet3: a (B, T, D) input
gives (B, T - left - right, ...) outputs, so context frames come from real neighbours
(or from the repeated edge frames the egs reader pads with), never from zero padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import BabelflowError
from .modelconfig import LayerConfig, ModelConfig, load_model_config  # noqa: F401  (re-exported)

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class Renorm(nn.Module):
    """Kaldi's NormalizeComponent (target-rms 1): y = x / sqrt(max(2^-66, |x|^2 / D))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ms = x.pow(2).mean(dim=-1, keepdim=True)
        return x * torch.rsqrt(ms.clamp_min(2.0 ** -66))


class FrameBatchNorm(nn.Module):
    """BatchNorm over all frames (Kaldi's BatchNormComponent: no learned scale/offset).

    ``mask`` (B, T): in training, only these frames make the batch statistics: a block of whole
    utterances is padded to its longest with the last frame repeated, and those frames would
    shift the statistics away from the test ones; the others are zeros (nothing valid reads them).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if mask is None or not self.training:
            return self.bn(flat).reshape(shape)
        keep = mask.reshape(-1)
        out = torch.zeros_like(flat)
        out[keep] = self.bn(flat[keep])
        return out.reshape(shape)


class TdnnLayer(nn.Module):
    """Append(Offset(x, o) ...) -> affine -> nonlinearity -> norm; optional i-vector appended."""

    def __init__(self, in_dim: int, cfg: LayerConfig, extra_dim: int = 0):
        super().__init__()
        self.offsets = sorted(cfg.splice)
        self.linear = nn.Linear(in_dim * len(self.offsets) + extra_dim, cfg.dim)
        self.act = ACTIVATIONS[cfg.nonlinearity]()
        self.norm = (Renorm() if cfg.norm == "renorm" else FrameBatchNorm(cfg.dim) if cfg.norm == "batchnorm"
                     else nn.Identity())

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``lengths`` (B,): each row's valid output frames (the rest is padding)."""
        lo, hi = self.offsets[0], self.offsets[-1]
        t_out = x.shape[1] - (hi - lo)
        if t_out <= 0:
            raise ValueError(f"input of {x.shape[1]} frames is shorter than the layer's context")
        parts = [x[:, o - lo:o - lo + t_out] for o in self.offsets]
        if extra is not None:  # ReplaceIndex(ivector, t, 0): the same row at every frame
            parts.append(extra[:, None, :].expand(-1, t_out, -1))
        y = self.act(self.linear(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]))
        if lengths is not None and isinstance(self.norm, FrameBatchNorm):
            return self.norm(y, torch.arange(t_out, device=y.device)[None, :] < lengths[:, None])
        return self.norm(y)


def _norm(norm: str | None, dim: int) -> nn.Module:
    return Renorm() if norm == "renorm" else FrameBatchNorm(dim) if norm == "batchnorm" else nn.Identity()


def _mlp(in_dim: int, hidden: list[int], nonlin: str, norm: str | None) -> tuple[nn.Sequential, int]:
    mods: list[nn.Module] = []
    for h in hidden:
        mods += [nn.Linear(in_dim, h), ACTIVATIONS[nonlin](), _norm(norm, h)]
        in_dim = h
    return nn.Sequential(*mods), in_dim


class FrameHead(nn.Module):
    """Prefinal layer(s) + output affine (zero-initialised, as Kaldi's output-layer) + log-softmax."""

    def __init__(self, in_dim: int, hidden: list[int], num_outputs: int, nonlin: str, norm: str | None):
        super().__init__()
        self.hidden, dim = _mlp(in_dim, hidden, nonlin, norm)
        self.output = nn.Linear(dim, num_outputs)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # float32 as CUDA autocast makes it (CPU autocast would keep bf16); a no-op in float32
        return torch.log_softmax(self.output(self.hidden(h)).float(), dim=-1)


def _masked_stats(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted mean and standard deviation over time; ``w`` (B, T, 1 or D) sums to 1 over T."""
    mean = (h * w).sum(dim=1)
    var = ((h - mean[:, None]) ** 2 * w).sum(dim=1)
    return torch.cat([mean, torch.sqrt(var.clamp_min(0.0) + 1e-5)], dim=-1)


class AttentivePooling(nn.Module):
    """Attentive statistics pooling (Okabe et al. 2018), a weight per frame and channel as in
    ECAPA-TDNN: speaker and language cues sit in few frames (voiced, stressed), which a plain
    mean dilutes. Padded frames get no weight."""

    def __init__(self, in_dim: int, attention_dim: int):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(in_dim, attention_dim), nn.Tanh(), nn.Linear(attention_dim, in_dim))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = h.float()  # weights and sums over hundreds of frames in float32 under bf16 autocast too
        scores = self.attention(h).float().masked_fill(~mask[..., None], torch.finfo(torch.float32).min)
        return _masked_stats(h, torch.softmax(scores, dim=1))


class UtteranceHead(nn.Module):
    """Statistics pooling over the valid frames (x-vector style), then an MLP.

    ``layers``: the input is every trunk layer's output (cropped to the output frames),
    concatenated, as ECAPA-TDNN's multi-layer aggregation: the phone-trained bottleneck keeps
    little speaker information, the lower layers keep much (the first affine weighs them).
    ``pooling``: ``stats`` (mean + std) or ``attentive``. ``stats_norm``: the model's norm on the
    pooled statistics (ECAPA-TDNN's batch norm after pooling).
    """

    def __init__(self, in_dim: int, hidden: list[int], num_outputs: int, nonlin: str, norm: str | None,
                 layers: bool = False, pooling: str = "stats", attention_dim: int = 64, stats_norm: bool = False,
                 project: int = 0):
        super().__init__()
        self.uses_layers = layers
        # ECAPA-TDNN's aggregation of the concatenated layers: pooling works per channel over every
        # frame, so on the demo pooling 1248 channels cost twice the trunk; 256 cost a third of that
        self.project = (nn.Sequential(nn.Linear(in_dim, project), ACTIVATIONS[nonlin]())
                        if project and layers else None)
        in_dim = project if self.project is not None else in_dim
        self.pooling = AttentivePooling(in_dim, attention_dim) if pooling == "attentive" else None
        # statistics vary little between utterances next to their size: normalised, the first affine
        # sees the differences (what the few blocks of an utterance task must learn from)
        self.stats_norm = _norm(norm, 2 * in_dim) if stats_norm else None
        self.hidden, dim = _mlp(2 * in_dim, hidden, nonlin, norm)
        self.output = nn.Linear(dim, num_outputs)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, h: torch.Tensor | list[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.pool(h, mask))

    def pool(self, h: torch.Tensor | list[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 2 x channels) statistics of each row's valid frames: what depends on one utterance alone."""
        if isinstance(h, list):
            h = torch.cat(h, dim=-1) if self.uses_layers else h[-1]
        if self.project is not None:
            h = self.project(h)
        mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if mask is None else mask.bool()
        if self.pooling is not None:
            return self.pooling(h, mask)
        # as before these options existed, to the last bit (float32: frame counts and sums)
        h = h.float()
        m = mask.to(h.dtype)[..., None]
        n = m.sum(dim=1).clamp_min(1.0)
        mean = (h * m).sum(dim=1) / n
        var = ((h - mean[:, None]) ** 2 * m).sum(dim=1) / n
        return torch.cat([mean, torch.sqrt(var + 1e-5)], dim=-1)

    def classify(self, stats: torch.Tensor) -> torch.Tensor:
        """Log-posteriors from pooled statistics (batch norms in training mode normalise over the rows)."""
        if self.stats_norm is not None:
            stats = self.stats_norm(stats)
        return torch.log_softmax(self.output(self.hidden(stats)).float(), dim=-1)


@dataclass
class TaskSpec:
    name: str
    kind: str  # frame | utterance
    num_outputs: int


class MultiTaskModel(nn.Module):
    """Shared trunk (+ bottleneck) and heads ``output-0`` ... in task order."""

    def __init__(self, config: ModelConfig, input_dim: int, tasks: list[TaskSpec], ivector_dim: int = 0,
                 head_names: list[str] | None = None):
        super().__init__()
        self.config, self.input_dim, self.ivector_dim = config, input_dim, ivector_dim
        self.tasks = list(tasks)
        layers, dim = [], input_dim
        for i, cfg in enumerate(config.trunk_layers):
            layers.append(TdnnLayer(dim, cfg, ivector_dim if i == 0 else 0))
            dim = cfg.dim
        self.trunk = nn.ModuleList(layers)
        # context of the layers after each one: a row with n valid output frames has n + this at layer l
        ctx = [c.left + c.right for c in config.trunk_layers]
        self._context_after = [sum(ctx[i + 1:]) for i in range(len(ctx))]
        self.embedding_dim = dim
        self.head_names = head_names or [f"output-{i}" for i in range(len(tasks))]
        heads: dict[str, nn.Module] = {}
        layers_dim = sum(c.dim for c in config.trunk_layers)
        for name, t in zip(self.head_names, tasks):
            if t.kind == "frame":
                heads[name] = FrameHead(dim, config.frame_head, t.num_outputs, config.nonlinearity, config.norm)
            else:
                use_layers = config.utterance_input == "layers"
                heads[name] = UtteranceHead(layers_dim if use_layers else dim, config.utterance_head, t.num_outputs,
                                            config.nonlinearity, config.norm, use_layers, config.utterance_pooling,
                                            config.utterance_attention_dim, config.utterance_stats_norm,
                                            config.utterance_project)
        self.heads = nn.ModuleDict(heads)

    @property
    def left_context(self) -> int:
        return self.config.left_context

    @property
    def right_context(self) -> int:
        return self.config.right_context

    def embed(self, x: torch.Tensor, ivector: torch.Tensor | None = None,
              mask: torch.Tensor | None = None) -> torch.Tensor:
        """Trunk output (the bottleneck when there is one): (B, T - context, embedding_dim)."""
        return self.embed_layers(x, ivector, mask, last_only=True)[-1]

    def embed_layers(self, x: torch.Tensor, ivector: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                     last_only: bool = False) -> list[torch.Tensor]:
        """Every trunk layer's output, cropped to the frames of the last one: (B, T - context, dim_l) each.
        Layer l's frame j is input frame j + (left context of layers <= l): its own context, not the
        trunk's, so each is cut where the trunk's output frames are. ``mask`` (B, T - context): the
        valid output frames, a prefix of each row (batch norm leaves the rest out of its statistics)."""
        lengths = None if mask is None else mask.sum(dim=1)
        outs, left = [], []
        for i, layer in enumerate(self.trunk):
            x = layer(x, ivector if i == 0 and self.ivector_dim else None,
                      None if lengths is None else lengths + self._context_after[i])
            left.append((left[-1] if left else 0) - layer.offsets[0])
            outs.append(x)
        if last_only:
            return outs[-1:]
        t_out = outs[-1].shape[1]
        return [h[:, left[-1] - lc:left[-1] - lc + t_out] for h, lc in zip(outs, left)]

    def forward(self, x: torch.Tensor, task: int = 0, ivector: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        head = self.heads[self.head_names[task]]
        if getattr(head, "uses_layers", False):
            return head(self.embed_layers(x, ivector, mask), mask)
        return head(self.embed(x, ivector, mask), mask)

    def forward_tasks(self, x: torch.Tensor, tasks: list[int], ivector: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Utterance tasks' log-posteriors of the same inputs over one trunk pass (:mod:`.twins`)."""
        layers = self.embed_layers(x, ivector, mask)
        return [self.heads[self.head_names[t]](layers, mask) for t in tasks]

    def split(self, task: int) -> MultiTaskModel:
        """The trunk plus one head renamed ``output`` (Kaldi: rename-node output-<i> -> output)."""
        single = MultiTaskModel(self.config, self.input_dim, [self.tasks[task]], self.ivector_dim, ["output"])
        state = {k: v for k, v in self.state_dict().items() if k.startswith("trunk.")}
        prefix = f"heads.{self.head_names[task]}."
        state.update({"heads.output." + k[len(prefix):]: v
                      for k, v in self.state_dict().items() if k.startswith(prefix)})
        single.load_state_dict(state)
        return single

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def check_context(model_cfg: ModelConfig, egs_left: int, egs_right: int, where: str) -> None:
    """Egs must carry at least the model's context (Kaldi's verify_egs_dir)."""
    if egs_left < model_cfg.left_context or egs_right < model_cfg.right_context:
        raise BabelflowError(f"{where}: egs context ({egs_left}, {egs_right}) is smaller than the model's "
                             f"({model_cfg.left_context}, {model_cfg.right_context}); remake the egs with "
                             f"egs.left_context/right_context >= the model's")


def describe(model: MultiTaskModel) -> str:
    c = model.config
    return (f"TDNN {len(c.layers)} layers {[l.dim for l in c.layers]}"
            f"{f' + bottleneck {c.bottleneck.dim}' if c.bottleneck else ''}, context ({c.left_context}, "
            f"{c.right_context}), {len(model.tasks)} heads, {model.num_parameters() / 1e6:.2f}M parameters")




