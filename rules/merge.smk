# Merge step (steps/nnet3/multilingual/combine_egs.sh): every task's egs -> one
# multi-task schedule of single-task blocks, with the task weights. No data is copied.
from babelflow.merge import MergeOptions
from babelflow.merge import task_args as merge_args

LOCAL_CONF = PIPELINE.options(MergeOptions).local_conf


rule merge:
    input:
        egs=expand(rules.egs.output.num_archives, task=PIPELINE.tasks),
        local_conf=[LOCAL_CONF] if LOCAL_CONF else [],  # the weights' source of truth when given
        code=step_code("merge"),
    output:
        directory(L.merged()),
    params:
        args=merge_args(PIPELINE),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/merge.log",
    shell:
        "babelflow merge {params.args:q} {output:q} > {log} 2>&1"
