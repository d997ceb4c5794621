"""The ImageNet path of config/imagenet-smoke.yaml runs through the DAG on CPU: toy JPEGs and a tiny random VAE made
here -> latent cache -> GMFlow and FM training -> sampling with decoding -> TF-Inception metrics -> the image table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from gmflow.harness.data_latents import save_tiny_vae, write_toy_image_folder

    base = tmp_path_factory.mktemp("imagenet-smoke")
    data = base / "user data"  # a space in the configured paths: the rules must quote them
    write_toy_image_folder(data / "train")
    save_tiny_vae(data / "vae")
    results = base / "results"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    overrides = {"image_root": str(data / "train"), "vae": str(data / "vae"),
                 "latent_cache": str(data / "latent cache")}
    cmd = [sys.executable, "-m", "snakemake", str(results / "tables" / "images.csv"), "--cores", "2",
           "--configfile", "config/imagenet-smoke.yaml", "--config", f"results={results}",
           f"images={json.dumps(overrides)}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return results


@pytest.mark.slow  # the whole latent path through the DAG: about a minute here; run with -m slow
def test_latent_cache(smoke):
    from gmflow.harness.data_latents import load_latent_cache

    z, y, index = load_latent_cache(smoke.parent / "user data" / "latent cache")
    assert z.shape == (32, 4, 4, 4) and str(z.dtype) == "torch.float16" and np.isfinite(z.float().numpy()).all()
    assert sorted(set(y.tolist())) == [0, 1, 2, 3] and index["num_classes"] == 4 and index["resolution"] == 32
    spec = json.loads((smoke / "images/imagenet256/gm-k8/run.json").read_text())
    assert spec["num_classes"] == 4 and spec["sample_shape"] == [4, 4, 4] and spec["latents"]["vae_sha1"]


@pytest.mark.slow  # the whole latent path through the DAG: about a minute here; run with -m slow
def test_decoded_sample_sets_and_metrics(smoke):
    cfg = yaml.safe_load(open(ROOT / "config/imagenet-smoke.yaml"))["images"]
    sets = sorted((smoke / "images/imagenet256").glob("*/samples/*.npz"))
    assert len(sets) == 4
    for path in sets:
        data = np.load(path)
        assert data["images"].dtype == np.uint8 and data["images"].shape == (cfg["sample"]["num_samples"], 3, 32, 32)
        assert sorted(set(data["labels"].tolist())) == [0, 1, 2, 3]
        rec = json.loads(str(data["record"]))
        assert rec["dataset"] == "imagenet256" and rec["scaling_factor"] == pytest.approx(0.18215)
        assert rec["vae_variant"] == "other" and len(rec["vae_sha1"]) == 40
    ref = np.load(smoke / "images/imagenet256/reference_batch.npz")
    assert ref["arr_0"].shape == (32, 32, 32, 3) and ref["arr_0"].dtype == np.uint8
    df = pd.read_csv(smoke / "tables/images.csv")
    fid = df[df.metric == "fid"]
    assert len(fid) == 4 and set(fid.feature_extractor) == {"inception-tf"} and np.isfinite(fid.value).all()
    assert set(fid.run) == {"fm", "gm-k8"} and set(fid.nfe) == {2, 4}
    assert np.isfinite(df[df.metric == "nll_bits_per_dim"].value).all()
