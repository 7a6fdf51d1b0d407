# babelflow: Kaldi's multilingual nnet3 recipe as a Snakemake workflow.
# params.yaml is both this workflow's config and DVC's params file.
from snakemake.utils import min_version

from babelflow.config import key_lines, load_params, resolve_config, rooted_paths, validate_schema
from babelflow.errors import BabelflowError
from babelflow.smk import mark_checkout_fresh

min_version("9.0")


report: "workflow/report/workflow.rst"


configfile: "params.yaml"


# Validated against the schema (it ships inside the package; workflow/schemas/ links to it), every
# default filled in: a params.yaml may hold only the keys it changes.
try:
    for f in workflow.configfiles:  # e.g. a task declared twice: YAML alone keeps the last
        load_params(f)
    lines = key_lines(workflow.configfiles[-1]) if workflow.configfiles else {}
    config.update(validate_schema(config, lines=lines))
    config.update(rooted_paths(config))  # data.root: the user's relative paths, as every rule reads them
    PIPELINE = resolve_config(config)
except BabelflowError as e:
    raise ValueError(str(e)) from None

# A fresh clone after `dvc pull`: what DVC restored is current, whatever order it wrote it in.
mark_checkout_fresh()

L = PIPELINE.layout  # every path below comes from babelflow.layout
NJ = config["data"]["nj"]
DATASETS = PIPELINE.datasets


# Bookkeeping steps that only write a few small files run on the submit host (a queue round
# trip each would cost more than they do).
localrules:
    all,
    gmm_compare,
    gmm_metrics,
    decode_metrics,
    lowres_metrics,
    egs,
    merge,
    model_config,
    metrics,


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/data.smk"
include: "rules/gmm.smk"
include: "rules/features.smk"
include: "rules/egs.smk"
include: "rules/merge.smk"
include: "rules/train.smk"
include: "rules/split.smk"
include: "rules/export.smk"
include: "rules/decode.smk"
include: "rules/lowres.smk"


rule all:
    default_target: True
    input:
        rules.metrics.output[0],
        expand(rules.export_kaldi.output.mdl, task=PIPELINE.frame_tasks()),
        [rules.gmm_metrics.output[0]] if SCORED else [],
        [rules.decode_metrics.output.metrics] if DECODED else [],
        [rules.lowres_metrics.output.metrics] if LOWRES else [],
