# Merge step (steps/nnet3/multilingual/combine_egs.sh): every task's egs -> one
# multi-task schedule of single-task blocks, with the task weights. No data is copied.


rule merge:
    input:
        egs=expand(f"{W}/egs/{{task}}/info/num_archives", task=PIPELINE.tasks),
        code=step_code("merge"),
    output:
        directory(f"{W}/merged"),
    params:
        args=PIPELINE.merge_args(),
        egs=" ".join(f"{W}/egs/{t}" for t in PIPELINE.tasks),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/merge.log",
    shell:
        "babelflow merge {params.args} {params.egs} {output} > {log} 2>&1"
