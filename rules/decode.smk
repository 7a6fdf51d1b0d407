# Decoding (Kaldi's decode_lang_list + utils/mkgraph.sh + steps/nnet3/decode.sh + local/score.sh) of each task in
# decode.tasks: an LM from the task's training text, a lang dir with the model's phone ids, HCLG, then the task's
# test set decoded with the split model (log-likelihoods = log-posteriors - log priors) and, with decode.gmm, with
# the task's GMM (the one its ali: auto alignments came from, else one trained for it): the classic hybrid baseline.
from babelflow.decode.options import DecodeOptions, decoded_tasks
from babelflow.gmm.options import GmmOptions, LangOptions

DECODE = PIPELINE.options(DecodeOptions)
DECODED = decoded_tasks(PIPELINE)
GMM_DECODED = [t for t in DECODED if DECODE.gmm]  # babelflow.gmm.options.gmm_tasks trains their GMMs
GMM_STAGE = PIPELINE.options(GmmOptions).use


rule decode_lm:
    input:
        data=lambda wc: L.data(PIPELINE.tasks[wc.task].data[0]),
        code=step_code("decode"),
    output:
        L.decode("{task}", "lm.arpa"),
    params:
        order=DECODE.lm_order,
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/decode/{task}.lm.log",
    shell:
        "babelflow make-lm --order {params.order} {input.data:q}/text {output:q} > {log} 2>&1"


rule decode_lang:
    input:
        lexicon=lambda wc: PIPELINE.tasks[wc.task].lexicon,
        model=rules.split.output[0],
        code=step_code("decode"),
    output:
        directory(L.decode("{task}", "lang")),
    params:
        opts=options(LangOptions),
        phones=lambda wc, input: os.path.join(os.path.dirname(input.model), "phones.txt"),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/decode/{task}.lang.log",
    shell:
        "babelflow prepare-lang --add-oov --phone-symbols {params.phones:q} {params.opts:q} {input.lexicon:q} {output:q}"
        " > {log} 2>&1"


rule decode_graph:
    input:
        lang=lambda wc: (
            L.gmm(wc.task, "lang") if PIPELINE.tasks[wc.task].auto_ali else L.decode(wc.task, "lang")
        ),
        lm=rules.decode_lm.output[0],
        model=rules.split.output[0],
        code=step_code("decode"),
    output:
        directory(L.decode("{task}", "graph")),
    params:
        model_dir=lambda wc, input: os.path.dirname(input.model),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/decode/{task}.graph.log",
    shell:
        "babelflow mkgraph --self-loop-scale 0.1 {input.lang:q} {input.lm:q} {params.model_dir:q} {output:q}"
        " > {log} 2>&1"


rule decode_nnet:
    input:
        graph=rules.decode_graph.output[0],
        model=rules.split.output[0],
        data=lambda wc: L.data(PIPELINE.tasks[wc.task].test),
        code=step_code("decode"),
    output:
        directory(L.decode("{task}", "decode_test")),
    params:
        opts=options(DecodeOptions),
        nj=NJ,
        model_dir=lambda wc, input: os.path.dirname(input.model),
    threads: local_cores()
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/decode/{task}.decode.log",
    shell:
        "babelflow decode --nj {params.nj} {params.opts:q} {input.graph:q} {params.model_dir:q} {input.data:q}"
        " {output:q} > {log} 2>&1"


rule decode_graph_gmm:
    input:
        lang=L.gmm("{task}", "lang"),
        lm=rules.decode_lm.output[0],
        model=L.gmm("{task}", GMM_STAGE),
        code=step_code("decode"),
    output:
        directory(L.decode("{task}", "graph_gmm")),
    params:
        stage=GMM_STAGE,  # gmm.use: which GMM the baseline is
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/decode/{task}.graph_gmm.log",
    shell:
        "babelflow mkgraph --self-loop-scale 0.1 {input.lang:q} {input.lm:q} {input.model:q} {output:q} > {log} 2>&1"


rule decode_gmm:
    input:
        graph=rules.decode_graph_gmm.output[0],
        model=L.gmm("{task}", GMM_STAGE),
        data=lambda wc: L.data(PIPELINE.tasks[wc.task].test),
        code=step_code("decode"),
    output:
        directory(L.decode("{task}", "decode_gmm_test")),
    params:
        opts=options(DecodeOptions),
        nj=NJ,
        stage=GMM_STAGE,
    threads: local_cores()
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/decode/{task}.decode_gmm.log",
    shell:
        "babelflow decode --nj {params.nj} {params.opts:q} {input.graph:q} {input.model:q} {input.data:q}"
        " {output:q} > {log} 2>&1"


rule decode_metrics:
    input:
        nnet=expand(rules.decode_nnet.output[0], task=DECODED),
        gmm=expand(rules.decode_gmm.output[0], task=GMM_DECODED),
        code=step_code("decode"),
    output:
        metrics=L.decode_metrics(),
        table=L.decode_metrics().replace(".json", ".tsv"),
    params:
        results=[f"{t}.wer={L.decode(t, 'decode_test')}" for t in DECODED]
        + [f"{t}.gmm_wer={L.decode(t, 'decode_gmm_test')}" for t in GMM_DECODED],
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/decode/metrics.log",
    shell:
        "babelflow decode-metrics {output.metrics:q} {params.results:q} > {log} 2>&1"
