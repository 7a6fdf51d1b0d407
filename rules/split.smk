# Per-task models (run_tdnn_multilingual.sh stage 12): split the trained network into one
# model per task (head renamed `output`, TransitionModel and tree attached), recompute priors
# for frame tasks (adjust_priors.sh), evaluate on the task's valid egs.
from babelflow.nnet.options import priors_args


rule split:
    input:
        model=rules.train.output.model,
        egs=L.egs("{task}", "info", "num_archives"),  # made by egs or egs_import
        feats=lambda wc: rules.features.output.scp.format(name=PIPELINE.tasks[wc.task].data[0]),
        code=step_code("models"),
    output:
        L.models("{task}", "model.pt"),
    params:
        ali=task_ali_dir,
        feats=lambda wc: L.feats(PIPELINE.tasks[wc.task].data[0]),
        priors=lambda wc: priors_args(PIPELINE, wc.task),
        out=lambda wc, output: os.path.dirname(output[0]),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/models/{task}.split.log",
    shell:
        "babelflow split --task {wildcards.task} {params.ali:q} --feats-dir {params.feats:q} {params.priors:q}"
        " {input.model:q} {params.out:q} > {log} 2>&1"


rule eval:
    input:
        model=rules.split.output[0],
        ref=lambda wc: [PIPELINE.tasks[wc.task].ref_ali] if PIPELINE.tasks[wc.task].ref_ali else [],
        feats=lambda wc: rules.features.output.scp.format(name=PIPELINE.tasks[wc.task].data[0]),
        code=step_code("models"),
    output:
        report(
            directory(L.models("{task}", "eval")),
            patterns=["{plot}.png"],
            caption="../workflow/report/confusion.rst",
            category="Per-task models",
            subcategory="{task}",
        ),
    params:
        dir=lambda wc, input: os.path.dirname(input.model),
        phones=phone_eval_args,
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/models/{task}.eval.log",
    shell:
        "babelflow eval {params.phones:q} {params.dir:q} > {log} 2>&1"


rule metrics:
    input:
        evals=expand(rules.eval.output[0], task=PIPELINE.tasks),
        code=step_code("models"),
    output:
        L.model_metrics(),
    params:
        dirs=[L.models(t) for t in PIPELINE.tasks],
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/models/metrics.log",
    shell:
        "babelflow eval --collect {output:q} {params.dirs:q} > {log} 2>&1"
