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
    conda:
        ENV
    shell:
        "{CLI} 2d evaluate --samples {input.samples} --reference {input.reference} --dataset {wildcards.dataset}"
        " --seed {wildcards.seed} --knn-points {params.knn} --out {output} > {log} 2>&1"


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
        cls=lambda w, input: f"--classifier {input.classifier}" if input.classifier else "",
        kid=lambda w: IMG["sample"]["kid_subset_size"],
        boot=lambda w: IMG["sample"]["bootstrap_inception" if w.extractor == "inception-tf" else "bootstrap"],
    threads: THREADS
    conda:
        ENV
    shell:
        "{CLI} images evaluate --samples '{input.samples}' --reference {input.reference}"
        " --extractor {wildcards.extractor} {params.cls} --kid-subset-size {params.kid} --bootstrap {params.boot}"
        " --threads {threads}"
        " --features-out '{output.features}' --out '{output.metrics}' > '{log}' 2>&1"


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
    threads: THREADS
    conda:
        ENV
    shell:
        "{CLI} images nll --run-dir {params.run_dir} --num-images {params.n[num_images]}"
        " --times-per-image {params.n[times_per_image]} --seed {wildcards.seed} {params.root} --threads {threads}"
        " --out {output} > {log} 2>&1"
