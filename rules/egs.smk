# Egs step (steps/nnet3/get_egs.sh), per task: frame targets once (ali-to-pdf),
# one job per archive = (data set, features job), then a finalize that writes info/.
# Utterance tasks over the same data sets index into one feature store (egs_store).
from babelflow.egs.options import STORE_DIR, EgsOptions, store_args, task_args


wildcard_constraints:
    store="[A-Za-z0-9][A-Za-z0-9_.+-]*",


rule egs_store:
    input:
        unpack(egs_store_inputs),
        code=step_code("egs"),
    output:
        feats=L.egs(STORE_DIR, "{store}", "store.feats"),
        segments=L.egs(STORE_DIR, "{store}", "store.segments"),
        num_rows=L.egs(STORE_DIR, "{store}", "info", "num_rows"),
    params:
        args=lambda wc: store_args(PIPELINE, wc.store),
        out=lambda wc, output: os.path.dirname(output.feats),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/egs/_store/{store}.log",
    shell:
        "babelflow egs store {params.args:q} {params.out:q} > {log} 2>&1"


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
        out=lambda wc, output: os.path.dirname(output.scp),
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
        out=lambda wc, output: os.path.dirname(output.index),
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
        model=[config["model"]["config"]] if config["model"].get("config") else [],
        code=step_code("egs"),
    output:
        num_archives=L.egs("{task}", "info", "num_archives"),
        report=L.egs("{task}", "report.tsv"),
    params:
        args=lambda wc: task_args(PIPELINE, wc.task),
        out=lambda wc, output: os.path.dirname(output.report),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/egs/{task}.log",
    shell:
        "babelflow egs finalize {params.args:q} {params.out:q} > {log} 2>&1"


# Egs Kaldi already made (tasks.<t>.egs: a get_egs.sh dir): imported, then merged like any other task.
IMPORTED_EGS = {name: t.egs for name, t in PIPELINE.tasks.items() if t.egs}


ruleorder: egs_import > egs


rule egs_import:
    input:
        egs=kaldi_egs_files,
        ali=lambda wc: os.path.join(PIPELINE.tasks[wc.task].ali_dir, "final.mdl"),
        code=step_code("egs"),
    output:
        num_archives=L.egs("{task}", "info", "num_archives"),
        report=L.egs("{task}", "report.tsv"),
    params:
        source=lambda wc: IMPORTED_EGS[wc.task],
        ali=lambda wc: PIPELINE.tasks[wc.task].ali_dir,
        dtype=lambda wc: PIPELINE.options(EgsOptions).dtype,
        out=lambda wc, output: os.path.dirname(output.report),
    wildcard_constraints:
        task="|".join(re.escape(n) for n in IMPORTED_EGS) or "(?!)",
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/egs/{task}.import.log",
    shell:
        "babelflow egs import-kaldi --task {wildcards.task} --dtype {params.dtype} --ali-dir {params.ali:q}"
        " {params.source:q} {params.out:q} > {log} 2>&1"
