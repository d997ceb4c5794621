# Evaluation: 2D metrics of an exact sample (the noise floor; generated sets are evaluated by sample_2d), and
# image features and metrics per sample set and extractor.


rule evaluate_reference_2d:
    input:
        samples=f"{RES}/2d/{{dataset}}/exact_seed{{seed}}.npz",
        reference=f"{RES}/2d/{{dataset}}/reference_seed{{seed}}.npz",
    output:
        f"{RES}/2d/{{dataset}}/reference/metrics_seed{{seed}}.csv",
    log:
        f"{RES}/logs/evaluate_2d/{{dataset}}_reference_seed{{seed}}.log",
    params:
        knn=lambda w: TOY["sample"]["knn_points"],
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/evaluate_reference_2d/{{dataset}}_{{seed}}.tsv"
    shell:
        "{CLI} 2d evaluate --samples {input.samples:q} --reference {input.reference:q} --dataset {wildcards.dataset:q}"
        " --seed {wildcards.seed} --knn-points {params.knn:q} --out {output:q} > {log:q} 2>&1"


rule evaluate_images:
    # stage 1: features of the sample set (kept); stage 2: metrics against the reference statistics
    input:
        samples=rules.sample_images.output,
        reference=f"{RES}/images/{{dataset}}/reference_{{extractor}}.npz",
        classifier=_classifier_input,
    output:
        metrics=f"{RES}/images/{{dataset}}/{{run}}/metrics/{{tag}}_{{extractor}}.csv",
        features=f"{RES}/images/{{dataset}}/{{run}}/features/{{tag}}_{{extractor}}.npz",
    log:
        f"{RES}/logs/evaluate_images/{{dataset}}_{{run}}_{{tag}}_{{extractor}}.log",
    benchmark:
        f"{RES}/benchmarks/evaluate_images/{{dataset}}_{{run}}_{{tag}}_{{extractor}}.tsv"
    params:
        cls=lambda w, input: opt("--classifier", input.classifier[0] if input.classifier else None),
        kid=lambda w: IMG["sample"]["kid_subset_size"],
        boot=lambda w: IMG["sample"]["bootstrap_inception" if w.extractor == "inception-tf" else "bootstrap"],
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    conda:
        ENV
    shell:
        "{CLI} images evaluate --samples {input.samples:q} --reference {input.reference:q}"
        " --extractor {wildcards.extractor:q} {params.cls} --kid-subset-size {params.kid:q}"
        " --bootstrap {params.boot:q} --threads {threads}"
        " --features-out {output.features:q} --out {output.metrics:q} > {log:q} 2>&1"


rule nll_images:
    input:
        weights=rules.train_images.output.weights,
        cache=latent_cache_input,
    output:
        f"{RES}/images/{{dataset}}/{{run}}/nll_seed{{seed}}.csv",
    log:
        f"{RES}/logs/nll_images/{{dataset}}_{{run}}_seed{{seed}}.log",
    params:
        n=lambda w: IMG["nll"],
        run_dir=lambda w: f"{RES}/images/{w.dataset}/{w.run}",
        root=data_root_arg,
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/nll_images/{{dataset}}_{{run}}_{{seed}}.tsv"
    shell:
        "{CLI} images nll --run-dir {params.run_dir:q} --num-images {params.n[num_images]:q}"
        " --times-per-image {params.n[times_per_image]:q} --seed {wildcards.seed} {params.root} --threads {threads}"
        " --out {output:q} > {log:q} 2>&1"
