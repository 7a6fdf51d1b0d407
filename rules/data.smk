# Data step (utils/validate_data_dir.sh + utils/split_data.sh):
# a Kaldi data dir -> a validated copy with split<nj>/ and info/.


rule data:
    input:
        src=data_source,
        code=step_code("data"),
    output:
        directory(f"{W}/data/{{name}}"),
    params:
        nj=NJ,
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/data/{name}.log",
    shell:
        "babelflow data --nj {params.nj} {input.src} {output} > {log} 2>&1"
