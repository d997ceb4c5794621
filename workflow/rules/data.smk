# Data: exact reference samples of the 2D datasets (the toy trainer draws fresh batches from the exact sampler).


rule reference_2d:
    output:
        f"{RES}/2d/{{dataset}}/reference_seed{{seed}}.npz",
    log:
        f"{RES}/logs/reference_2d/{{dataset}}_seed{{seed}}.log",
    params:
        n=lambda w: TOY["reference_samples"],
    threads: stage_threads("data")
    resources:
        **stage_resources("data"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/reference_2d/{{dataset}}_{{seed}}.tsv"
    shell:
        "{CLI} 2d prepare-data --dataset {wildcards.dataset:q} --num-samples {params.n:q} --seed {wildcards.seed}"
        " --out {output:q} > {log:q} 2>&1"


rule exact_2d:
    # an exact sample of the same size as each generated set: its metrics are the noise floor of the table
    output:
        f"{RES}/2d/{{dataset}}/exact_seed{{seed}}.npz",
    log:
        f"{RES}/logs/exact_2d/{{dataset}}_seed{{seed}}.log",
    params:
        n=lambda w: TOY["sample"]["num_samples"],
        stream=lambda w: int(w.seed) + 5000,
    threads: stage_threads("data")
    resources:
        **stage_resources("data"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/exact_2d/{{dataset}}_{{seed}}.tsv"
    shell:
        "{CLI} 2d prepare-data --dataset {wildcards.dataset:q} --num-samples {params.n:q} --seed {params.stream:q}"
        " --out {output:q} > {log:q} 2>&1"


rule classifier_images:
    # the in-domain feature extractor: a small CNN trained on the real training split
    output:
        f"{RES}/images/{{dataset}}/classifier.safetensors",
    log:
        f"{RES}/logs/classifier/{{dataset}}.log",
    benchmark:
        f"{RES}/benchmarks/classifier/{{dataset}}.tsv"
    params:
        c=lambda w: IMG["classifier"],
        root=lambda w: opt("--data-root", IMG["data_root"]),
    priority: 40  # a long sequential chain or the inputs of many jobs: start it first
    threads: stage_threads("train")
    resources:
        **stage_resources("train", one_process=True),
    conda:
        ENV
    shell:
        "{CLI} images train-classifier --dataset {wildcards.dataset:q} --epochs {params.c[epochs]:q}"
        " --batch-size {params.c[batch_size]:q} --lr {params.c[lr]:q} {params.root} --threads {threads}"
        " --out {output:q} > {log:q} 2>&1"


def _classifier_input(w):
    return [f"{RES}/images/{w.dataset}/classifier.safetensors"] if w.extractor.startswith("classifier-") else []


rule reference_features_images:
    # features and FID statistics of the real reference set, once per dataset and extractor
    input:
        _classifier_input,
    output:
        f"{RES}/images/{{dataset}}/reference_{{extractor}}.npz",
    log:
        f"{RES}/logs/reference_features/{{dataset}}_{{extractor}}.log",
    benchmark:
        f"{RES}/benchmarks/reference_features/{{dataset}}_{{extractor}}.tsv"
    params:
        r=lambda w: IMG["reference"],
        n=lambda w: IMG["reference"]["inception_images"] if w.extractor == "inception-tf" else IMG["reference"]["num_images"],
        cls=lambda w, input: opt("--classifier", input[0] if len(input) else None),
        root=lambda w: opt("--data-root", IMG["data_root"]),
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    conda:
        ENV
    shell:
        "{CLI} images reference-features --dataset {wildcards.dataset:q}"
        " --extractor {wildcards.extractor:q} {params.cls} --split {params.r[split]:q}"
        " --num-images {params.n:q} {params.root} --threads {threads} --out {output:q} > {log:q} 2>&1"


# Latent datasets (imagenet256): the latent cache, encoded once from an ImageFolder (resumable: shards that exist are
# kept, so a killed job continues where it stopped), and the ADM-style reference batch of real images.
if IMG and is_latent(IMG["dataset"]):

    rule encode_latents:
        output:
            f"{latent_cache_dir()}/index.json",
        log:
            f"{RES}/logs/encode_latents/{IMG['dataset']}.log",
        benchmark:
            f"{RES}/benchmarks/encode_latents/{IMG['dataset']}.tsv"
        params:
            image_root=shlex.quote(str(IMG["image_root"])),
            vae=shlex.quote(str(IMG["vae"])),
            out=shlex.quote(latent_cache_dir()),
            o=IMG["latents"],
        threads: stage_threads("data")
        resources:
            **stage_resources("data", one_process=True),
        conda:
            ENV
        shell:
            "{CLI} images encode-latents --image-root {params.image_root} --vae {params.vae} --out {params.out}"
            " --resolution {params.o[resolution]} --batch-size {params.o[batch_size]} --shard-size {params.o[shard_size]}"
            " --dtype {params.o[dtype]} --device {params.o[device]} --seed {params.o[seed]} --threads {threads} --quiet"
            " > {log:q} 2>&1"

    rule reference_batch_images:
        # ADM's format (arr_0 uint8 NHWC centre crops, no flip); replaced by images.reference_batch when one is given
        output:
            f"{RES}/images/{{dataset}}/reference_batch.npz",
        log:
            f"{RES}/logs/reference_batch/{{dataset}}.log",
        params:
            image_root=shlex.quote(str(IMG["image_root"])),
            res=IMG["latents"]["resolution"],
            n=IMG["reference"]["inception_images"],
        threads: stage_threads("data")
        resources:
            **stage_resources("data"),
        conda:
            ENV
        shell:
            "{CLI} images reference-batch --image-root {params.image_root} --resolution {params.res}"
            " --num-images {params.n} --out {output:q} > {log:q} 2>&1"

    rule reference_features_latents:
        # TF-Inception statistics of the reference batch (the ADM protocol's real side)
        input:
            batch=IMG["reference_batch"] or f"{RES}/images/{IMG['dataset']}/reference_batch.npz",
        output:
            f"{RES}/images/{{dataset}}/reference_{{extractor}}.npz",
        wildcard_constraints:
            dataset="|".join(registry.LATENT_DATASETS),
            extractor=re.escape(registry.INCEPTION_TF),
        log:
            f"{RES}/logs/reference_features/{{dataset}}_{{extractor}}.log",
        params:
            n=IMG["reference"]["inception_images"],
        threads: stage_threads("evaluate")
        resources:
            **stage_resources("evaluate"),
        conda:
            ENV
        shell:
            "{CLI} images reference-features --dataset {wildcards.dataset} --reference-batch {input.batch:q}"
            " --extractor {wildcards.extractor} --num-images {params.n} --threads {threads} --out {output:q}"
            " > {log:q} 2>&1"

    ruleorder: reference_features_latents > reference_features_images
