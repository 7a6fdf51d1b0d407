# Export (nnet3-am-init + the recomputed priors): a frame task's model as a Kaldi model
# dir, exp/kaldi/<task>/{final.mdl, tree, cmvn_opts, conf/, info/}, ready for steps/nnet3/decode.sh.


rule export_kaldi:
    input:
        model=rules.split.output[0],
        code=step_code("export"),
    output:
        mdl=L.kaldi("{task}", "final.mdl"),
    params:
        model_dir=lambda wc, input: os.path.dirname(input.model),
        out=lambda wc, output: os.path.dirname(output.mdl),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/kaldi/{task}.export.log",
    shell:
        "babelflow export-kaldi --dir {params.model_dir:q} {params.out:q} > {log} 2>&1"
