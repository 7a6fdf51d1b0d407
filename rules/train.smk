# Training step (steps/nnet3/train_raw_dnn.py on multilingual egs): one shared trunk,
# one head per task (output-<i>). nproc > 1 runs torchrun (gloo on CPU, nccl on GPU); in a
# SLURM job `babelflow torchrun` starts one torchrun per node through srun.
from babelflow.nnet.options import LaunchOptions, TrainOptions

LAUNCH = PIPELINE.options(LaunchOptions)
TRAIN = PIPELINE.options(TrainOptions)
MODEL_FILE = config["model"].get("config")


rule model_config:
    input:
        model=[MODEL_FILE] if MODEL_FILE else [],
        code=step_code("train"),
    output:
        L.train("model.yaml"),
    params:
        model=model_args(),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/model_config.log",
    shell:
        "babelflow model-config {params.model:q} {output:q} > {log} 2>&1"


rule train:
    input:
        merged=rules.merge.output[0],
        model=rules.model_config.output[0],
        init=[TRAIN.init] if TRAIN.init else [],
        code=step_code("train"),
    output:
        model=L.train("final.pt"),
        metrics=L.train("metrics.json"),
        log=L.train("train_log.tsv"),
        diagnostics=L.train("diagnostics.tsv"),
        curves=report(L.train("curves.png"), caption="../workflow/report/curves.rst", category="Training"),
        tables=directory(L.train("curves")),
        info=directory(L.train("info")),
    params:
        nproc=LAUNCH.nproc,
        args=TRAIN.to_args(),
        out=lambda wc, output: os.path.dirname(output.model),
    threads: local_cores()
    resources:
        train_slots=1,
        nodes=LAUNCH.nnodes,
        tasks=LAUNCH.nnodes,  # one launcher per node (babelflow torchrun)
        **train_mpi(),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/train.log",
    shell:
        "babelflow torchrun --nproc-per-node {params.nproc} -- train --fresh-on-config-change"
        " --model-config {input.model:q} {params.args:q} {input.merged:q} {params.out:q} > {log} 2>&1"
