# Shared helpers for the rule files.

import json
import os

from babelflow.steps import code_files


wildcard_constraints:
    name="[A-Za-z0-9][A-Za-z0-9_.+-]*",
    job="[0-9]+",
    archive="[0-9]+",


def step_code(step):
    """The step's modules, as inputs: Snakemake does not see code called from shell:."""
    return code_files(step, workflow.basedir)


def data_source(wildcards):
    """The Kaldi data dir behind a data set (the demo rule makes the demo's)."""
    return DATASETS[wildcards.name]


# --- egs step


def egs_job_inputs(wildcards):
    task = PIPELINE.tasks[wildcards.task]
    ins = {
        "feats": [f"{W}/feats/{s}/feats.scp" for s in task.data],
        "data": [f"{W}/data/{s}" for s in task.data],
    }
    if task.kind == "frame":
        ins["ali"] = f"{W}/egs/{wildcards.task}/ali_pdf.scp"
    if task.ivectors:
        ins["ivectors"] = list(task.ivectors.values())
    ins["code"] = step_code("egs")
    return ins


def egs_archives(wildcards):
    n = NJ  # archive J = features job J of every data set of the task
    return expand(f"{W}/egs/{wildcards.task}/egs.{{a}}.index", a=range(1, n + 1))


def frame_task_ali(wildcards):
    ali = PIPELINE.tasks[wildcards.task].ali
    return [ali] if ":" not in ali else []


# --- train step


def train_init(wildcards):
    init = config["train"].get("init")
    return [init] if init else []


def train_mpi():
    """Several nodes: the SLURM plugin runs the shell in the batch step (``mpi``), where
    ``babelflow torchrun`` calls srun itself; one node: the plugin's own ``srun -n1`` is enough."""
    return {"mpi": "srun"} if config["train"]["nnodes"] > 1 else {}


def local_cores():
    """Every core of a local run; on a cluster (no --cores) the profile's set-threads decides."""
    return workflow._cores or 1


def train_launcher():
    """torchrun with train.nproc processes per node; under SLURM, srun + torchrun per node."""
    return f"babelflow torchrun --nproc-per-node {config['train']['nproc']} --"


# --- split step


def priors_command(task):
    """`&& babelflow priors ...` for frame tasks (adjust_priors.sh); nothing for utterance tasks."""
    if PIPELINE.tasks[task].kind != "frame":
        return ""
    p = config["priors"]
    return (
        f"&& babelflow priors --method={p['method']} --num-egs={p['num_egs']}"
        f" --floor={p['floor']} --seed={p['seed']} {W}/models/{task}"
    )


def frame_tasks():
    return [t for t, spec in PIPELINE.tasks.items() if spec.kind == "frame"]
