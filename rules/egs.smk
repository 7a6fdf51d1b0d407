# Egs step (steps/nnet3/get_egs.sh), per task: frame targets once (ali-to-pdf),
# one job per archive = (data set, features job), then a finalize that writes info/.


rule egs_ali:
    input:
        ali=frame_task_ali,
        code=step_code("egs"),
    output:
        ark=f"{W}/egs/{{task}}/ali_pdf.ark",
        scp=f"{W}/egs/{{task}}/ali_pdf.scp",
        num_pdfs=f"{W}/egs/{{task}}/num_pdfs",
    params:
        source=lambda wc: PIPELINE.tasks[wc.task].ali,
        num_pdfs=lambda wc: (
            f"--num-pdfs={PIPELINE.tasks[wc.task].num_pdfs}"
            if PIPELINE.tasks[wc.task].num_pdfs
            else ""
        ),
        out=lambda wc: f"{W}/egs/{wc.task}",
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/egs/{task}.ali.log",
    shell:
        "babelflow egs ali {params.num_pdfs} '{params.source}' {params.out} > {log} 2>&1"


rule egs_job:
    input:
        unpack(egs_job_inputs),
    output:
        index=f"{W}/egs/{{task}}/egs.{{archive}}.index",
        report=f"{W}/egs/{{task}}/report.{{archive}}.json",
    params:
        args=lambda wc: PIPELINE.egs_args(wc.task),
        out=lambda wc: f"{W}/egs/{wc.task}",
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/egs/{task}.{archive}.log",
    shell:
        "babelflow egs job --archive {wildcards.archive} {params.args} {params.out} > {log} 2>&1"


rule egs:
    input:
        archives=egs_archives,
        code=step_code("egs"),
    output:
        num_archives=f"{W}/egs/{{task}}/info/num_archives",
        report=f"{W}/egs/{{task}}/report.tsv",
    params:
        args=lambda wc: PIPELINE.egs_args(wc.task),
        out=lambda wc: f"{W}/egs/{wc.task}",
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/egs/{task}.log",
    shell:
        "babelflow egs finalize {params.args} {params.out} > {log} 2>&1"
