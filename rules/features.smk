# Features step (make_fbank.sh / make_mfcc.sh + compute_cmvn_stats.sh):
# one job per (data set, split), then a merge that writes feats.scp and cmvn.scp.


rule features_job:
    input:
        data=f"{W}/data/{{name}}",
        code=step_code("features"),
    output:
        ark=f"{W}/feats/{{name}}/raw_{FEAT_TYPE}.{{job}}.ark",
        scp=f"{W}/feats/{{name}}/raw_{FEAT_TYPE}.{{job}}.scp",
        frames=f"{W}/feats/{{name}}/utt2num_frames.{{job}}",
    params:
        opts=PIPELINE.feature_args(),
        nj=NJ,
        out=lambda wc: f"{W}/feats/{wc.name}",
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/features/{name}.{job}.log",
    shell:
        "babelflow features {params.opts} --nj {params.nj} --job {wildcards.job}"
        " {input.data} {params.out} > {log} 2>&1"


rule features:
    input:
        data=f"{W}/data/{{name}}",
        jobs=expand(
            f"{W}/feats/{{{{name}}}}/raw_{FEAT_TYPE}.{{job}}.scp", job=range(1, NJ + 1)
        ),
        code=step_code("features"),
    output:
        scp=f"{W}/feats/{{name}}/feats.scp",
        frames=f"{W}/feats/{{name}}/utt2num_frames",
        cmvn=f"{W}/feats/{{name}}/cmvn.scp",
        cmvn_ark=f"{W}/feats/{{name}}/cmvn.ark",
        cmvn_opts=f"{W}/feats/{{name}}/cmvn_opts",
        dim=f"{W}/feats/{{name}}/info/feat_dim",
    params:
        opts=PIPELINE.feature_args(),
        cmvn_opts=config["features"]["cmvn_opts"],
        nj=NJ,
        out=lambda wc: f"{W}/feats/{wc.name}",
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/features/{name}.log",
    shell:
        "babelflow features {params.opts} --nj {params.nj} --cmvn-opts='{params.cmvn_opts}'"
        " {input.data} {params.out} > {log} 2>&1"
