# Demo corpus: espeak-ng speech with true phone timings, one job per language.


rule demo_corpus:
    input:
        code=step_code("corpus"),
    output:
        data=directory("corpus/{lang}/data"),
        ali=directory("corpus/{lang}/ali"),
        wav=directory("corpus/{lang}/wav"),
    params:
        langs=",".join(f"{k}={v}" for k, v in config["demo"]["langs"].items()),
        voices=",".join(config["demo"]["voices"]),
        utts=PIPELINE.config["demo"]["utts_per_lang"],
        seed=config["demo"]["seed"],
        ali_jobs=config["demo"]["ali_jobs"],
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/demo/{lang}.log",
    shell:
        "babelflow demo-corpus --out corpus --lang {wildcards.lang} --langs {params.langs}"
        " --voices {params.voices} --utts-per-lang {params.utts} --seed {params.seed}"
        " --ali-jobs {params.ali_jobs} > {log} 2>&1"
