"""A task model dir, ``exp/models/<task>/``: the one place that knows its file names.

``babelflow split`` writes it, ``babelflow priors`` completes it; ``compute``, ``bottleneck``,
``eval`` and ``export-kaldi`` read it::

    model.pt          the network and its meta (see :mod:`.checkpoint`)
    trans.mdl         frame tasks: the TransitionModel of the task's alignment dir (binary Kaldi)
    tree              frame tasks: that alignment dir's decision tree, byte for byte (mkgraph.sh
                      needs it beside final.mdl); absent when the alignment dir had none
    conf/<type>.conf  the Kaldi feature config the features were made with
    cmvn_opts         as in Kaldi model dirs
    info/             one value per file: kind, num_outputs, left_context, right_context,
                      ivector_dim, feat_type, input_dim, has_tree; classes.txt (utterance tasks)
    priors.txt        frame tasks after ``babelflow priors``: the priors as a Kaldi text vector
    eval/             ``babelflow eval``: metrics.json, per_pdf.tsv or confusion.*

Paths (``model_path``, ``tree_path``, ...) only say where a file goes; the properties that
read (``model_file``, ``trans_mdl``, ``tree``, ``cmvn_opts``, ``info``, ...) raise a
:class:`BabelflowError` naming the missing file and the command that writes it::

    md = ModelDir("exp/models/en")
    model, blob = md.load()
    if md.has_tree:
        shutil.copyfile(md.tree, "graph/tree")
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import BabelflowError
from ..io import write_text
from .checkpoint import TASK_MODEL_FILE, load_task_model
from .model import MultiTaskModel

_SPLIT = "run `babelflow split`"
_TRANS_HINT = ("the TransitionModel a Kaldi .mdl must carry, the one of the task's alignment dir: "
               "re-run `babelflow split` with --ali=<alignment dir>")


class ModelDir:
    """A task model dir; nothing is read until a property asks for it. ``path`` may also name the
    model file itself (``exp/models/en/model.pt``): then the dir is its folder."""

    MODEL, TRANS, TREE, CONF, CMVN_OPTS, INFO, PRIORS, EVAL = (
        TASK_MODEL_FILE, "trans.mdl", "tree", "conf", "cmvn_opts", "info", "priors.txt", "eval")
    KALDI_FILES = (CMVN_OPTS, CONF, INFO, TREE)  # what a Kaldi model dir takes along beside final.mdl

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self._model = path if path.is_file() else None
        self.path = path.parent if self._model else path

    def __repr__(self) -> str:
        return f"ModelDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ where things go
    @property
    def model_path(self) -> Path:
        return self._model or self.path / self.MODEL

    @property
    def trans_path(self) -> Path:
        return self.path / self.TRANS

    @property
    def tree_path(self) -> Path:
        return self.path / self.TREE

    @property
    def conf_dir(self) -> Path:
        return self.path / self.CONF

    @property
    def cmvn_opts_path(self) -> Path:
        return self.path / self.CMVN_OPTS

    @property
    def info_dir(self) -> Path:
        return self.path / self.INFO

    @property
    def priors_path(self) -> Path:
        return self.path / self.PRIORS

    @property
    def eval_dir(self) -> Path:
        return self.path / self.EVAL

    # ------------------------------------------------------------------ what is there
    def _require(self, path: Path, hint: str) -> Path:
        if not path.exists():
            raise BabelflowError(f"{self.path}: no {path.relative_to(self.path)} ({hint})")
        return path

    @property
    def model_file(self) -> Path:
        """``model.pt``, which must exist."""
        return self._require(self.model_path, f"not a task model dir: {_SPLIT}")

    @property
    def trans_mdl(self) -> Path:
        """``trans.mdl``, which must exist (frame tasks split with ``--ali``)."""
        return self._require(self.trans_path, _TRANS_HINT)

    @property
    def has_tree(self) -> bool:
        return self.tree_path.is_file()

    @property
    def tree(self) -> Path:
        """``tree``, which must exist (frame tasks split with ``--ali`` from an alignment dir with a tree)."""
        return self._require(self.tree_path, "the decision tree Kaldi's mkgraph.sh needs; the alignment dir had "
                                             "none, or the task was split without --ali=<alignment dir>")

    @property
    def cmvn_opts(self) -> str:
        return self._require(self.cmvn_opts_path, _SPLIT).read_text().strip()

    @property
    def conf_files(self) -> list[Path]:
        """The Kaldi feature configs in ``conf/`` (none when split without --feats-dir)."""
        return sorted(self.conf_dir.glob("*.conf"))

    @property
    def info(self) -> dict[str, str]:
        """``info/``: one stripped value per file (``classes.txt`` excluded: see :attr:`classes`)."""
        d = self._require(self.info_dir, _SPLIT)
        return {p.name: p.read_text().strip() for p in sorted(d.iterdir()) if p.is_file() and p.suffix != ".txt"}

    def _info(self, key: str) -> str:
        return self._require(self.info_dir / key, _SPLIT).read_text().strip()

    @property
    def kind(self) -> str:
        """``frame`` or ``utterance``."""
        return self._info("kind")

    @property
    def num_outputs(self) -> int:
        return int(self._info("num_outputs"))

    @property
    def context(self) -> tuple[int, int]:
        """(left, right) frames of context the network needs."""
        return int(self._info("left_context")), int(self._info("right_context"))

    @property
    def classes(self) -> list[str]:
        """Utterance tasks: the class names by output index (empty for frame tasks)."""
        path = self.info_dir / "classes.txt"
        if not path.is_file():
            return []
        rows = sorted((int(i), c) for c, i in (ln.split() for ln in path.read_text().splitlines() if ln.strip()))
        return [c for _, c in rows]

    @property
    def has_priors(self) -> bool:
        return self.priors_path.is_file()

    @property
    def priors(self) -> np.ndarray:
        """``priors.txt`` (the Kaldi text vector ``babelflow priors`` writes)."""
        text = self._require(self.priors_path, "run `babelflow priors`").read_text()
        return np.array(text.replace("[", " ").replace("]", " ").split(), dtype=np.float64)

    @property
    def metrics(self) -> dict:
        """``eval/metrics.json``."""
        return json.loads(self._require(self.eval_dir / "metrics.json", "run `babelflow eval`").read_text())

    def kaldi_files(self) -> list[Path]:
        """What a Kaldi model dir takes along beside final.mdl and is here: cmvn_opts, conf/, info/, tree."""
        return [self.path / n for n in self.KALDI_FILES if (self.path / n).exists()]

    def load(self) -> tuple[MultiTaskModel, dict]:
        """The model (eval mode) and its blob, loaded safely (see :func:`.checkpoint.load_task_model`)."""
        return load_task_model(self.model_file)

    # ------------------------------------------------------------------ writing
    def write_info(self, values: dict) -> None:
        """``info/<key>`` for each item, one value per file."""
        for k, v in values.items():
            write_text(self.info_dir / k, f"{v}\n")
