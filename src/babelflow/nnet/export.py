"""Export a frame task model to Kaldi: the ``final.mdl`` that ``nnet3-am-init`` +
``adjust_priors.sh`` would have left in ``exp/<lang>/``, decodable by Kaldi's
``nnet3-latgen-faster`` / ``nnet3-compute`` with the task's HCLG.

Nodes and components are named as the recipe's xconfig names them, so Kaldi-side tools
and scripts that look for e.g. ``tdnn_bn.renorm`` (bottleneck features) keep working:
``tdnn1.affine``, ``tdnn1.relu``, ``tdnn1.renorm`` | ``tdnn1.batchnorm``, ...,
``tdnn_bn.*``, ``prefinal-affine.*`` (``prefinal-affine1.*``, ``prefinal-affine2.*``, ...
when the head has several hidden layers), ``output.affine``, ``output.log-softmax``
and ``output-node name=output``. BatchNorm layers are written in test mode with the
running statistics, so every Kaldi binary computes what PyTorch's ``eval()`` computes.

:func:`export_kaldi_dir` writes the Kaldi model dir decoding needs: ``final.mdl`` and, from
the task model dir, ``cmvn_opts``, ``conf/``, ``info/`` and ``tree`` (mkgraph.sh's input).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torch import nn

from ..errors import BabelflowError
from ..kaldi.nnet3 import AmNnetSimple, Nnet, write_am_nnet, write_nnet
from ..kaldi.nnet3_builders import (
    affine_component,
    batchnorm_component,
    log_softmax_component,
    normalize_component,
    relu_component,
)
from ..kaldi.nnet3_components import Component
from ..kaldi.nnet3_descriptor import descriptor_append_offsets
from .model import FrameBatchNorm, MultiTaskModel, Renorm
from .modeldir import ModelDir

log = logging.getLogger("babelflow")

# xconfig: hidden affines max-change 0.75, the output affine 1.5; ReLUs self-repair-scale 1e-5
_HIDDEN_MAX_CHANGE, _OUTPUT_MAX_CHANGE, _SELF_REPAIR = 0.75, 1.5, 1e-5
_ACTIVATIONS = {nn.ReLU: ("relu", "RectifiedLinearComponent"), nn.Sigmoid: ("sigmoid", "SigmoidComponent"),
                nn.Tanh: ("tanh", "TanhComponent")}


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


class _Builder:
    """Accumulates config lines and components in Kaldi's (xconfig's) node order."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.components: list[tuple[str, Component]] = []

    def add(self, name: str, comp: Component, descriptor: str) -> str:
        self.lines.append(f"component-node name={name} component={name} input={descriptor}")
        self.components.append((name, comp))
        return name

    def layer(self, name: str, linear: nn.Linear, act: nn.Module, norm: nn.Module, descriptor: str) -> str:
        """xconfig's ``<act>-<norm>-layer``: affine, nonlinearity, normalisation; returns the last node."""
        dim = linear.out_features
        node = self.add(f"{name}.affine", affine_component(_np(linear.weight), _np(linear.bias),
                                                           max_change=_HIDDEN_MAX_CHANGE), descriptor)
        kind = _ACTIVATIONS.get(type(act))
        if kind is None:
            raise BabelflowError(f"export: layer {name}: activation {type(act).__name__} has no Kaldi component here")
        relu = relu_component(dim, self_repair_scale=_SELF_REPAIR)
        node = self.add(f"{name}.{kind[0]}", Component(kind[1], list(relu.fields)), node)
        if isinstance(norm, Renorm):
            node = self.add(f"{name}.renorm", normalize_component(dim), node)
        elif isinstance(norm, FrameBatchNorm):
            bn = norm.bn
            if bn.running_mean is None or bn.running_var is None or bn.affine:
                raise BabelflowError(f"export: layer {name}: BatchNorm without running statistics or with a "
                                     f"learned affine cannot be written as Kaldi's BatchNormComponent")
            # Kaldi needs count > 0 in test mode (else it invents stats); only mean/var enter the output
            node = self.add(f"{name}.batchnorm", batchnorm_component(dim, _np(bn.running_mean), _np(bn.running_var),
                                                                     epsilon=bn.eps, count=1.0, test_mode=True), node)
        elif not isinstance(norm, nn.Identity):
            raise BabelflowError(f"export: layer {name}: normalisation {type(norm).__name__} is not exportable")
        return node


def task_model_to_nnet(model: MultiTaskModel, blob: dict) -> Nnet:
    """The Kaldi nnet3 network of a split frame-task model (trunk + head ``output``)."""
    if blob.get("kind", model.tasks[0].kind) != "frame" or model.tasks[0].kind != "frame":
        raise BabelflowError(f"export: task '{blob.get('task', model.tasks[0].name)}' is an utterance task; Kaldi's "
                             f"AmNnetSimple (final.mdl) holds frame-level acoustic models only (one output per frame, "
                             f"decoded with a TransitionModel), so only frame tasks can be exported")
    if list(model.heads) != ["output"]:
        raise BabelflowError(f"export: expected a split task model with one head 'output', got heads "
                             f"{', '.join(model.heads)} (run `babelflow split` first)")
    b = _Builder()
    ivector = "ivector" if model.ivector_dim > 0 else None
    if ivector:  # the recipe's xconfig declares the i-vector input first
        b.lines.append(f"input-node name=ivector dim={model.ivector_dim}")
    b.lines.append(f"input-node name=input dim={model.input_dim}")
    node = "input"
    cfg = model.config
    names = [f"tdnn{i + 1}" for i in range(len(cfg.layers))] + (["tdnn_bn"] if cfg.bottleneck else [])
    for i, (name, layer) in enumerate(zip(names, model.trunk)):
        desc = descriptor_append_offsets(node, layer.offsets, ivector if i == 0 else None)
        node = b.layer(name, layer.linear, layer.act, layer.norm, desc)
    head = model.heads["output"]
    mods = list(head.hidden)
    hidden = [mods[j:j + 3] for j in range(0, len(mods), 3)]
    for j, (linear, act, norm) in enumerate(hidden):
        name = "prefinal-affine" if len(hidden) == 1 else f"prefinal-affine{j + 1}"
        node = b.layer(name, linear, act, norm, node)
    out = head.output
    node = b.add("output.affine", affine_component(_np(out.weight), _np(out.bias), max_change=_OUTPUT_MAX_CHANGE), node)
    node = b.add("output.log-softmax", log_softmax_component(out.out_features), node)
    b.lines.append(f"output-node name=output input={node} objective=linear")
    nnet = Nnet(b.lines, b.components)
    nnet.nodes()  # validates the config lines
    return nnet


def export_kaldi(model_dir: str | Path, out_mdl: str | Path, binary: bool = True,
                 raw: str | Path | None = None) -> dict:
    """Write ``out_mdl`` (AmNnetSimple: the task's TransitionModel, the net, its context, the
    priors or an empty vector) and optionally the raw nnet ``raw``; both atomically."""
    from ..kaldi.transition_model import read_transition_model

    md = ModelDir(model_dir)
    model, blob = md.load()
    nnet = task_model_to_nnet(model, blob)
    tm = read_transition_model(md.trans_mdl)
    priors = blob.get("priors")
    priors = np.zeros(0, np.float32) if priors is None else np.asarray(priors, np.float32).reshape(-1)
    if priors.size == 0:
        log.warning("%s: the model has no priors: the .mdl gets an empty <Priors> vector (nnet3-compute "
                    "--use-priors and decoding would then use raw log-posteriors)", model_dir)
    am = AmNnetSimple.from_nnet(tm, nnet, priors)  # checks num_pdfs == output dim, priors' dim
    if (am.left_context, am.right_context) != (model.left_context, model.right_context):
        raise BabelflowError(f"export: Kaldi context ({am.left_context}, {am.right_context}) differs from the "
                             f"model's ({model.left_context}, {model.right_context})")  # a bug, never user input
    if raw is not None:
        write_nnet(raw, nnet, binary)
    write_am_nnet(out_mdl, am, binary)
    info = {"mdl": str(out_mdl), "raw": str(raw) if raw is not None else None, "binary": binary,
            "num_pdfs": tm.num_pdfs, "input_dim": model.input_dim, "ivector_dim": model.ivector_dim,
            "left_context": am.left_context, "right_context": am.right_context,
            "num_components": len(nnet.components), "priors": bool(priors.size)}
    log.info("export %s -> %s: %d pdfs, context (%d, %d), %d components%s", model_dir, out_mdl, tm.num_pdfs,
             am.left_context, am.right_context, len(nnet.components), "" if priors.size else ", no priors")
    return info


def export_kaldi_dir(model_dir: str | Path, out_dir: str | Path, binary: bool = True) -> dict:
    """A Kaldi model dir for decoding (what steps/nnet3/decode.sh reads, and utils/mkgraph.sh
    beside it): ``final.mdl``, the model's ``cmvn_opts``, ``conf/``, ``info/`` and ``tree``
    (copied byte for byte); built under a temp name, then renamed."""
    import shutil

    from ..io import atomic_dir

    md = ModelDir(model_dir)
    with atomic_dir(out_dir) as tmp:
        info = export_kaldi(md.path, tmp / "final.mdl", binary=binary)
        for src in md.kaldi_files():
            if src.is_dir():
                shutil.copytree(src, tmp / src.name)
            else:
                shutil.copyfile(src, tmp / src.name)
    if not md.has_tree:
        log.warning("%s: no tree, so %s has none either (utils/mkgraph.sh needs it beside final.mdl)",
                    md.path, out_dir)
    info["mdl"] = str(Path(out_dir) / "final.mdl")
    info["tree"] = str(Path(out_dir) / "tree") if md.has_tree else None
    return info
