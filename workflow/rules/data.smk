# Data: exact reference samples of the 2D datasets (the toy trainer draws fresh batches from the exact sampler).


rule reference_2d:
    output:
        f"{RES}/2d/{{dataset}}/reference_seed{{seed}}.npz",
    log:
        f"{RES}/logs/reference_2d/{{dataset}}_seed{{seed}}.log",
    params:
        n=TOY["reference_samples"],
    conda:
        ENV
    resources:
        mem_mb=1000,
    shell:
        "{CLI} prepare-data --dataset {wildcards.dataset} --num-samples {params.n} --seed {wildcards.seed}"
        " --out {output} > {log} 2>&1"


rule exact_2d:
    # an exact sample of the same size as each generated set: its metrics are the noise floor of the table
    output:
        f"{RES}/2d/{{dataset}}/exact_seed{{seed}}.npz",
    log:
        f"{RES}/logs/exact_2d/{{dataset}}_seed{{seed}}.log",
    params:
        n=TOY["sample"]["num_samples"],
        stream=lambda w: int(w.seed) + 5000,
    conda:
        ENV
    shell:
        "{CLI} prepare-data --dataset {wildcards.dataset} --num-samples {params.n} --seed {params.stream}"
        " --out {output} > {log} 2>&1"
