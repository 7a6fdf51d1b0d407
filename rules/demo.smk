# Demo corpus: espeak-ng speech with true phone timings (data/, ali/, wav/) and a lexicon (dict/),
# one job per language.
from babelflow.demo.options import DemoOptions
from babelflow.layout import corpus


rule demo_corpus:
    input:
        code=step_code("corpus"),
    output:
        data=directory(corpus("{lang}", "data")),
        ali=directory(corpus("{lang}", "ali")),
        wav=directory(corpus("{lang}", "wav")),
        dict=directory(corpus("{lang}", "dict")),
    params:
        opts=options(DemoOptions),
        root=corpus(""),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/demo/{lang}.log",
    shell:
        "babelflow demo-corpus --out {params.root:q} --lang {wildcards.lang} {params.opts:q} > {log} 2>&1"
