# Training step (steps/nnet3/train_raw_dnn.py on multilingual egs): one shared trunk,
# one head per task (output-<i>). nproc > 1 runs torchrun (gloo on CPU, nccl on GPU); in a
# SLURM job `babelflow torchrun` starts one torchrun per node through srun.


rule model_config:
    input:
        code=step_code("train"),
    output:
        f"{W}/train/model.yaml",
    params:
        model=json.dumps(config["model"], sort_keys=True),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/model_config.log",
    shell:
        "babelflow model-config --json '{params.model}' {output} > {log} 2>&1"


rule train:
    input:
        merged=f"{W}/merged",
        model=f"{W}/train/model.yaml",
        init=train_init,
        code=step_code("train"),
    output:
        model=f"{W}/train/final.pt",
        metrics=f"{W}/train/metrics.json",
        log=f"{W}/train/train_log.tsv",
        diagnostics=f"{W}/train/diagnostics.tsv",
        curves=report(f"{W}/train/curves.png", caption="../workflow/report/curves.rst", category="Training"),
        tables=directory(f"{W}/train/curves"),
        info=directory(f"{W}/train/info"),
    params:
        launcher=train_launcher(),
        args=PIPELINE.train_args(),
        out=lambda wc, output: os.path.dirname(output.model),
    threads: local_cores()
    resources:
        train_slots=1,
        nodes=config["train"]["nnodes"],
        tasks=config["train"]["nnodes"],  # one launcher per node (babelflow torchrun)
        **train_mpi(),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/train.log",
    shell:
        "{params.launcher} train --fresh-on-config-change --model-config {input.model} {params.args}"
        " {input.merged} {params.out} > {log} 2>&1"
