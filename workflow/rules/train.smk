# Training: one job per (dataset, run); resumable from results/2d/{dataset}/{run}/state.safetensors.


rule train_2d:
    output:
        weights=f"{RES}/2d/{{dataset}}/{{run}}/ema.safetensors",
        spec=f"{RES}/2d/{{dataset}}/{{run}}/run.json",
    log:
        f"{RES}/logs/train_2d/{{dataset}}_{{run}}.log",
    benchmark:
        f"{RES}/benchmarks/train_2d/{{dataset}}_{{run}}.tsv"
    params:
        method=lambda w: TOY["runs"][w.run]["method"],
        K=lambda w: TOY["runs"][w.run].get("K", 1),
        trans_ratio=lambda w: run_option(w.run, "trans_ratio"),
        seed=lambda w: run_option(w.run, "seed"),
        min_period=lambda w: run_option(w.run, "min_period"),
        t=lambda w: TOY["train"],
        out=lambda w: f"{RES}/2d/{w.dataset}/{w.run}",
    priority: 30  # the input of every 2D sample set: start it before the short jobs
    threads: stage_threads("train")
    resources:
        **stage_resources("train"),
    conda:
        ENV
    shell:
        "{TRAIN} 2d train --dataset {wildcards.dataset:q} --method {params.method:q} --num-components {params.K:q}"
        " --trans-ratio {params.trans_ratio:q} --network {params.t[network]:q} --width {params.t[width]:q}"
        " --depth {params.t[depth]:q} --min-period {params.min_period:q} --steps {params.t[steps]:q}"
        " --batch-size {params.t[batch_size]:q} --lr {params.t[lr]:q} --warmup-steps {params.t[warmup_steps]:q}"
        " --ema-gamma {params.t[ema_gamma]:q} --weight-scale {params.t[weight_scale]:q}"
        " --time-sampler {params.t[time_sampler]:q} --checkpoint-every {params.t[checkpoint_every]:q}"
        " --seed {params.seed:q} --threads {threads} {DEVICE} --out {params.out:q} > {log:q} 2>&1"


rule train_images:
    # also keeps the EMA weights at images.train.snapshot_steps (snapshots/step{k}/), made into runs by snapshot_images
    input:
        cache=latent_cache_input,  # latent datasets train from their cache
    output:
        weights=f"{RES}/images/{{dataset}}/{{run}}/ema.safetensors",
        spec=f"{RES}/images/{{dataset}}/{{run}}/run.json",
    wildcard_constraints:
        run="|".join(trained_runs()) or "^$",
    log:
        f"{RES}/logs/train_images/{{dataset}}_{{run}}.log",
    benchmark:
        f"{RES}/benchmarks/train_images/{{dataset}}_{{run}}.tsv"
    params:
        method=lambda w: IMG["runs"][w.run]["method"],
        K=lambda w: IMG["runs"][w.run].get("K", 1),
        trans_ratio=lambda w: image_run_option(w.run, "trans_ratio"),
        seed=lambda w: image_run_option(w.run, "seed"),
        t=lambda w: IMG["train"],
        dit=lambda w: dit_opts(),
        spectral=lambda w: "--spectral" if IMG["train"]["spectral"] and IMG["runs"][w.run]["method"] == "gmflow" else "",
        root=data_root_arg,
        ckpt=lambda w: "--grad-checkpointing" if IMG["train"]["grad_checkpointing"] else "",
        snapshots=lambda w: shlex.join(["--snapshot-steps", *map(str, IMG["train"]["snapshot_steps"])])
        if IMG["train"]["snapshot_steps"] else "",
        out=lambda w: f"{RES}/images/{w.dataset}/{w.run}",
    priority: 40  # a long sequential chain or the inputs of many jobs: start it first
    threads: stage_threads("train")
    resources:
        **stage_resources("train"),
    conda:
        ENV
    shell:
        "{TRAIN} images train --dataset {wildcards.dataset:q} --method {params.method:q} --num-components {params.K:q}"
        " --trans-ratio {params.trans_ratio:q} --network {params.t[network]:q} {params.dit} --steps {params.t[steps]:q}"
        " --batch-size {params.t[batch_size]:q} --lr {params.t[lr]:q} --weight-decay {params.t[weight_decay]:q}"
        " --warmup-steps {params.t[warmup_steps]:q} --grad-clip {params.t[grad_clip]:q} --ema {params.t[ema]:q}"
        " --ema-gamma {params.t[ema_gamma]:q} --ema-kimg {params.t[ema_kimg]:q} --ema-rampup {params.t[ema_rampup]:q}"
        " --weight-scale {params.t[weight_scale]:q} --time-sampler {params.t[time_sampler]:q}"
        " --label-dropout {params.t[label_dropout]:q} {params.spectral} {params.root}"
        " --checkpoint-every {params.t[checkpoint_every]:q} {params.snapshots} --seed {params.seed:q}"
        " --micro-batch-size {params.t[micro_batch_size]:q} {params.ckpt} --threads {threads} {DEVICE}"
        " --out {params.out:q} > {log:q} 2>&1"


rule import_official_images:
    # a run that is the authors' published GM-DiT, converted from a local snapshot (images.runs.{run}.official)
    output:
        weights=f"{RES}/images/{{dataset}}/{{run}}/ema.safetensors",
        spec=f"{RES}/images/{{dataset}}/{{run}}/run.json",
    wildcard_constraints:
        run="|".join(official_runs()) or "^$",
    log:
        f"{RES}/logs/train_images/{{dataset}}_{{run}}.log",
    params:
        snapshot=lambda w: IMG["runs"][w.run]["official"],
        variant=lambda w: opt("--variant", IMG["runs"][w.run].get("official_variant")),
        out=lambda w: f"{RES}/images/{w.dataset}/{w.run}",
    threads: stage_threads("data")
    resources:
        **stage_resources("data"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/import_official_images/{{dataset}}_{{run}}.tsv"
    shell:
        "{CLI} import-official --snapshot {params.snapshot:q} {params.variant} --out {params.out:q} > {log:q} 2>&1"


rule snapshot_images:
    # run '{run}-at{k}': run {run}'s EMA weights at step k, with a run.json saying so (steps k, seconds to step k)
    input:
        weights=f"{RES}/images/{{dataset}}/{{run}}/ema.safetensors",
        spec=f"{RES}/images/{{dataset}}/{{run}}/run.json",
    output:
        weights=f"{RES}/images/{{dataset}}/{{run}}-at{{step}}/ema.safetensors",
        spec=f"{RES}/images/{{dataset}}/{{run}}-at{{step}}/run.json",
    wildcard_constraints:
        run="|".join(IMG["runs"]) if IMG else "^$",
        step=r"\d+",
    log:
        f"{RES}/logs/train_images/{{dataset}}_{{run}}-at{{step}}.log",
    params:
        run_dir=lambda w: f"{RES}/images/{w.dataset}/{w.run}",
        out=lambda w: f"{RES}/images/{w.dataset}/{w.run}-at{w.step}",
    threads: stage_threads("data")
    resources:
        **stage_resources("data"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/snapshot_images/{{dataset}}_{{run}}_{{step}}.tsv"
    shell:
        "{CLI} images snapshot-run --run-dir {params.run_dir:q} --step {wildcards.step} --out {params.out:q}"
        " > {log:q} 2>&1"
