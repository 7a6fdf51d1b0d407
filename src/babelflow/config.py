"""params.yaml -> a resolved, checked pipeline description.

The JSON schema (``schemas/params.schema.yaml``) catches types and unknown keys. What a
schema cannot check is split by owner: this module resolves what every step shares
(data sets and tasks, with the demo filling both when none are given); each step then
resolves and checks its own section through its ``resolve`` hook (``steps.Step.resolve``),
so a step family brings its checks along. Every error names ``params.yaml`` and the key,
so a bad config fails before the first job runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import BabelflowError
from .kaldi.table import looks_like_rspecifier
from .layout import Layout, corpus
from .options import StepOptions

SCHEMA = Path(__file__).resolve().parent / "schemas" / "params.schema.yaml"
PARAMS = "params.yaml"

O = TypeVar("O", bound=StepOptions)


@dataclass
class Task:
    name: str
    kind: str  # frame | utterance
    data: list[str]  # data set names
    ali: str | None = None  # alignment dir or pdf-id rspecifier (frame tasks)
    ali_from: str | None = None  # the step that makes ``ali`` (None: it comes from outside the workflow)
    lexicon: str | None = None  # Kaldi lexicon.txt: for ``ali: auto`` (the GMM's) and for decoding (the graph's)
    test: str | None = None  # the data set decoded for WER (decode.tasks)
    ref_ali: str | None = None  # true alignments to score others against (the demo's synthesiser timings)
    labels: str | None = None
    weight: float = 1.0
    classes: list[str] | None = None
    num_pdfs: int | None = None
    ivectors: dict[str, str] | None = None  # data set -> online i-vector dir
    egs: str | None = None  # a Kaldi nnet3 egs dir to import instead of making egs (frame tasks)

    @property
    def auto_ali(self) -> bool:
        """Alignments made by the workflow's GMM step (``ali: auto``)."""
        return self.ali_from == "gmm"

    @property
    def ali_dir(self) -> str | None:
        """The alignment dir (its ``final.mdl``, ``tree``), None for a pdf-id rspecifier."""
        return self.ali if self.ali and not looks_like_rspecifier(self.ali) else None


@dataclass
class Pipeline:
    """What the Snakefile needs: data sets, tasks, the validated config and each step's options."""

    config: dict[str, Any]
    datasets: dict[str, str]  # name -> source Kaldi data dir
    tasks: dict[str, Task]
    demo: bool
    demo_langs: list[str] = field(default_factory=list)
    origin: str = PARAMS  # the file the user edits, named in every error

    @property
    def workdir(self) -> str:
        return self.config["workdir"]

    @cached_property
    def layout(self) -> Layout:
        return Layout(self.workdir)

    def options(self, cls: type[O]) -> O:
        """A step's options as params set them (the one path from params.yaml to a step's flags)."""
        cache = self.__dict__.setdefault("_options", {})
        if cls not in cache:
            cache[cls] = cls.from_params(self.config)
        return cache[cls]

    def error(self, key: str, message: str) -> BabelflowError:
        return BabelflowError(f"{self.origin}: {key}: {message}")

    @cached_property
    def model_config(self):
        """The network (ModelConfig) from ``model:`` or the file ``model.config`` names."""
        from .nnet.modelconfig import ModelConfig, load_model_config

        m = self.config["model"]
        if m.get("config"):
            return load_model_config(m["config"])
        return ModelConfig.from_dict({k: v for k, v in m.items() if k != "config"}, origin=f"{self.origin}: model")

    def frame_tasks(self) -> list[str]:
        return [t for t, spec in self.tasks.items() if spec.kind == "frame"]


def load_params(path: str | Path) -> dict[str, Any]:
    """A params file, refusing what YAML itself lets pass: a key given twice (the same task declared twice
    would silently keep the last)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BabelflowError(f"{path}: not found") from None
    try:
        cfg = yaml.load(text, Loader=_unique_keys_loader(path))
    except yaml.YAMLError as e:
        raise BabelflowError(f"{path}: invalid YAML: {e}") from None
    return cfg or {}


def _unique_keys_loader(path: Path) -> type:
    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise BabelflowError(f"{path}:{line}: '{key}' given twice (also on line {seen[key]}): "
                                         "YAML would keep only the last")
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return Loader


def key_lines(path: str | Path) -> dict[str, int]:
    """Dotted key -> line in a YAML file (to point at what the schema refused)."""
    out: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                out[key] = k.start_mark.line + 1
                walk(v, key + ".")

    try:
        walk(yaml.compose(Path(path).read_text()), "")
    except (OSError, yaml.YAMLError):
        pass
    return out


def validate_schema(config: dict[str, Any], origin: str = PARAMS, lines: dict[str, int] | None = None
                    ) -> dict[str, Any]:
    """Validate against the schema and fill defaults (as Snakemake's ``validate`` does); errors name the
    key and, with ``lines`` (:func:`key_lines`), its line."""
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
        parts = key.split(".")
        line = next((lines[k] for k in (".".join(parts[:i]) for i in range(len(parts), 0, -1)) if k in (lines or {})),
                    None)
        raise BabelflowError(f"{origin}{f':{line}' if line else ''}: {key}: {e.message}")
    return config


def rooted_paths(config: dict[str, Any], check_paths: bool = True, origin: str = PARAMS) -> dict[str, Any]:
    """With ``data.root``, every relative path a user gives in params (data dirs, alignment dirs, lexicons,
    Kaldi egs and features, i-vectors, conf files, ``local.conf``, a model file, ``train.init``) is relative
    to that folder, as in Kaldi's experiment folder; returns the config with them joined to it (the rest,
    e.g. rspecifiers and ``auto``, unchanged). Idempotent."""
    root = (config.get("data") or {}).get("root")
    if not root:
        return config
    if check_paths and not Path(root).is_dir():
        raise BabelflowError(f"{origin}: data.root: directory '{root}' not found")
    config = copy.deepcopy(config)

    def at(p: Any) -> Any:
        if not isinstance(p, str) or not p or p == "auto" or Path(p).is_absolute() or looks_like_rspecifier(p):
            return p
        return str(Path(root) / p)

    data, feats = config.get("data", {}), config.get("features", {})
    data["dirs"] = {k: at(v) for k, v in (data.get("dirs") or {}).items()}
    for t in (config.get("tasks") or {}).values():
        for key in ("ali", "lexicon", "egs"):
            if key in t:
                t[key] = at(t[key])
        if isinstance(t.get("ivectors"), dict):
            t["ivectors"] = {k: at(v) for k, v in t["ivectors"].items()}
        elif "ivectors" in t:
            t["ivectors"] = at(t["ivectors"])
    if feats:
        feats["existing"] = {k: at(v) for k, v in (feats.get("existing") or {}).items()}
        feats["config"] = at(feats.get("config"))
    for section, key in (("merge", "local_conf"), ("model", "config"), ("train", "init")):
        if key in (config.get(section) or {}):
            config[section][key] = at(config[section][key])
    return config


def resolve_config(config: dict[str, Any], check_paths: bool = True, origin: str = PARAMS) -> Pipeline:
    """Data sets and tasks (the demo's when none are given), then every step's own checks."""
    from .demo.options import DemoOptions
    from .steps import STEPS

    config = copy.deepcopy(rooted_paths(config, check_paths, origin))
    dirs: dict[str, str] = dict(config["data"]["dirs"])
    tasks_cfg: dict[str, dict] = dict(config["tasks"])
    demo = not dirs and not tasks_cfg
    langs: list[str] = []
    produced: set[str] = set()  # paths the workflow makes: not checked for existence
    if demo:
        d = DemoOptions.from_params(config)
        langs = list(d.langs)
        dirs = {lang: corpus(lang, "data") for lang in langs}
        tests = {lang: f"{lang}_test" for lang in langs} if d.test_utts_per_lang else {}
        dirs |= {name: corpus(lang, "test") for lang, name in tests.items()}
        tasks_cfg = {lang: {"kind": "frame", "data": lang, "ali": corpus(lang, "ali") if d.ali == "synth" else "auto",
                            "lexicon": corpus(lang, "dict", "lexicon.txt"), **({"test": tests[lang]} if tests else {})}
                     for lang in langs}
        if tests and not config["decode"]["tasks"]:
            config["decode"]["tasks"] = list(langs)  # the demo decodes every language
        unknown = [lang for lang in d.low_resource if lang not in langs]
        if unknown:
            raise BabelflowError(f"{origin}: demo.low_resource: {', '.join(unknown)} not in demo.langs")
        if not config["lowres"]["tasks"]:  # its targets: the low-resource languages it decodes
            config["lowres"]["tasks"] = [lang for lang in d.low_resource if lang in config["decode"]["tasks"]]
        for label in d.utterance_tasks:
            tasks_cfg[label] = {"kind": "utterance", "data": langs, "labels": f"utt2{label}"}
        config["data"]["dirs"], config["tasks"] = dirs, tasks_cfg
        produced = {corpus(lang, part) for lang in langs for part in ("data", "ali", "test")}
        produced |= {corpus(lang, "dict", "lexicon.txt") for lang in langs}
    elif not dirs:
        raise BabelflowError(f"{origin}: data.dirs: empty, but tasks are configured (name each Kaldi data dir there)")
    elif not tasks_cfg:
        raise BabelflowError(f"{origin}: tasks: empty, but data.dirs is set (declare at least one task)")

    if check_paths:
        for name, path in dirs.items():
            if path not in produced and not Path(path).is_dir():
                raise BabelflowError(f"{origin}: data.dirs.{name}: directory '{path}' not found")
    tasks = {name: _task(name, t, dirs, origin) for name, t in tasks_cfg.items()}
    for t in tasks.values():
        if t.ali in produced:
            t.ali_from = "corpus"
        elif t.ali == "auto":
            t.ali, t.ali_from = None, "gmm"  # the gmm step's resolve hook names the dir
        if demo and t.kind == "frame":
            t.ref_ali = corpus(t.data[0], "ali")
        if check_paths and t.ali_dir and not t.ali_from and not Path(t.ali_dir).is_dir():
            raise BabelflowError(f"{origin}: tasks.{t.name}.ali: alignment dir '{t.ali}' not found")
        if check_paths and t.egs and not Path(t.egs).is_dir():
            raise BabelflowError(f"{origin}: tasks.{t.name}.egs: Kaldi egs dir '{t.egs}' not found")
        if t.test and t.test not in dirs:
            raise BabelflowError(f"{origin}: tasks.{t.name}.test: unknown data set '{t.test}' "
                                 f"(data.dirs has: {', '.join(dirs)})")
        if check_paths and t.lexicon and t.lexicon not in produced and not Path(t.lexicon).is_file():
            raise BabelflowError(f"{origin}: tasks.{t.name}.lexicon: file '{t.lexicon}' not found")

    pipeline = Pipeline(config, dirs, tasks, demo, langs, origin)
    _check_model(pipeline, check_paths)
    for step in STEPS:
        step.resolve_config(pipeline, check_paths)
    return pipeline


def _check_model(p: Pipeline, check_paths: bool) -> None:
    """The network is shared by the egs (its context) and train steps: checked before either."""
    m = p.config["model"]
    if m.get("config"):
        if check_paths and not Path(m["config"]).is_file():
            raise p.error("model.config", f"file '{m['config']}' not found")
    elif not m.get("layers"):
        raise p.error("model.layers", "give the TDNN layers (or model.config: a file)")
    if check_paths or not m.get("config"):
        p.model_config  # noqa: B018 - builds and checks every layer now


def _task(name: str, t: dict, dirs: dict[str, str], origin: str) -> Task:
    data = [t["data"]] if isinstance(t["data"], str) else list(t["data"])
    for d in data:
        if d not in dirs:
            raise BabelflowError(f"{origin}: tasks.{name}.data: unknown data set '{d}' "
                                 f"(data.dirs has: {', '.join(dirs)})")
    if t["kind"] == "frame":
        if not t.get("ali"):
            raise BabelflowError(f"{origin}: tasks.{name}.ali: required for a frame task "
                                 "(a Kaldi alignment dir, a pdf-id rspecifier, or auto)")
        if t["ali"] == "auto" and not t.get("lexicon"):
            raise BabelflowError(f"{origin}: tasks.{name}.lexicon: required with ali: auto "
                                 "(a Kaldi lexicon.txt: word phone...)")
        if len(data) != 1:
            raise BabelflowError(f"{origin}: tasks.{name}.data: a frame task takes one data set")
        if t.get("egs") and (t["ali"] == "auto" or looks_like_rspecifier(t["ali"])):
            raise BabelflowError(f"{origin}: tasks.{name}.ali: with egs, the alignment dir the egs were made from "
                                 "(its final.mdl and tree make the task's model), not an rspecifier or auto")
    elif t.get("egs"):
        raise BabelflowError(f"{origin}: tasks.{name}.egs: only frame tasks import Kaldi egs")
    elif t.get("ali") or t.get("test"):
        raise BabelflowError(f"{origin}: tasks.{name}.{'ali' if t.get('ali') else 'test'}: only frame tasks have "
                             "alignments and test sets")
    elif not t.get("labels"):
        raise BabelflowError(f"{origin}: tasks.{name}.labels: required for an utterance task (e.g. utt2lang)")
    return Task(name, t["kind"], data, t.get("ali"), lexicon=t.get("lexicon"), test=t.get("test"),
                labels=t.get("labels"), classes=t.get("classes"),
                num_pdfs=t.get("num_pdfs"), ivectors=_task_ivectors(name, t, data, origin), egs=t.get("egs"))


def _task_ivectors(name: str, t: dict, data: list[str], origin: str) -> dict[str, str] | None:
    iv = t.get("ivectors")
    if iv is None:
        return None
    if isinstance(iv, str):
        if len(data) != 1:
            raise BabelflowError(f"{origin}: tasks.{name}.ivectors: give one dir per data set ({', '.join(data)})")
        return {data[0]: iv}
    if set(iv) != set(data):
        raise BabelflowError(f"{origin}: tasks.{name}.ivectors: keys {sorted(iv)} must be the task's data sets {data}")
    return dict(iv)


def load_pipeline(path: str | Path = PARAMS, check_paths: bool = True) -> Pipeline:
    name = Path(path).name
    return resolve_config(validate_schema(load_params(path), name, key_lines(path)), check_paths, name)
