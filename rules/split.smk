# Per-task models (run_tdnn_multilingual.sh stage 12): split the trained network into one
# model per task (head renamed `output`, TransitionModel attached), recompute priors
# (adjust_priors.sh), evaluate on the task's valid egs.


rule split:
    input:
        model=f"{W}/train/final.pt",
        egs=f"{W}/egs/{{task}}/info/num_archives",
        feats=lambda wc: f"{W}/feats/{PIPELINE.tasks[wc.task].data[0]}/feats.scp",
        code=step_code("models"),
    output:
        f"{W}/models/{{task}}/model.pt",
    params:
        ali=lambda wc: (
            f"--ali={PIPELINE.tasks[wc.task].ali}"
            if PIPELINE.tasks[wc.task].kind == "frame"
            and ":" not in PIPELINE.tasks[wc.task].ali
            else ""
        ),
        feats=lambda wc, input: os.path.dirname(input.feats),
        out=lambda wc, output: os.path.dirname(output[0]),
        priors=lambda wc: priors_command(wc.task),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/models/{task}.split.log",
    shell:
        "(babelflow split --task {wildcards.task} {params.ali} --feats-dir {params.feats}"
        " {input.model} {params.out} {params.priors}) > {log} 2>&1"


rule eval:
    input:
        model=f"{W}/models/{{task}}/model.pt",
        code=step_code("models"),
    output:
        report(
            directory(f"{W}/models/{{task}}/eval"),
            patterns=["{plot}.png"],
            caption="../workflow/report/confusion.rst",
            category="Per-task models",
            subcategory="{task}",
        ),
    params:
        out=lambda wc, input: os.path.dirname(input.model),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/models/{task}.eval.log",
    shell:
        "babelflow eval {params.out} > {log} 2>&1"


rule metrics:
    input:
        evals=expand(f"{W}/models/{{task}}/eval", task=PIPELINE.tasks),
        code=step_code("models"),
    output:
        f"{W}/models/metrics.json",
    params:
        dirs=" ".join(f"{W}/models/{t}" for t in PIPELINE.tasks),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/models/metrics.log",
    shell:
        "babelflow eval --collect {output} {params.dirs} > {log} 2>&1"
