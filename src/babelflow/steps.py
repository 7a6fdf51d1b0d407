"""The chain's steps: which Snakemake rules, code and params.yaml keys make up each one.

One table for both tools. The Snakefile declares each step's modules as rule inputs
(Snakemake does not track code called from ``shell:``), and ``babelflow dvc-sync`` turns
each step into a DVC stage with those modules as ``deps`` and these keys as ``params``.
A test probes the Snakemake DAG under changed params and fails when a rule reads a key
its step does not list here, or a step lists a key none of its rules reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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


# Modules every step goes through (cli.py, config.py, io.py, errors.py) are not listed:
# an edit there would rerun everything; their effect on a step shows in its params.
STEPS: tuple[Step, ...] = (
    Step("corpus", ("demo_corpus",), ("demo/corpus.py", "demo/espeak.py", "kaldi/transition_model.py"),
         ("demo.size", "demo.utts_per_lang", "demo.langs", "demo.voices", "demo.seed", "demo.ali_jobs", "data.dirs"),
         ("corpus",),
         "espeak-ng demo corpus: Kaldi data + alignment dirs per language (only without data.dirs)"),
    Step("data", ("data",), ("data/datadir.py", "data/split.py"),
         ("data.nj", "data.dirs", "tasks", "demo.langs"),
         ("{workdir}/data",),
         "validate_data_dir.sh + split_data.sh: exp/data/<set>"),
    Step("features", ("features_job", "features"), ("features.py", "make_feats.py", "tables.py"),
         ("features", "data.nj", "data.dirs", "tasks", "demo.langs"),
         ("{workdir}/feats",),
         "make_fbank.sh/make_mfcc.sh + compute_cmvn_stats.sh: exp/feats/<set>"),
    Step("egs", ("egs_ali", "egs_job", "egs"),
         ("egs/alignments.py", "egs/chunking.py", "egs/format.py", "egs/make.py", "kaldi/alignments.py"),
         ("egs", "tasks", "data.nj", "data.dirs", "demo.langs", "demo.utterance_tasks", "model.config",
          "model.layers"),
         ("{workdir}/egs",),
         "get_egs.sh per task: exp/egs/<task>"),
    Step("merge", ("merge",), ("merge.py",),
         ("merge", "tasks", "data.dirs", "demo.langs", "demo.utterance_tasks"),
         ("{workdir}/merged",),
         "combine_egs.sh with task weights: exp/merged"),
    Step("train", ("model_config", "train"),
         ("nnet/model.py", "nnet/modelconfig.py", "nnet/options.py", "nnet/data.py", "nnet/train.py", "nnet/plots.py"),
         ("train", "model"),
         ("{workdir}/train/final.pt", "{workdir}/train/model.yaml", "{workdir}/train/train_log.tsv",
          "{workdir}/train/diagnostics.tsv", "{workdir}/train/curves", "{workdir}/train/info"),
         "train_raw_dnn.py on the merged egs: exp/train",
         metrics=("{workdir}/train/metrics.json",), plots=("{workdir}/train/curves.png",)),
    Step("models", ("split", "eval", "metrics"),
         ("nnet/taskmodel.py", "nnet/infer.py", "nnet/report.py"),
         ("priors", "tasks", "data.dirs", "demo.langs", "demo.utterance_tasks"),
         ("{workdir}/models/{task}",),
         "split per task + adjust_priors.sh + evaluation: exp/models/<task>",
         metrics=("{workdir}/models/metrics.json",)),
    Step("export", ("export_kaldi",), ("nnet/export.py", "kaldi/nnet3.py", "kaldi/nnet3_components.py"),
         ("tasks", "data.dirs", "demo.langs"),
         ("{workdir}/kaldi",),
         "frame tasks as Kaldi model dirs (final.mdl, conf/, cmvn_opts): exp/kaldi/<task>"),
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
    return [str(root / m) for m in step(name).code]
