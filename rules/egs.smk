# Egs step (steps/nnet3/get_egs.sh), per task: frame targets once (ali-to-pdf),
# one job per archive = (data set, features job), then a finalize that writes info/.
from babelflow.egs.options import task_args


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
    ins["code"] = step_code("egs")
    return ins


def num_pdfs_arg(wildcards):
    n = PIPELINE.tasks[wildcards.task].num_pdfs
    return [f"--num-pdfs={n}"] if n else []


rule egs_ali:
    input:
        ali=egs_ali_source,
        code=step_code("egs"),
    output:
        ark=L.egs("{task}", "ali_pdf.ark"),
        scp=L.egs("{task}", "ali_pdf.scp"),
        num_pdfs=L.egs("{task}", "num_pdfs"),
    params:
        source=lambda wc: PIPELINE.tasks[wc.task].ali,
        num_pdfs=num_pdfs_arg,
        out=L.egs("{task}"),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/egs/{task}.ali.log",
    shell:
        "babelflow egs ali {params.num_pdfs:q} {params.source:q} {params.out:q} > {log} 2>&1"


rule egs_job:
    input:
        unpack(egs_job_inputs),
    output:
        index=L.egs("{task}", "egs.{archive}.index"),
        report=L.egs("{task}", "report.{archive}.json"),
    params:
        args=lambda wc: task_args(PIPELINE, wc.task),
        out=L.egs("{task}"),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/egs/{task}.{archive}.log",
    shell:
        "babelflow egs job --archive {wildcards.archive} {params.args:q} {params.out:q} > {log} 2>&1"


rule egs:
    input:
        # archive J = features job J of every data set of the task
        archives=expand(rules.egs_job.output.index, archive=range(1, NJ + 1), allow_missing=True),
        code=step_code("egs"),
    output:
        num_archives=L.egs("{task}", "info", "num_archives"),
        report=L.egs("{task}", "report.tsv"),
    params:
        args=lambda wc: task_args(PIPELINE, wc.task),
        out=L.egs("{task}"),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/egs/{task}.log",
    shell:
        "babelflow egs finalize {params.args:q} {params.out:q} > {log} 2>&1"
