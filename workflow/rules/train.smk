rule train:
    """Token stores -> model directory (config.json, model.safetensors, train_state.pt,
    metrics.jsonl) for one model config of config["models"]."""
    input:
        stores=training_stores,
        config=model_config_file,
    output:
        directory("results/models/{genome}/{model}"),
    log:
        "logs/train/{genome}/{model}.log",
    benchmark:
        "results/benchmarks/train/{genome}/{model}.tsv"
    params:
        launcher=train_launcher,
        options=command_flags("train"),
    threads: config["train"]["threads"]
    resources:
        mem_mb=config["train"]["mem_mb"],
        runtime=config["train"]["runtime"],
        gpu=config["train"]["gpus"],
    conda:
        "../../envs/genossm.yaml"
    shell:
        "{params.launcher} train {input.stores} -o {output} --config {input.config} "
        "--threads {threads} --force --quiet {params.options} > {log} 2>&1"
