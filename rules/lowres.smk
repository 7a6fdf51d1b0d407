# The multilingual gain on low-resource targets (lowres.tasks; the demo's demo.low_resource languages), as
# babelflow.lowres defines it: mono (the target's blocks of the merged egs alone) and multi_frozen (the target's head
# on the frozen trunk of multi_base, a run without the targets) trained as the main run is, split, decoded on the
# target's graph, and tabled beside the main multilingual model (multi) and the GMM (gmm): exp/decode/lowres.*
from babelflow.lowres import DECODED as LOWRES_SYSTEMS
from babelflow.lowres import TRAINED as LOWRES_TRAINED
from babelflow.lowres import decode_dirs, lowres_tasks, system_train_options

LOWRES = lowres_tasks(PIPELINE)


wildcard_constraints:
    system="|".join(LOWRES_TRAINED),


use rule train as lowres_train with:
    input:
        merged=rules.merge.output[0],
        model=rules.model_config.output[0],
        init=lambda wc: [L.lowres("multi_base", "train", "final.pt")] if wc.system == "multi_frozen" else [],
        code=step_code("lowres"),
    output:
        model=L.lowres("{system}", "train", "final.pt"),
        metrics=L.lowres("{system}", "train", "metrics.json"),
        log=L.lowres("{system}", "train", "train_log.tsv"),
        diagnostics=L.lowres("{system}", "train", "diagnostics.tsv"),
        curves=L.lowres("{system}", "train", "curves.png"),
        tables=directory(L.lowres("{system}", "train", "curves")),
        info=directory(L.lowres("{system}", "train", "info")),
    params:
        nproc=LAUNCH.nproc,
        args=lambda wc, input: system_train_options(PIPELINE, wc.system, (input.init or [None])[0]).to_args(),
        out=lambda wc, output: os.path.dirname(output.model),
    log:
        "logs/lowres/{system}.train.log",


use rule split as lowres_split with:
    input:
        model=L.lowres("{system}", "train", "final.pt"),
        egs=L.egs("{task}", "info", "num_archives"),  # made by egs or egs_import
        feats=lambda wc: rules.features.output.scp.format(name=PIPELINE.tasks[wc.task].data[0]),
        code=step_code("lowres"),
    output:
        L.lowres("{system}", "models", "{task}", "model.pt"),
    log:
        "logs/lowres/{system}.{task}.split.log",


use rule decode_nnet as lowres_decode with:
    input:
        graph=rules.decode_graph.output[0],
        model=L.lowres("{system}", "models", "{task}", "model.pt"),
        data=lambda wc: L.data(PIPELINE.tasks[wc.task].test),
        code=step_code("lowres"),
    output:
        directory(L.lowres("{system}", "decode", "{task}")),
    log:
        "logs/lowres/{system}.{task}.decode.log",


rule lowres_metrics:
    input:
        decodes=[d for _, _, d in decode_dirs(PIPELINE, L)],
        code=step_code("lowres"),
    output:
        metrics=L.lowres_metrics(),
        table=L.lowres_metrics().replace(".json", ".tsv"),
        plot=report(L.lowres_metrics().replace(".json", ".png"), caption="../workflow/report/lowres.rst",
                    category="Decoding"),
    params:
        results=[f"{t}.{s}={d}" for t, s, d in decode_dirs(PIPELINE, L)],
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/lowres/metrics.log",
    shell:
        "babelflow decode-metrics --plot {output.plot:q} {output.metrics:q} {params.results:q} > {log} 2>&1"
