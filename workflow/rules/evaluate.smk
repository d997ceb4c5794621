# Evaluation: metrics of each sample set against the exact density, and of an exact sample (the noise floor).


rule evaluate_2d:
    input:
        samples=rules.sample_2d.output,
        reference=f"{RES}/2d/{{dataset}}/reference_seed{{seed}}.npz",
    output:
        f"{RES}/2d/{{dataset}}/{{run}}/metrics/{{solver}}_nfe{{nfe}}_gnone_seed{{seed}}.csv",
    log:
        f"{RES}/logs/evaluate_2d/{{dataset}}_{{run}}_{{solver}}_nfe{{nfe}}_seed{{seed}}.log",
    benchmark:
        f"{RES}/benchmarks/evaluate_2d/{{dataset}}_{{run}}_{{solver}}_nfe{{nfe}}_seed{{seed}}.tsv"
    params:
        knn=TOY["sample"]["knn_points"],
    conda:
        ENV
    resources:
        mem_mb=2000,
    shell:
        "{CLI} evaluate --samples '{input.samples}' --reference {input.reference} --dataset {wildcards.dataset}"
        " --knn-points {params.knn} --out '{output}' > '{log}' 2>&1"


rule evaluate_reference_2d:
    input:
        samples=f"{RES}/2d/{{dataset}}/exact_seed{{seed}}.npz",
        reference=f"{RES}/2d/{{dataset}}/reference_seed{{seed}}.npz",
    output:
        f"{RES}/2d/{{dataset}}/reference/metrics_seed{{seed}}.csv",
    log:
        f"{RES}/logs/evaluate_2d/{{dataset}}_reference_seed{{seed}}.log",
    params:
        knn=TOY["sample"]["knn_points"],
    conda:
        ENV
    shell:
        "{CLI} evaluate --samples {input.samples} --reference {input.reference} --dataset {wildcards.dataset}"
        " --seed {wildcards.seed} --knn-points {params.knn} --out {output} > {log} 2>&1"
