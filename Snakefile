# GMFlow benchmark and replication suite: wiring only. Stages live in workflow/rules/*.smk.
# Run: snakemake --cores all            (default config: config/config.yaml)
#      snakemake --cores all --configfile config/ci.yaml   (tiny CI configuration)


# The default configuration applies only when no --configfile is given (no silent merging of two configs);
# --config key=value overrides apply on top of whichever file is used.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"



include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/lfm.smk"
include: "workflow/rules/lfm_images.smk"


rule all:
    input:
        final_targets(),
        lfm_final_targets(),
        lfm_images_final_targets(),
        f"{RES}/index.html",
