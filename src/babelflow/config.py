"""params.yaml -> a resolved, checked pipeline description.

The JSON schema (``workflow/schemas/params.schema.yaml``) catches types and unknown
keys; this module adds what a schema cannot: task references to data sets, paths that
must exist, weights for tasks that exist, feature options Kaldi knows. Every error
names the offending key, so a bad config fails before the first job runs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .demo.corpus import SIZES
from .errors import BabelflowError
from .features import FeatureConfig, parse_cmvn_opts

SCHEMA = Path(__file__).resolve().parent / "schemas" / "params.schema.yaml"
DEMO_ROOT = "corpus"


@dataclass
class Task:
    name: str
    kind: str  # frame | utterance
    data: list[str]  # data set names
    ali: str | None = None
    labels: str | None = None
    weight: float = 1.0
    classes: list[str] | None = None
    num_pdfs: int | None = None
    ivectors: dict[str, str] | None = None  # data set -> online i-vector dir


@dataclass
class Pipeline:
    """What the Snakefile needs: data sets, tasks and the validated raw config."""

    config: dict[str, Any]
    datasets: dict[str, str]  # name -> source Kaldi data dir
    tasks: dict[str, Task]
    demo: bool
    demo_langs: list[str] = field(default_factory=list)

    @property
    def workdir(self) -> str:
        return self.config["workdir"]

    @property
    def features(self) -> FeatureConfig:
        f = self.config["features"]
        return FeatureConfig.build(f["type"], f.get("config"), f.get("options"), origin="params: features.options")

    def feature_args(self) -> str:
        """The Kaldi-style flags of the features step, as the rule passes them to the CLI."""
        f = self.config["features"]
        args = [f"--type={f['type']}"]
        if f.get("config"):
            args.append(f"--config={f['config']}")
        for k, v in sorted((f.get("options") or {}).items()):
            v = str(v).lower() if isinstance(v, bool) else v
            args.append(f"--{k.replace('_', '-')}={v}")
        return " ".join(args)

    @property
    def model_config(self):
        """The network (ModelConfig) from ``model:`` or the file ``model.config`` names."""
        from .nnet.modelconfig import ModelConfig, load_model_config

        m = self.config["model"]
        if m.get("config"):
            return load_model_config(m["config"])
        return ModelConfig.from_dict({k: v for k, v in m.items() if k != "config"}, origin="params: model")

    def egs_context(self) -> tuple[int, int]:
        e = self.config["egs"]
        mc = self.model_config
        left = mc.left_context if e["left_context"] is None else e["left_context"]
        right = mc.right_context if e["right_context"] is None else e["right_context"]
        return left, right

    def merge_args(self) -> str:
        """The flags of `babelflow merge` (weights in task order, Kaldi's lang2weight)."""
        m = self.config["merge"]
        args = [f"--weights={','.join(f'{t.weight:g}' for t in self.tasks.values())}",
                f"--task-names={','.join(self.tasks)}", f"--block-size={m['block_size']}",
                f"--sampler={m['sampler']}"]
        if m["sampler"] == "temperature":
            args.append(f"--temperature={m['temperature']}")
        if m.get("num_archives"):
            args.append(f"--num-archives={m['num_archives']}")
        return " ".join(args)

    def train_args(self) -> str:
        """The flags of `babelflow train`, as the rule passes them."""
        args = []
        for k, v in self.config["train"].items():
            if k in ("nproc", "nnodes") or v is None:
                continue
            v = ",".join(v) if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else v
            if v == "":
                continue
            args.append(f"--{k.replace('_', '-')}={v}")
        return " ".join(args)

    def egs_args(self, task: str) -> str:
        """The flags of `babelflow egs job/finalize` for a task, as the rules pass them."""
        t, e, w = self.tasks[task], self.config["egs"], self.workdir
        args = [f"--task={task}", f"--kind={t.kind}", f"--nj={self.config['data']['nj']}"]
        args += [f"--set={s}:{w}/data/{s}:{w}/feats/{s}" for s in t.data]
        for s, d in (t.ivectors or {}).items():
            args.append(f"--ivectors={s}:{d}")
        if t.kind == "utterance":
            args.append(f"--labels={t.labels}")
            if t.classes:
                args.append(f"--classes={','.join(t.classes)}")
        left, right = self.egs_context()
        args += [f"--left-context={left}", f"--right-context={right}"]
        for key in ("frames_per_eg", "num_valid_utts", "num_train_subset_utts", "valid_fraction",
                    "length_tolerance", "dtype", "seed"):
            args.append(f"--{key.replace('_', '-')}={e[key]}")
        u = e["utterance"]
        args += [f"--chunking={u['chunking']}", f"--min-chunk={u['min_chunk']}", f"--max-chunk={u['max_chunk']}"]
        return " ".join(args)


def _task_ivectors(name: str, t: dict, data: list[str]) -> dict[str, str] | None:
    iv = t.get("ivectors")
    if iv is None:
        return None
    if isinstance(iv, str):
        if len(data) != 1:
            raise BabelflowError(f"params: tasks.{name}.ivectors: give one dir per data set ({', '.join(data)})")
        return {data[0]: iv}
    if set(iv) != set(data):
        raise BabelflowError(f"params: tasks.{name}.ivectors: keys {sorted(iv)} must be the task's data sets {data}")
    return dict(iv)


def _check_ivectors(tasks: dict[str, Task], check_paths: bool) -> None:
    """Kaldi's combine_egs.sh requires one i-vector dim for all tasks (0 = none)."""
    with_iv = [t for t in tasks.values() if t.ivectors]
    if not with_iv:
        return
    without = [t.name for t in tasks.values() if not t.ivectors]
    if without:
        raise BabelflowError(f"params: tasks.{without[0]}.ivectors: missing, but tasks.{with_iv[0].name} has "
                             "i-vectors (the shared network takes one i-vector input: give every task one)")
    if not check_paths:
        return
    from .egs.make import IvectorSource

    dims = {}
    for t in with_iv:
        for s, d in t.ivectors.items():
            dims[(t.name, s)] = IvectorSource.open(d).dim
    (t0, s0), d0 = next(iter(dims.items()))
    for (t, s), d in dims.items():
        if d != d0:
            raise BabelflowError(f"params: tasks.{t}.ivectors: dim {d} ({s}) differs from {d0} "
                                 f"(tasks.{t0}, {s0}); all tasks must share the i-vector dim")


def load_params(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise BabelflowError(f"{path}: not found") from None
    except yaml.YAMLError as e:
        raise BabelflowError(f"{path}: invalid YAML: {e}") from None
    return cfg or {}


def validate_schema(config: dict[str, Any]) -> dict[str, Any]:
    """Validate against the schema and fill defaults (as Snakemake's ``validate`` does)."""
    import jsonschema

    schema = yaml.safe_load(SCHEMA.read_text())
    config = copy.deepcopy(config)
    validator_cls = jsonschema.validators.validator_for(schema)

    def set_defaults(validator, properties, instance, schema):
        for prop, sub in properties.items():
            if isinstance(instance, dict) and "default" in sub:
                instance.setdefault(prop, copy.deepcopy(sub["default"]))
        yield from validator_cls.VALIDATORS["properties"](validator, properties, instance, schema)

    extended = jsonschema.validators.extend(validator_cls, {"properties": set_defaults})
    errors = sorted(extended(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        key = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise BabelflowError(f"params: {key}: {e.message}")
    return config


def resolve_config(config: dict[str, Any], check_paths: bool = True) -> Pipeline:
    """Fill the demo defaults and check everything the schema cannot."""
    config = copy.deepcopy(config)
    dirs: dict[str, str] = dict(config["data"]["dirs"])
    tasks_cfg: dict[str, dict] = dict(config["tasks"])
    demo = not dirs and not tasks_cfg
    langs: list[str] = []
    if demo:
        d = config["demo"]
        if d.get("utts_per_lang") is None:
            d["utts_per_lang"] = SIZES[d["size"]]
        langs = list(d["langs"])
        dirs = {lang: f"{DEMO_ROOT}/{lang}/data" for lang in langs}
        tasks_cfg = {lang: {"kind": "frame", "data": lang, "ali": f"{DEMO_ROOT}/{lang}/ali"} for lang in langs}
        for label in d["utterance_tasks"]:
            tasks_cfg[label] = {"kind": "utterance", "data": langs, "labels": f"utt2{label}"}
        config["data"]["dirs"], config["tasks"] = dirs, tasks_cfg
    elif not dirs:
        raise BabelflowError("params: data.dirs: empty, but tasks are configured (name each Kaldi data dir there)")
    elif not tasks_cfg:
        raise BabelflowError("params: tasks: empty, but data.dirs is set (declare at least one task)")

    if check_paths and not demo:
        for name, path in dirs.items():
            if not Path(path).is_dir():
                raise BabelflowError(f"params: data.dirs.{name}: directory '{path}' not found")
    tasks = {}
    for name, t in tasks_cfg.items():
        data = [t["data"]] if isinstance(t["data"], str) else list(t["data"])
        for d in data:
            if d not in dirs:
                raise BabelflowError(f"params: tasks.{name}.data: unknown data set '{d}' "
                                     f"(data.dirs has: {', '.join(dirs)})")
        if t["kind"] == "frame":
            if not t.get("ali"):
                raise BabelflowError(f"params: tasks.{name}.ali: required for a frame task "
                                     "(a Kaldi alignment dir or a pdf-id rspecifier)")
            if len(data) != 1:
                raise BabelflowError(f"params: tasks.{name}.data: a frame task takes one data set")
            ali = t["ali"]
            if check_paths and not demo and ":" not in ali and not Path(ali).is_dir():
                raise BabelflowError(f"params: tasks.{name}.ali: alignment dir '{ali}' not found")
        elif not t.get("labels"):
            raise BabelflowError(f"params: tasks.{name}.labels: required for an utterance task (e.g. utt2lang)")
        tasks[name] = Task(name, t["kind"], data, t.get("ali"), t.get("labels"), classes=t.get("classes"),
                           num_pdfs=t.get("num_pdfs"), ivectors=_task_ivectors(name, t, data))
    _check_ivectors(tasks, check_paths)

    weights = config["merge"]["weights"]
    for name, w in weights.items():
        if name not in tasks:
            raise BabelflowError(f"params: merge.weights.{name}: no such task (tasks: {', '.join(tasks)})")
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
            raise BabelflowError(f"params: merge.weights.{name}: weight must be a finite number > 0, got {w}")
    if weights:
        missing = [t for t in tasks if t not in weights]
        if missing:
            raise BabelflowError(f"params: merge.weights: no weight for task(s) {', '.join(missing)} "
                                 "(give every task a weight, or none for 1.0 each)")
        for name, w in weights.items():
            tasks[name].weight = float(w)

    e = config["egs"]
    if e["utterance"]["min_chunk"] > e["utterance"]["max_chunk"]:
        raise BabelflowError("params: egs.utterance.min_chunk: larger than egs.utterance.max_chunk")
    f = config["features"]
    if check_paths and f.get("config") and not Path(f["config"]).is_file():
        raise BabelflowError(f"params: features.config: file '{f['config']}' not found")
    pipeline = Pipeline(config, dirs, tasks, demo, langs)
    pipeline.features  # noqa: B018 - builds and checks every feature option now
    m = config["model"]
    if m.get("config"):
        if check_paths and not Path(m["config"]).is_file():
            raise BabelflowError(f"params: model.config: file '{m['config']}' not found")
    elif not m.get("layers"):
        raise BabelflowError("params: model.layers: give the TDNN layers (or model.config: a file)")
    if check_paths or not m.get("config"):
        mc = pipeline.model_config
        left, right = pipeline.egs_context()
        if left < mc.left_context or right < mc.right_context:
            raise BabelflowError(f"params: egs.left_context/right_context ({left}, {right}) are smaller than the "
                                 f"model's context ({mc.left_context}, {mc.right_context})")
    t = config["train"]
    unknown = [x for x in t["tasks"] if x not in tasks]
    if unknown:
        raise BabelflowError(f"params: train.tasks: unknown task(s) {', '.join(unknown)}")
    if t["freeze_trunk"] and not t["init"]:
        raise BabelflowError("params: train.freeze_trunk: needs train.init (the model whose trunk to keep)")
    if t["lr_final"] > t["lr_initial"]:
        raise BabelflowError("params: train.lr_final: larger than train.lr_initial")
    try:
        parse_cmvn_opts(f["cmvn_opts"])
    except BabelflowError as e:
        raise BabelflowError(f"params: features.{e}") from None
    return pipeline


def load_pipeline(path: str | Path = "params.yaml", check_paths: bool = True) -> Pipeline:
    return resolve_config(validate_schema(load_params(path)), check_paths)
