# Shared helpers for the rule files. Each step's flags come from its options dataclass
# (babelflow.options): the rules pass them as lists, quoted by Snakemake's {x:q}.

import os
import re

from babelflow.data.sources import audio_files, data_dir_files
from babelflow.egs.options import feature_stores, task_store
from babelflow.steps import code_files


wildcard_constraints:
    name="[A-Za-z0-9][A-Za-z0-9_.+-]*",
    job="[0-9]+",
    archive="[0-9]+",


def step_code(step):
    """The step's modules, as inputs: Snakemake does not see code called from shell:."""
    return code_files(step, workflow.basedir)


def options(cls, **kw):
    """A step's flags as params.yaml sets them (``cls.to_args``)."""
    return PIPELINE.options(cls).to_args(**kw)


def local_cores():
    """Every core of a local run; on a cluster (no --cores) the profile's set-threads decides."""
    return workflow._cores or 1


# --- data step


def data_source(wildcards):
    """The Kaldi data dir behind a data set (the demo rule makes the demo's)."""
    return DATASETS[wildcards.name]


def data_files(wildcards):
    """A user's data dir, file by file, and the audio its wav.scp names (babelflow.data.sources):
    an edit inside the dir or of a recording reruns the chain. The demo's are made by its rule."""
    if PIPELINE.demo:
        return {}
    src = DATASETS[wildcards.name]
    return {"files": list(data_dir_files(src)), "audio": list(audio_files(src, config["data"].get("root")))}


# --- egs step


def egs_ali_source(wildcards):
    """The task's alignment dir (its final.mdl + ali.*.gz); a pdf-id rspecifier is read as is."""
    ali = PIPELINE.tasks[wildcards.task].ali_dir
    return [ali] if ali else []


def egs_job_inputs(wildcards):
    task = PIPELINE.tasks[wildcards.task]
    ins = {
        "feats": expand(rules.features.output.scp, name=task.data),
        "data": expand(rules.data.output[0], name=task.data),
    }
    if task.kind == "frame":
        ins["ali"] = rules.egs_ali.output.scp.format(task=wildcards.task)
    if task.ivectors:
        ins["ivectors"] = list(task.ivectors.values())
    store = task_store(PIPELINE, wildcards.task)
    if store:  # the features this task's segments index into
        ins["store"] = rules.egs_store.output.num_rows.format(store=store)
    if config["model"].get("config"):  # the model's context shapes the examples
        ins["model"] = config["model"]["config"]
    ins["code"] = step_code("egs")
    return ins


def kaldi_egs_files(wildcards):
    """A Kaldi egs dir, file by file (archives, scp files, info/): a re-made egs dir reruns the import."""
    from babelflow.data.sources import kaldi_egs_files as files

    return list(files(PIPELINE.tasks[wildcards.task].egs))


def egs_store_inputs(wildcards):
    """A feature store's data sets: their features and data dirs."""
    sets = feature_stores(PIPELINE)[wildcards.store]
    return {"feats": expand(rules.features.output.scp, name=sets), "data": expand(rules.data.output[0], name=sets)}


def num_pdfs_arg(wildcards):
    n = PIPELINE.tasks[wildcards.task].num_pdfs
    return [f"--num-pdfs={n}"] if n else []


# --- features step


def existing_feats_files(wildcards):
    """The features Kaldi made for a data set: its scp files and the archives they point into."""
    from babelflow.data.sources import feats_files

    return {"existing": list(feats_files(EXISTING[wildcards.name]))}


def feature_conf():
    """The Kaldi conf file named in params: its contents shape the features."""
    conf = PIPELINE.options(FeaturesOptions).config
    return [conf] if conf else []


# --- gmm step


def task_data(wildcards):
    return L.data(PIPELINE.tasks[wildcards.task].data[0])


# --- split step


def task_ali_dir(wildcards):
    ali = PIPELINE.tasks[wildcards.task].ali_dir
    return [f"--ali={ali}"] if ali else []


def phone_eval_args(wildcards):
    """Frame tasks with true alignments at hand (the demo): the phone accuracy against them too."""
    t = PIPELINE.tasks[wildcards.task]
    if not t.ref_ali:
        return []
    return ["--ref-ali", t.ref_ali, "--feats-dir", L.feats(t.data[0]), "--data-dir", L.data(t.data[0])]


# --- train step


def model_args():
    """The network as flags (one --layer per TDNN layer), or the file params.yaml names."""
    return ["--config", MODEL_FILE] if MODEL_FILE else PIPELINE.model_config.to_args()


def train_mpi():
    """Several nodes: the SLURM plugin runs the shell in the batch step (``mpi``), where
    ``babelflow torchrun`` calls srun itself; one node: the plugin's own ``srun -n1`` is enough."""
    return {"mpi": "srun"} if LAUNCH.nnodes > 1 else {}
