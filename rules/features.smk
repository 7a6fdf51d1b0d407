# Features step (make_fbank.sh / make_mfcc.sh + compute_cmvn_stats.sh):
# one job per (data set, split), then a merge that writes feats.scp and cmvn.scp.
from babelflow.features import FeaturesOptions

FEAT_TYPE = PIPELINE.options(FeaturesOptions).type
EXISTING = PIPELINE.options(FeaturesOptions).existing  # data set -> features Kaldi made: adopted


rule features_job:
    input:
        data=rules.data.output[0],
        conf=feature_conf(),
        code=step_code("features"),
    output:
        ark=L.feats("{name}", f"raw_{FEAT_TYPE}.{{job}}.ark"),
        scp=L.feats("{name}", f"raw_{FEAT_TYPE}.{{job}}.scp"),
        frames=L.feats("{name}", "utt2num_frames.{job}"),
        skipped=L.feats("{name}", "skipped.{job}.tsv"),
    params:
        opts=options(FeaturesOptions, exclude=("cmvn_opts",)),
        nj=NJ,
        out=lambda wc, output: os.path.dirname(output.ark),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/features/{name}.{job}.log",
    shell:
        "babelflow features {params.opts:q} --nj {params.nj} --job {wildcards.job}"
        " {input.data:q} {params.out:q} > {log} 2>&1"


rule features:
    input:
        data=rules.data.output[0],
        jobs=expand(rules.features_job.output.scp, job=range(1, NJ + 1), allow_missing=True),
        conf=feature_conf(),
        code=step_code("features"),
    output:
        scp=L.feats("{name}", "feats.scp"),
        frames=L.feats("{name}", "utt2num_frames"),
        cmvn=L.feats("{name}", "cmvn.scp"),
        cmvn_ark=L.feats("{name}", "cmvn.ark"),
        cmvn_opts=L.feats("{name}", "cmvn_opts"),
        dim=L.feats("{name}", "info", "feat_dim"),
        skipped=L.feats("{name}", "skipped.tsv"),
    params:
        opts=options(FeaturesOptions),
        nj=NJ,
        out=lambda wc, output: os.path.dirname(output.scp),
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/features/{name}.log",
    shell:
        "babelflow features {params.opts:q} --nj {params.nj} {input.data:q} {params.out:q} > {log} 2>&1"


# Features Kaldi already made (features.existing): adopted, not recomputed; the chain starts at egs.
ruleorder: features_import > features


rule features_import:
    input:
        unpack(existing_feats_files),
        data=rules.data.output[0],
        conf=feature_conf(),
        code=step_code("features"),
    output:
        scp=L.feats("{name}", "feats.scp"),
        frames=L.feats("{name}", "utt2num_frames"),
        cmvn=L.feats("{name}", "cmvn.scp"),
        cmvn_ark=L.feats("{name}", "cmvn.ark"),
        cmvn_opts=L.feats("{name}", "cmvn_opts"),
        dim=L.feats("{name}", "info", "feat_dim"),
    params:
        opts=options(FeaturesOptions),
        existing=lambda wc: EXISTING[wc.name],
        out=lambda wc, output: os.path.dirname(output.scp),
    wildcard_constraints:
        name="|".join(re.escape(n) for n in EXISTING) or "(?!)",
    conda:
        "../workflow/envs/babelflow.yaml"
    log:
        "logs/features/{name}.import.log",
    shell:
        "babelflow features --nj 1 --existing {params.existing:q} {params.opts:q} {input.data:q} {params.out:q}"
        " > {log} 2>&1"
