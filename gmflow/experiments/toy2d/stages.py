"""Stages of the 2D experiment: the exact reference sample, training, sampling and evaluation against the exact
density. Each reads and writes only the paths it is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gmflow.harness import io
from gmflow.harness.data2d import get_dataset_2d
from gmflow.harness.losses import make_loss
from gmflow.harness.runs import build_network, load_run
from gmflow.harness.sampling import generate
from gmflow.harness.train import TrainConfig, train

REFERENCE_STREAM = 10_000
"""Reference samples draw from seed ``REFERENCE_STREAM + seed``: disjoint from training streams (seeds < 10000)."""


def reference_sample(dataset: str, num_samples: int, seed: int = 0) -> np.ndarray:
    """An exact sample of a 2D dataset."""
    gen = torch.Generator().manual_seed(REFERENCE_STREAM + seed)
    return get_dataset_2d(dataset).sample(num_samples, gen).numpy()


def train_2d(spec: dict, cfg: TrainConfig, out_dir: str | Path, progress: bool = True, device="cpu",
             group=None) -> dict:
    """Train the MLP of ``spec`` on its dataset's exact sampler (``device`` and the torchrun ``group``:
    :func:`gmflow.harness.train.train`)."""
    from gmflow.harness.devices import Distributed

    torch.manual_seed(cfg.seed)
    net, _ = build_network(spec)
    ds = get_dataset_2d(spec["dataset"])
    torch.manual_seed(cfg.seed)
    return train(net, cfg, lambda n, g: ds.sample(n, g), out_dir, make_loss(cfg), progress=progress, run_spec=spec,
                 device=device, group=group or Distributed())


def sample_2d(run_dir: str | Path, solver: str, nfe: int, num_samples: int, seed: int, block_size: int,
              substeps, progress: bool = True, device="cpu", precision: str = "fp32",
              group=None) -> tuple[np.ndarray, dict]:
    """A sample set of a trained 2D run and its record (the table's columns)."""
    net, _, spec = load_run(run_dir)
    x, rec = generate(net, spec["method"], solver, nfe, num_samples, tuple(spec["sample_shape"]), seed, block_size,
                      substeps, progress=progress, device=device, precision=precision, group=group)
    rec.update(run=Path(run_dir).name, dataset=spec["dataset"], method=spec["method"], K=spec["num_components"],
               train_steps=spec["train"]["steps"])
    return x, rec


def reference_record(dataset: str, num_samples: int, seed: int) -> dict:
    """The record of an exact sample of the data: the noise floor of every metric at this sample size."""
    return {"dataset": dataset, "run": "reference", "method": "data", "K": 0, "solver": "exact", "nfe": 0,
            "nfe_budget": 0, "substeps": 0, "seed": seed, "num_samples": num_samples, "guidance": "none",
            "guidance_scale": 0.0, "orthogonal": 0.0, "train_steps": 0}


def save_samples(out: str | Path, samples: np.ndarray, record: dict, provenance: dict) -> None:
    import json

    out = Path(out)
    io.save_npz(out, samples=samples, record=json.dumps(record))
    io.write_json(provenance, out.with_suffix(".json"))
