# Data step (utils/validate_data_dir.sh + utils/split_data.sh):
# a Kaldi data dir -> a validated copy with split<nj>/ and info/.
from babelflow.data.options import DataOptions


rule data:
    input:
        unpack(data_files),
        src=data_source,
        code=step_code("data"),
    output:
        directory(L.data("{name}")),
    params:
        opts=options(DataOptions, exclude=("root",) if PIPELINE.demo else ()),  # the demo's paths are its own
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/data/{name}.log",
    shell:
        "babelflow data {params.opts:q} {input.src:q} {output:q} > {log} 2>&1"
