# Demo corpus: espeak-ng speech with true phone timings (data/, ali/, wav/) and a lexicon (dict/),
# one job per language.
from babelflow.demo.options import DemoOptions
from babelflow.layout import corpus

DEMO = PIPELINE.options(DemoOptions)


rule demo_corpus:
    input:
        code=step_code("corpus"),
    output:
        data=directory(corpus("{lang}", "data")),
        ali=directory(corpus("{lang}", "ali")),
        wav=directory(corpus("{lang}", "wav")),
        lexicon=corpus("{lang}", "dict", "lexicon.txt"),
        test=directory(corpus("{lang}", "test")) if DEMO.test_utts_per_lang else [],
    params:
        opts=DEMO.to_args(),
        root=lambda wc, output: os.path.dirname(os.path.dirname(output.data)),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/demo/{lang}.log",
    shell:
        "babelflow demo-corpus --out {params.root:q} --lang {wildcards.lang} {params.opts:q} > {log} 2>&1"
