# GMM alignments from scratch for frame tasks with `ali: auto` (utils/prepare_lang.sh, steps/train_mono.sh,
# steps/train_deltas.sh, steps/align_si.sh): lexicon -> lang dir -> mono -> mono_ali -> tri -> tri_ali, per task.
# With true alignments at hand (the demo), each stage's alignments are scored against them.
from babelflow.gmm.options import STAGES, AlignOptions, LangOptions, MonoOptions, TriOptions

SCORED = [t.name for t in PIPELINE.tasks.values() if t.auto_ali and t.ref_ali]


rule gmm_lang:
    input:
        lexicon=lambda wc: PIPELINE.tasks[wc.task].lexicon,
        code=step_code("gmm"),
    output:
        directory(L.gmm("{task}", "lang")),
    params:
        opts=options(LangOptions),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/gmm/{task}.lang.log",
    shell:
        "babelflow prepare-lang --add-oov {params.opts:q} {input.lexicon:q} {output:q} > {log} 2>&1"


rule gmm_mono:
    input:
        data=task_data,
        lang=rules.gmm_lang.output[0],
        mfcc_conf=[c for c in [PIPELINE.options(MonoOptions).mfcc_config] if c],
        code=step_code("gmm"),
    output:
        directory(L.gmm("{task}", "mono")),
    params:
        opts=options(MonoOptions),
        nj=NJ,
    threads: local_cores()
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/gmm/{task}.mono.log",
    shell:
        "babelflow train-gmm mono --quiet --nj {params.nj} {params.opts:q} {input.data:q} {input.lang:q} {output:q} > {log} 2>&1"


rule gmm_tri:
    input:
        data=task_data,
        lang=rules.gmm_lang.output[0],
        ali=L.gmm("{task}", "mono_ali"),
        code=step_code("gmm"),
    output:
        directory(L.gmm("{task}", "tri")),
    params:
        opts=options(TriOptions),
        nj=NJ,
    threads: local_cores()
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/gmm/{task}.tri.log",
    shell:
        "babelflow train-gmm tri --quiet --nj {params.nj} {params.opts:q} {input.data:q} {input.lang:q} {input.ali:q} {output:q}"
        " > {log} 2>&1"


rule gmm_align:
    input:
        data=task_data,
        lang=rules.gmm_lang.output[0],
        model=L.gmm("{task}", "{stage}"),
        code=step_code("gmm"),
    output:
        directory(L.gmm("{task}", "{stage}_ali")),
    params:
        opts=options(AlignOptions),
        nj=NJ,
    wildcard_constraints:
        stage="|".join(STAGES),
    threads: local_cores()
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/gmm/{task}.{stage}_ali.log",
    shell:
        "babelflow align-gmm --quiet --nj {params.nj} {params.opts:q} {input.data:q} {input.lang:q} {input.model:q} {output:q}"
        " > {log} 2>&1"


rule gmm_compare:
    input:
        ref=lambda wc: PIPELINE.tasks[wc.task].ref_ali,
        hyp=rules.gmm_align.output[0],
        code=step_code("gmm"),
    output:
        L.gmm("{task}", "{stage}_ali.compare.json"),
    wildcard_constraints:
        stage="|".join(STAGES),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/gmm/{task}.{stage}_ali.compare.log",
    shell:
        "babelflow ali-compare --out {output:q} {input.ref:q} {input.hyp:q} > {log} 2>&1"


rule gmm_metrics:
    input:
        expand(rules.gmm_compare.output[0], task=SCORED, stage=STAGES),
    output:
        L.gmm_metrics(),
    params:
        results=[f"{t}.{s}={L.gmm(t, f'{s}_ali.compare.json')}" for t in SCORED for s in STAGES],
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/gmm/metrics.log",
    shell:
        "babelflow ali-compare --collect {output:q} {params.results:q} > {log} 2>&1"
