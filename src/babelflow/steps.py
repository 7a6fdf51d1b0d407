"""The chain's steps: which Snakemake rules, code and params.yaml keys make up each one.

One table for both tools. The Snakefile declares each step's modules as rule inputs
(Snakemake does not track code called from ``shell:``), and ``babelflow dvc-sync`` turns
each step into a DVC stage with those modules as ``deps`` and these keys as ``params``.
A test probes the Snakemake DAG under changed params and fails when a rule reads a key
its step does not list here, or a step lists a key none of its rules reads.

A step's code is the modules listed here *and every babelflow module they import*
(found by reading their import statements), so a helper moved into a new module stays
a dependency without anyone updating this table. A step's ``resolve`` hook
(``"module:function"``, called with the pipeline and ``check_paths``) resolves and
checks its own ``params.yaml`` section when the config is loaded.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Pipeline

PACKAGE = Path(__file__).resolve().parent
#: modules every step goes through; an edit there would rerun everything, so they are not
#: code deps of any stage (their effect on a step shows through its params)
COMMON = frozenset({"cli.py", "config.py", "io.py", "errors.py", "options.py", "layout.py", "steps.py", "__init__.py"})


@dataclass(frozen=True)
class Step:
    name: str  # the DVC stage
    rules: tuple[str, ...]
    code: tuple[str, ...]  # modules, relative to the babelflow package
    params: tuple[str, ...]  # params.yaml keys (a group key covers all keys under it)
    outs: tuple[str, ...]  # what the step owns; {workdir}, {task} are expanded
    doc: str
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    resolve: str | None = None  # "module:function" that resolves and checks the step's params section

    def resolve_config(self, pipeline: Pipeline, check_paths: bool) -> None:
        if self.resolve:
            module, func = self.resolve.split(":")
            getattr(importlib.import_module(module, __package__), func)(pipeline, check_paths)

    @property
    def modules(self) -> tuple[str, ...]:
        """The step's code: its listed modules and everything of babelflow they import, sorted."""
        return tuple(sorted(set().union(*(_closure(m) for m in self.code))))


STEPS: tuple[Step, ...] = (
    Step("corpus", ("demo_corpus",), ("demo/corpus.py",),
         ("demo.size", "demo.utts_per_lang", "demo.langs", "demo.voices", "demo.seed", "demo.ali_jobs",
          "demo.test_utts_per_lang", "demo.test_voices", "demo.test_snr_db", "demo.low_resource",
          "data.dirs"),
         ("corpus",),
         "espeak-ng demo corpus: Kaldi data + alignment dirs per language (only without data.dirs)"),
    Step("data", ("data",), ("data/split.py",),
         ("data.nj", "data.dirs", "data.root", "tasks", "demo.langs", "decode.tasks"),
         ("{workdir}/data",),
         "validate_data_dir.sh + split_data.sh: exp/data/<set>"),
    Step("gmm", ("gmm_lang", "gmm_mono", "gmm_tri", "gmm_align", "gmm_compare", "gmm_metrics"),
         ("gmm/lang.py", "gmm/train.py", "gmm/train_tri.py", "gmm/compare.py", "gmm/cli.py", "gmm/train_cli.py"),
         ("gmm", "data.nj", "data.dirs", "demo.ali", "demo.langs", "decode.tasks", "decode.gmm"),
         ("{workdir}/gmm/{gmm_task}",),
         "prepare_lang.sh + train_mono.sh + train_deltas.sh + align_si.sh for ali: auto tasks and the GMM baselines "
         "of decode.gmm: exp/gmm/<task>",
         metrics=("{workdir}/gmm/metrics.json",),
         resolve=".gmm.options:resolve"),
    Step("features", ("features_job", "features", "features_import"), ("make_feats.py",),
         ("features", "data.nj", "data.dirs", "tasks", "demo.langs"),
         ("{workdir}/feats",),
         "make_fbank.sh/make_mfcc.sh + compute_cmvn_stats.sh: exp/feats/<set>",
         resolve=".features:resolve"),
    Step("egs", ("egs_ali", "egs_store", "egs_job", "egs", "egs_import"),
         ("egs/alignments.py", "egs/store.py", "egs/make.py", "egs/cli.py", "egs/kaldi_bridge.py"),
         ("egs", "tasks", "data.nj", "data.dirs", "demo.langs", "demo.utterance_tasks", "demo.ali", "gmm.use",
          "model.config", "model.layers"),
         ("{workdir}/egs",),
         "get_egs.sh per task: exp/egs/<task>, the features of utterance tasks over the same data sets "
         "once: exp/egs/_store/<data sets>",
         resolve=".egs.options:resolve"),
    Step("merge", ("merge",), ("merge.py",),
         ("merge", "tasks", "data.dirs", "demo.langs", "demo.utterance_tasks"),
         ("{workdir}/merged",),
         "combine_egs.sh with task weights: exp/merged",
         resolve=".merge:resolve"),
    Step("train", ("model_config", "train"), ("nnet/modelconfig.py", "nnet/train.py", "nnet/cli.py"),
         ("train", "model"),
         ("{workdir}/train/final.pt", "{workdir}/train/model.yaml", "{workdir}/train/train_log.tsv",
          "{workdir}/train/diagnostics.tsv", "{workdir}/train/curves", "{workdir}/train/info"),
         "train_raw_dnn.py on the merged egs: exp/train",
         metrics=("{workdir}/train/metrics.json",), plots=("{workdir}/train/curves.png",),
         resolve=".nnet.options:resolve"),
    Step("models", ("split", "eval", "metrics"),
         ("nnet/taskmodel.py", "nnet/infer.py", "nnet/report.py", "nnet/phone_eval.py", "nnet/cli.py"),
         ("priors", "tasks", "data.dirs", "demo.langs", "demo.utterance_tasks", "demo.ali", "gmm.use"),
         ("{workdir}/models/{task}",),
         "split per task + adjust_priors.sh + evaluation: exp/models/<task>",
         metrics=("{workdir}/models/metrics.json",)),
    Step("export", ("export_kaldi",), ("nnet/export.py",),
         ("tasks", "data.dirs", "demo.langs"),
         ("{workdir}/kaldi",),
         "frame tasks as Kaldi model dirs (final.mdl, conf/, cmvn_opts): exp/kaldi/<task>"),
    Step("decode", ("decode_lm", "decode_lang", "decode_graph", "decode_nnet", "decode_graph_gmm", "decode_gmm",
                    "decode_metrics"),
         ("decode/lm.py", "decode/graph.py", "decode/decoder.py", "decode/score.py", "decode/decode_cli.py",
          "decode/cli.py", "gmm/cli.py"),
         ("decode", "gmm.lang", "gmm.use", "data.nj", "data.dirs", "demo.ali", "demo.langs"),
         ("{workdir}/decode/{decoded_task}",),
         "lm + mkgraph.sh + nnet3/decode.sh + score.sh per task of decode.tasks: exp/decode/<task>",
         metrics=("{workdir}/decode/metrics.json",), plots=("{workdir}/decode/metrics.tsv",),
         resolve=".decode.options:resolve"),
    Step("lowres", ("lowres_train", "lowres_split", "lowres_decode", "lowres_metrics"),
         ("lowres.py", "nnet/train.py", "nnet/taskmodel.py", "nnet/cli.py", "decode/decoder.py",
          "decode/decode_cli.py"),
         # demo.utterance_tasks reaches multi_base only with lowres.base_tasks: all, and then through exp/merged too
         ("lowres", "train", "priors", "decode", "gmm.use", "data.nj", "data.dirs", "demo.ali", "demo.langs",
          "demo.low_resource"),
         ("{workdir}/lowres", "{workdir}/decode/lowres.png"),
         "the multilingual gain on low-resource targets: mono / multi_frozen trained, split, decoded: exp/lowres",
         metrics=("{workdir}/decode/lowres.json",), plots=("{workdir}/decode/lowres.tsv",),
         resolve=".lowres:resolve"),
)


STEP_OF_RULE = {rule: step for step in STEPS for rule in step.rules}


def step(name: str) -> Step:
    for s in STEPS:
        if s.name == name:
            return s
    raise KeyError(f"no step {name!r} (steps: {', '.join(s.name for s in STEPS)})")


def code_files(name: str, basedir: str | Path) -> list[str]:
    """A step's modules as paths the workflow can list as inputs: ``src/babelflow/...`` under
    the workflow's directory when it is a checkout (what DVC tracks too), else the installed package."""
    pkg = Path(basedir) / "src" / "babelflow"
    root = (pkg if pkg.is_dir() else Path(__file__).parent).resolve()
    try:
        root = root.relative_to(Path.cwd().resolve())  # relative, as DVC's deps are
    except ValueError:
        pass
    return [str(root / m) for m in step(name).modules]


@cache
def _closure(module: str) -> frozenset[str]:
    """``module`` (a path relative to the package) and every babelflow module it imports, transitively."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen or m in COMMON:
            continue
        seen.add(m)
        todo += imported_modules(m)
    return frozenset(seen)


def imported_modules(module: str) -> list[str]:
    """The babelflow modules ``module`` imports anywhere in its body (lazy imports included)."""
    path = PACKAGE / module
    package = Path(module).parent.parts
    out = []
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[:len(package) - node.level + 1])
            elif node.module and node.module.split(".")[0] == "babelflow":
                base = []
                node = ast.ImportFrom(node.module.split(".", 1)[1] if "." in node.module else None, node.names, 1)
            else:
                continue
            parts = base + (node.module.split(".") if node.module else [])
            found = _module_file(parts)
            if found and not found.endswith("__init__.py"):
                out.append(found)
            for alias in node.names:  # ``from . import x``: x may be a module
                sub = _module_file(parts + [alias.name])
                if sub:
                    out.append(sub)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("babelflow."):
                    found = _module_file(alias.name.split(".")[1:])
                    if found:
                        out.append(found)
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node, except under ``if TYPE_CHECKING:`` (imports for type hints only never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo += node.orelse
        else:
            todo += ast.iter_child_nodes(node)


def _module_file(parts: list[str]) -> str | None:
    rel = "/".join(parts)
    if (PACKAGE / f"{rel}.py").is_file():
        return f"{rel}.py"
    if parts and (PACKAGE / rel / "__init__.py").is_file():
        return f"{rel}/__init__.py"
    return None
