"""The model files babelflow writes with ``torch.save``, and how they are read back.

Every file holds tensors and plain data only and is loaded with ``weights_only=True``: a
foreign, corrupt or tampered file (pickled code) is a :class:`BabelflowError`, and nothing
in it runs. Three layouts:

``final.pt`` (``format: babelflow-multitask-model``, version 1): the trained multi-task model,
    written by :func:`save_model` at the end of ``babelflow train``::

        model_config, tasks [TaskSpec dicts], input_dim, ivector_dim, left_context, right_context,
        egs {feat_type, cmvn_opts, feat_dim} (of the first task's egs), task_egs [egs dir per task],
        state_dict, history (JSON: the per-epoch diagnostics)

``model.pt`` of a task model dir (``format: babelflow-task-model``, version 1): one task's
    trunk + head renamed ``output``, written by :func:`save_task_model` (``babelflow split``,
    ``babelflow priors``)::

        model_config, task_spec, state_dict, and the meta: task, kind, num_outputs, left_context,
        right_context, input_dim, ivector_dim, feat_type, cmvn_opts, source_model, source_output,
        egs_dir, labels, feature_conf, priors (a float32 tensor or None), prior_method

``checkpoint.pt`` (no format tag): the training state :func:`save_checkpoint` writes every
    ``checkpoint_every`` steps and every epoch::

        config_hash, model (state dict), optimizer (state dict), state (JSON: epoch, step, history)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import BabelflowError
from ..io import atomic_open
from .model import ModelConfig, MultiTaskModel, TaskSpec

MULTITASK_FORMAT = "babelflow-multitask-model"
TASK_FORMAT = "babelflow-task-model"
TASK_MODEL_FILE = "model.pt"  # in a task model dir (the rest of that dir: .modeldir.ModelDir)
_TASK_LAYOUT = ("format", "version", "model_config", "task_spec", "state_dict")  # the rest of a task blob is meta


def _load(path: str | Path, refused: str) -> object:
    """``torch.load(weights_only=True)``; whatever torch raises (pickled code, foreign or corrupt
    files) becomes ``"<path>: <refused> (<error>)"``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for foreign files
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise BabelflowError(f"{path}: {refused} ({type(e).__name__}: {first})") from None


def _save(path: Path, blob: dict) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(blob, f)


# ------------------------------------------------------------------ final.pt: the multi-task model
def save_model(path: Path, model: MultiTaskModel, egs_info: Mapping[str, object], task_egs: Iterable[object],
               extra: dict | None = None) -> None:
    """The trained multi-task model: tensors and plain data only (loadable with weights_only=True).
    ``egs_info``: the first task's egs ``info/`` (feature type, cmvn_opts, dim are kept);
    ``task_egs``: each task's egs dir (what ``split`` and ``priors`` read back)."""
    blob = {"format": MULTITASK_FORMAT, "version": 1, "model_config": model.config.to_dict(),
            "tasks": [asdict(t) for t in model.tasks], "input_dim": model.input_dim, "ivector_dim": model.ivector_dim,
            "left_context": model.left_context, "right_context": model.right_context,
            "egs": {k: str(v) for k, v in egs_info.items() if k in ("feat_type", "cmvn_opts", "feat_dim")},
            "task_egs": list(map(str, task_egs)),
            "state_dict": model.state_dict(), **(extra or {})}
    _save(path, blob)


def load_model(path: str | Path) -> tuple[MultiTaskModel, dict]:
    """Load a model written by :func:`save_model`; never unpickles code."""
    blob = _load(path, "not a babelflow model")
    if not isinstance(blob, dict) or blob.get("format") != MULTITASK_FORMAT:
        raise BabelflowError(f"{path}: not a babelflow multi-task model")
    with _built(path):
        model = MultiTaskModel(ModelConfig.from_dict(blob["model_config"]), blob["input_dim"],
                               [TaskSpec(**t) for t in blob["tasks"]], blob["ivector_dim"])
        model.load_state_dict(blob["state_dict"])
    return model, blob


@contextlib.contextmanager
def _built(path: str | Path) -> Iterator[None]:
    """A file of the right format whose contents do not make the model it describes (a missing entry,
    a tensor of another shape): one line naming the file and the entry."""
    try:
        yield
    except KeyError as e:
        raise BabelflowError(f"{path}: entry {e} missing (a damaged or hand-edited model file)") from None
    except (RuntimeError, TypeError, ValueError, BabelflowError) as e:
        first = " ".join(str(e).split())[:300]
        raise BabelflowError(f"{path}: does not match the model it describes ({first})") from None


# ------------------------------------------------------------------ model.pt: one task's model
def save_task_model(out_dir: str | Path, model: MultiTaskModel, meta: dict) -> None:
    """Write ``out_dir/model.pt``: a split model (one head, ``output``) and its meta (see above)."""
    blob = {"format": TASK_FORMAT, "version": 1, "model_config": model.config.to_dict(),
            "task_spec": vars(model.tasks[0]), "state_dict": model.state_dict(), **meta}
    _save(Path(out_dir) / TASK_MODEL_FILE, blob)


def task_meta(blob: dict) -> dict:
    """The meta of a loaded task blob: what :func:`save_task_model` takes back to rewrite it."""
    return {k: v for k, v in blob.items() if k not in _TASK_LAYOUT}


def load_task_model(model_dir: str | Path) -> tuple[MultiTaskModel, dict]:
    """Load a task model dir's ``model.pt`` (or that file itself) safely (weights_only) in eval
    mode; anything else is a clear error."""
    path = Path(model_dir) / TASK_MODEL_FILE if Path(model_dir).is_dir() else Path(model_dir)
    if not path.is_file():
        raise BabelflowError(f"{path}: no task model here (run `babelflow split`)")
    blob = _load(path, "not a babelflow task model, refusing to load it")
    if not isinstance(blob, dict) or blob.get("format") != TASK_FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise BabelflowError(f"{path}: not a babelflow task model (format {found})")
    with _built(path):
        model = MultiTaskModel(ModelConfig.from_dict(blob["model_config"]), blob["input_dim"],
                               [TaskSpec(**blob["task_spec"])], blob["ivector_dim"], ["output"])
        model.load_state_dict(blob["state_dict"])
    return model.eval(), blob


# ------------------------------------------------------------------ checkpoint.pt: training state
def save_checkpoint(path: Path, config_hash: str, model: torch.nn.Module, optim: torch.optim.Optimizer,
                    state: dict) -> None:
    """The training state to resume from (rank 0 writes it)."""
    _save(path, {"config_hash": config_hash, "model": model.state_dict(), "optimizer": optim.state_dict(),
                 "state": json.dumps(state)})


def _load_checkpoint(path: Path) -> dict:
    blob = _load(path, "not a babelflow training checkpoint")
    if not isinstance(blob, dict) or "model" not in blob:
        raise BabelflowError(f"{path}: not a babelflow training checkpoint")
    return blob


def checkpoint_hash(path: Path) -> str | None:
    """The config hash a checkpoint was written with."""
    return _load_checkpoint(path).get("config_hash")


def load_checkpoint(path: Path, config_hash: str, model: torch.nn.Module, optim: torch.optim.Optimizer) -> dict:
    """Restore ``model`` and ``optim`` from ``path``, which must have been written with the same
    config hash; returns the training state (epoch, step, history)."""
    blob = _load_checkpoint(path)
    if blob.get("config_hash") != config_hash:
        raise BabelflowError(f"{path}: checkpoint from a different model/task/training config "
                             f"({blob.get('config_hash')} != {config_hash}); delete it to start over")
    model.load_state_dict(blob["model"])
    optim.load_state_dict(blob["optimizer"])
    return json.loads(blob["state"])


def model_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The network tensors of a ``final.pt`` or of a training ``checkpoint.pt`` (``train.init``)."""
    if Path(path).name == "checkpoint.pt":
        return _load_checkpoint(Path(path))["model"]
    return load_model(path)[0].state_dict()
