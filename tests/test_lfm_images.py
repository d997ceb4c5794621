"""LFM on class-conditional images (the package gmflow/experiments/lfm/: blocks, chain, config, cli).

One 3-block chain on scikit-learn's 8x8 digits (the tiny DiT with its velocity head, 20 steps per block) is built once
through the CLI, in process, with two one-step students (blocks 1-2 together, and block 3). The tests check the
class-balanced pool, labels carried through the pushes, conditional pushing against an independent recomputation,
label dropout in block training, exact NFE counts (also against a count of DiT forward calls), the sample file and its
training-cost record, the noise streams, the chain checks of sampling and distillation, and the lfm_images config.
"""

import functools
import json
import re

import numpy as np
import pytest
import torch
import yaml
from project import assert_refused, validate_config
from torch import nn

from baselines import lfm as blfm
from gmflow.experiments import cli
from gmflow.experiments.images.sweeps import TAG_PATTERN
from gmflow.experiments.lfm import blocks as glfm
from gmflow.experiments.lfm import chain as lfm_chain
from gmflow.experiments.lfm.blocks import BlockTrainConfig, block_velocity, train_block
from gmflow.experiments.lfm.config import distill_groups, image_sample_sets, image_sample_tag, student_folder
from gmflow.harness.data_images import load_images, to_uint8
from gmflow.harness.dit import DiT
from gmflow.harness.seeding import stream_generator as block_generator

torch.set_num_threads(1)

N = 3
POOL = 200
PUSH_NFE = 4
PUSH_BATCH = 80  # batches of 80, 80 and 40 images
STEPS, BATCH = 20, 32
DISTILL_STEPS = 10
NUM_CLASSES = 10
SHAPE = (1, 8, 8)
PATCH = 4  # the chain's DiT patch size, overriding the variant's 2 as the image runs' patch_size does


def _run(*argv):
    assert cli.main([str(a) for a in argv]) == 0, argv


def _train(root, n):
    init = ["--init-from", root / f"block_{n - 1}" / "ema.safetensors"] if n > 1 else []
    _run("lfm", "train-block", "--dataset", "digits", "--network", "dit-digits-tiny", "--patch-size", PATCH, "--block",
         n, "--num-blocks", N, "--step-c", 0.1, "--step-rho", 1.5, "--pool", root / f"pool_{n - 1}.npz", *init,
         "--steps", STEPS, "--batch-size", BATCH, "--warmup-steps", 5, "--grad-clip", 10, "--quiet", "--out",
         root / f"block_{n}")


def _push(root, block, pool, out):
    _run("lfm", "push", "--block-dir", block, "--pool", pool, "--solver", "heun", "--nfe", PUSH_NFE, "--batch-size",
         PUSH_BATCH, "--quiet", "--out", out)


def _distill(root, first, last):
    _run("lfm", "distill", "--blocks", *[root / f"block_{n}" for n in range(first, last + 1)], "--pool-in",
         root / f"pool_{first - 1}.npz", "--pool-out", root / f"pool_{last}.npz", "--steps", DISTILL_STEPS,
         "--batch-size", BATCH, "--quiet", "--out", root / student_folder(first, last))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """pool_0 .. pool_3, block_1 .. block_3, student_1-2 and student_3, all through the CLI."""
    root = tmp_path_factory.mktemp("lfm_images")
    _run("lfm", "image-pool", "--dataset", "digits", "--num-images", POOL, "--out", root / "pool_0.npz")
    for n in range(1, N + 1):
        _train(root, n)
        _push(root, root / f"block_{n}", root / f"pool_{n - 1}.npz", root / f"pool_{n}.npz")
    _distill(root, 1, 2)
    _distill(root, 3, 3)
    return root


def _blocks(root):
    return [root / f"block_{n}" for n in range(1, N + 1)]


def _students(root):
    return [root / "student_1-2", root / "student_3"]


def _sample(root, name, solver, *opts, blocks=None, n=50, block_size=20, seed=0):
    blocks = blocks or (_students(root) if solver == "distilled" else _blocks(root))
    out = root / "samples" / f"{name}.npz"
    _run("lfm", "sample", "--blocks", *blocks, "--solver", solver, *opts, "--num-samples", n, "--block-size",
         block_size, "--seed", seed, "--quiet", "--out", out)
    with np.load(out) as f:
        return f["images"], f["labels"], json.loads(str(f["record"]))


def _json(path):
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------------------------------
# Pool and pushes
# ---------------------------------------------------------------------------------------------------------------------


def test_image_pool_is_a_class_balanced_prefix_of_training_images(chain, tmp_path):
    with np.load(chain / "pool_0.npz") as f:
        x, labels = f["x"], f["labels"]
    assert x.dtype == np.float32 and x.shape == (POOL, *SHAPE)
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() == -1.0  # the black background is -1
    assert np.issubdtype(labels.dtype, np.integer) and labels.shape == (POOL,)
    assert np.bincount(labels, minlength=NUM_CLASSES).tolist() == [POOL // NUM_CLASSES] * NUM_CLASSES
    assert _json(chain / "pool_0.json")["class_counts"] == [POOL // NUM_CLASSES] * NUM_CLASSES
    # the pool images of class c are the first training images of class c, in file order
    train_x, train_y = load_images("digits", "train")
    for c in range(NUM_CLASSES):
        first = train_x[train_y == c][: POOL // NUM_CLASSES].numpy()
        np.testing.assert_array_equal(x[labels == c], first)
    # a smaller pool is a prefix of a larger one
    _run("lfm", "image-pool", "--dataset", "digits", "--num-images", 300, "--out", tmp_path / "p300.npz")
    with np.load(tmp_path / "p300.npz") as f:
        np.testing.assert_array_equal(f["x"][:POOL], x)
        np.testing.assert_array_equal(f["labels"][:POOL], labels)
        assert np.bincount(f["labels"]).tolist() == [30] * NUM_CLASSES


def test_image_pool_larger_than_the_training_split_is_refused(tmp_path, capsys):
    assert cli.main(["lfm", "image-pool", "--dataset", "digits", "--num-images", "100000", "--out",
                     str(tmp_path / "p.npz")]) == 2
    assert "--num-images 100000" in capsys.readouterr().err
    assert not (tmp_path / "p.npz").exists()


def test_blocks_and_students_keep_the_dit_shape_overrides(chain):
    """--patch-size reaches every block's network and its run.json, and every student (rebuilt from its run.json)
    and every loaded block has the same shape: (8 / 4)^2 = 4 tokens, not the variant's 16."""
    nets = [lfm_chain.load_block(b)[0] for b in _blocks(chain)]
    nets += [lfm_chain.load_student(s)[0] for s in _students(chain)]
    for folder in [*_blocks(chain), *_students(chain)]:
        assert _json(folder / "run.json")["patch_size"] == PATCH
    for net in nets:
        assert isinstance(net, DiT) and net.config.patch_size == PATCH and net.config.width == 32
        assert net(torch.zeros(2, *SHAPE), torch.zeros(2), torch.zeros(2, dtype=torch.long)).shape == (2, *SHAPE)
    variant = lfm_chain.build_block_net({**_json(chain / "block_1" / "run.json"), "patch_size": None})
    assert variant.config.patch_size == 2 and sum(p.numel() for p in variant.parameters()) != sum(
        p.numel() for p in nets[0].parameters())


def test_dit_overrides_are_refused_for_the_2d_mlp(tmp_path, capsys):
    np.savez(tmp_path / "pool_0.npz", x=np.zeros((10, 2), np.float32))
    assert cli.main(["lfm", "train-block", "--dataset", "gmm2d", "--block", "1", "--num-blocks", "2", "--pool",
                     str(tmp_path / "pool_0.npz"), "--patch-size", "4", "--out", str(tmp_path / "b")]) == 2
    assert "--patch-size" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_pushes_carry_the_labels_and_count_the_configured_nfe(chain):
    labels0 = lfm_chain.load_pool_labels(chain / "pool_0.npz")
    for n in range(1, N + 1):
        with np.load(chain / f"pool_{n}.npz") as f:
            assert f["x"].shape == (POOL, *SHAPE) and f["x"].dtype == np.float32
            np.testing.assert_array_equal(f["labels"], np.load(chain / f"pool_{n - 1}.npz")["labels"])
        assert torch.equal(lfm_chain.load_pool_labels(chain / f"pool_{n}.npz"), labels0)
        rec = _json(chain / f"pool_{n}.json")
        assert rec["nfe_per_sample"] == PUSH_NFE and rec["nfe_per_block"] == PUSH_NFE
        assert rec["nfe_per_batch"] == [PUSH_NFE] * 3 and rec["pool_size"] == POOL and rec["block"] == n


def test_push_is_the_conditional_block_flow_of_its_pool(chain, tmp_path):
    """pool_n = heun push of pool_{n-1} through block n, each batch conditioned on its own labels."""
    for n in (1, 3):
        net, _ = lfm_chain.load_block(chain / f"block_{n}")
        pool = lfm_chain.load_pool(chain / f"pool_{n - 1}.npz")
        labels = lfm_chain.load_pool_labels(chain / "pool_0.npz")
        v = block_velocity(net)
        parts = []
        for i in range(0, POOL, PUSH_BATCH):
            x, nfe = blfm.push_pool(functools.partial(v, y=labels[i : i + PUSH_BATCH]), pool[i : i + PUSH_BATCH],
                                    "heun", PUSH_NFE)
            assert nfe == PUSH_NFE
            parts.append(x)
        torch.testing.assert_close(torch.cat(parts), lfm_chain.load_pool(chain / f"pool_{n}.npz"), rtol=0, atol=1e-6)
        unconditional, _ = blfm.push_pool(v, pool[:PUSH_BATCH], "heun", PUSH_NFE)
        assert (unconditional - parts[0]).abs().max() > 1e-6  # the labels reach the network
    # the same images with every label moved to the next class push elsewhere, and carry the new labels
    with np.load(chain / "pool_0.npz") as f:
        x0, y0 = f["x"], f["labels"]
    shifted = (y0 + 1) % NUM_CLASSES
    np.savez(tmp_path / "shifted.npz", x=x0, labels=shifted)
    _push(tmp_path, chain / "block_1", tmp_path / "shifted.npz", tmp_path / "pushed.npz")
    with np.load(tmp_path / "pushed.npz") as f:
        np.testing.assert_array_equal(f["labels"], shifted)
        other = f["x"]
    assert np.abs(other - np.load(chain / "pool_1.npz")["x"]).max() > 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# Label dropout in block training
# ---------------------------------------------------------------------------------------------------------------------


class _LabelRecorder(nn.Module):
    """A learnable linear map of ``x`` that records the labels of every call."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, x, t, y):
        self.seen.append(y.clone())
        return self.scale * x


@pytest.mark.parametrize("dropout", [0.5, 0.0])
def test_label_dropout_replaces_about_that_fraction_of_drawn_labels(tmp_path, monkeypatch, dropout):
    """Row i of the pool holds the constant value i, so the drawn rows (seen through lfm_pair) give the drawn labels."""
    m, null, steps, batch = 50, NUM_CLASSES, 15, 64
    pool = torch.arange(m, dtype=torch.float32).reshape(m, 1, 1, 1).expand(m, 1, 2, 2).contiguous()
    labels = torch.randint(NUM_CLASSES, (m,), generator=torch.Generator().manual_seed(3))
    drawn = []
    real_pair = glfm.lfm_pair

    def spy(x0, *args, **kwargs):
        drawn.append(x0[:, 0, 0, 0].round().long())
        return real_pair(x0, *args, **kwargs)

    monkeypatch.setattr(glfm, "lfm_pair", spy)
    net = _LabelRecorder()
    cfg = BlockTrainConfig(steps=steps, batch_size=batch, warmup_steps=1, label_dropout=dropout, checkpoint_every=100)
    rec = train_block(net, pool, 1, 0.1, cfg, tmp_path, progress=False, labels=labels, null_label=null)
    assert rec["steps"] == steps and len(net.seen) == len(drawn) == steps
    assert net.scale.item() != 0.0  # the stub trained
    seen, expected = torch.cat(net.seen), labels[torch.cat(drawn)]
    assert seen.shape == (steps * batch,)
    dropped = seen == null
    assert torch.equal(seen[~dropped], expected[~dropped])
    if dropout == 0:
        assert not dropped.any() and torch.equal(seen, expected)
    else:  # binomial(960, 0.5): sd 0.016
        assert abs(dropped.float().mean().item() - dropout) < 0.08


def test_label_dropout_needs_labels_and_a_null_label(tmp_path):
    cfg = BlockTrainConfig(steps=1, batch_size=4, label_dropout=0.5)
    pool = torch.zeros(8, 1, 2, 2)
    with pytest.raises(ValueError, match="label_dropout"):
        train_block(_LabelRecorder(), pool, 1, 0.1, cfg, tmp_path, progress=False, labels=None, null_label=10)
    with pytest.raises(ValueError, match="label_dropout"):
        train_block(_LabelRecorder(), pool, 1, 0.1, cfg, tmp_path, progress=False,
                    labels=torch.zeros(8, dtype=torch.long), null_label=-1)


# ---------------------------------------------------------------------------------------------------------------------
# Sampling: counted NFE, the sample file and its record
# ---------------------------------------------------------------------------------------------------------------------


class _ForwardCounter:
    """Counts DiT forward calls: an independent count of network evaluations."""

    def __init__(self, monkeypatch):
        self.calls = 0
        forward = DiT.forward

        def counted(net, *args, **kwargs):
            self.calls += 1
            return forward(net, *args, **kwargs)

        monkeypatch.setattr(DiT, "forward", counted)


@pytest.mark.parametrize("solver,k", [("euler", 1), ("euler", 3), ("heun", 2)])
def test_fixed_step_image_chain_counts_k_per_block(chain, monkeypatch, solver, k):
    calls = _ForwardCounter(monkeypatch)
    _, _, rec = _sample(chain, f"{solver}{k}", solver, "--nfe-per-block", k)
    assert rec["nfe_per_block"] == [k] * N and rec["nfe"] == rec["nfe_budget"] == N * k
    assert rec["nfe_min"] == rec["nfe_max"] == N * k
    assert calls.calls == rec["nfe"] * 3  # 50 samples = streams of 20, 20 and 10


def test_distilled_image_chain_is_one_evaluation_per_student(chain, monkeypatch):
    calls = _ForwardCounter(monkeypatch)
    _, _, rec = _sample(chain, "distilled_nfe", "distilled", "--teacher-blocks", *_blocks(chain))
    assert rec["nfe"] == rec["nfe_budget"] == 2 and rec["nfe_per_block"] == [1, 1] and rec["num_students"] == 2
    assert calls.calls == 2 * 3


def test_dopri5_image_chain_counts_its_evaluations(chain, monkeypatch):
    calls = _ForwardCounter(monkeypatch)
    _, _, rec = _sample(chain, "dopri5", "dopri5", "--rtol", 0.05, "--atol", 0.05, n=40, block_size=20)
    assert len(rec["nfe_per_block"]) == N and rec["nfe_min"] <= rec["nfe"] <= rec["nfe_max"]
    assert rec["nfe"] == pytest.approx(sum(rec["nfe_per_block"]))
    assert calls.calls == pytest.approx(2 * rec["nfe"])  # two equal streams: twice the mean


def _cost_of_chain(root):
    blocks = [_json(b / "run.json") for b in _blocks(root)]
    pushes = [_json(root / f"pool_{n}.json") for n in range(1, N)]  # pool_N serves distillation only
    return blocks, pushes


def test_distilled_sample_file_and_its_training_cost(chain):
    images, labels, rec = _sample(chain, "distilled", "distilled", "--teacher-blocks", *_blocks(chain), "--run",
                                  "lfm-test")
    assert images.dtype == np.uint8 and images.shape == (50, *SHAPE)
    np.testing.assert_array_equal(labels, np.arange(50) % NUM_CLASSES)
    assert rec["method"] == "lfm" and rec["run"] == "lfm-test" and rec["dataset"] == "digits"
    assert rec["solver"] == "distilled" and rec["num_samples"] == 50 and rec["num_blocks"] == N
    blocks, pushes = _cost_of_chain(chain)
    assert rec["train_steps"] == sum(b["steps"] for b in blocks) == N * STEPS
    assert rec["distill_steps"] == 2 * DISTILL_STEPS
    assert rec["push_evaluations"] == POOL * PUSH_NFE * (N - 1)
    assert rec["train_samples"] == N * STEPS * BATCH
    assert rec["block_train_seconds"] == pytest.approx(sum(b["train_seconds"] for b in blocks), abs=0.011)
    assert rec["push_seconds"] == pytest.approx(sum(p["seconds"] for p in pushes), abs=0.011)
    assert rec["train_seconds"] == pytest.approx(rec["block_train_seconds"] + rec["push_seconds"], abs=0.011)


def test_block_sample_file_and_its_training_cost(chain):
    images, labels, rec = _sample(chain, "euler_cost", "euler", "--nfe-per-block", 2, n=30)
    assert images.dtype == np.uint8 and images.shape == (30, *SHAPE)
    np.testing.assert_array_equal(labels, np.arange(30) % NUM_CLASSES)
    assert rec["method"] == "lfm" and rec["run"] == "lfm" and rec["nfe"] == 2 * N
    assert rec["train_steps"] == N * STEPS and rec["train_samples"] == N * STEPS * BATCH
    assert rec["push_evaluations"] == POOL * PUSH_NFE * (N - 1)
    assert rec["train_seconds"] == pytest.approx(rec["block_train_seconds"] + rec["push_seconds"], abs=0.011)
    assert "distill_steps" not in rec


# ---------------------------------------------------------------------------------------------------------------------
# Noise streams and seeds
# ---------------------------------------------------------------------------------------------------------------------


def test_same_seed_gives_the_same_samples(chain):
    a = _sample(chain, "seed1a", "euler", "--nfe-per-block", 1, seed=1)[0]
    b = _sample(chain, "seed1b", "euler", "--nfe-per-block", 1, seed=1)[0]
    c = _sample(chain, "seed2", "euler", "--nfe-per-block", 1, seed=2)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # sample i depends on stream i // block_size only: a prefix of a larger set is the smaller set
    small = _sample(chain, "seed1small", "euler", "--nfe-per-block", 1, seed=1, n=20)[0]
    np.testing.assert_array_equal(small, a[:20])


def test_cli_samples_are_the_conditional_chain_from_the_stream_noise(chain):
    images, labels, _ = _sample(chain, "direct", "heun", "--nfe-per-block", 2, n=25, block_size=10, seed=4)
    nets = [lfm_chain.load_block(b)[0] for b in _blocks(chain)]
    vs = [block_velocity(net) for net in nets]
    out = []
    for b, start in enumerate(range(0, 25, 10)):
        n = min(10, 25 - start)
        z = torch.randn((n, *SHAPE), generator=block_generator(4, b))
        y = torch.as_tensor(labels[start : start + n])
        with torch.no_grad():
            out.append(blfm.sample_chain([functools.partial(v, y=y) for v in vs], z, "heun", 2).x)
    np.testing.assert_array_equal(images, to_uint8(torch.cat(out)).numpy())


class _Zero(nn.Module):
    """A velocity (or student) network of zeros that records its labels."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t, y=None):
        self.seen.append(y)
        return torch.zeros_like(x)


@pytest.mark.parametrize("solver,k", [("euler", 2), ("heun", 2), ("dopri5", None), ("distilled", None)])
def test_zero_velocity_chain_returns_the_flow_matching_noise(solver, k):
    seed, n, block_size = 7, 25, 10
    labels = torch.arange(n) % NUM_CLASSES
    nets = [_Zero() for _ in range(N)]
    x, rec = lfm_chain.generate_chain(nets, solver, k, n, seed, block_size, progress=False, sample_shape=SHAPE,
                                    labels=labels)
    noise = torch.cat([torch.randn((min(block_size, n - s), *SHAPE), generator=block_generator(seed, b))
                       for b, s in enumerate(range(0, n, block_size))])
    assert x.shape == (n, *SHAPE) and x.dtype == np.float32
    if solver == "dopri5":  # torchdiffeq evaluates the end point by interpolation: float32 rounding only
        np.testing.assert_allclose(x, noise.numpy(), rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(x, noise.numpy())
    for net in nets:  # every call is conditioned on its own stream's labels
        assert net.seen and all(y is not None for y in net.seen)
        assert {tuple(y.tolist()) for y in net.seen} == {tuple(labels[s : s + block_size].tolist())
                                                         for s in range(0, n, block_size)}
    if k is not None:
        assert rec["nfe"] == N * k


# ---------------------------------------------------------------------------------------------------------------------
# Chain checks of sampling and distillation
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "folders,message",
    [
        (["student_3"], "folder 1 of the chain covers blocks 3..3"),
        (["student_3", "student_1-2"], "folder 1 of the chain covers blocks 3..3"),
        (["student_1-2"], "cover blocks 1..2 of a 3-block chain"),
        (["student_1-2", "student_3", "student_3"], "folder 3 of the chain covers blocks 3..3"),
    ],
)
def test_sample_rejects_student_sets_that_do_not_cover_the_chain(chain, capsys, folders, message):
    out = chain / "samples" / "never.npz"
    argv = ["lfm", "sample", "--blocks", *[str(chain / f) for f in folders], "--solver", "distilled", "--num-samples",
            "10", "--quiet", "--out", str(out)]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    specs = [lfm_chain.load_student(chain / f)[1] for f in folders]
    with pytest.raises(ValueError, match=re.escape(message)):
        lfm_chain.check_chain(specs)


def test_check_chain_accepts_the_student_groups():
    """Students of every grouping of distill_groups pass; a mixed interpolant does not.

    The groupings are checked against the rule written out (the free block 4 keeps its own student, the OU blocks
    1..3 are split into runs, earlier runs one longer). Acceptance itself returns nothing, so it can only be shown
    by not raising; that it is not vacuous is shown by the same groups with a gap, an overlap or a missing last
    block, which must all be refused."""
    base = {"num_blocks": 4, "dataset": "digits", "interpolant": "linear", "network": "dit-digits-tiny"}
    expected = {1: [(1, 4)], 2: [(1, 3), (4, 4)], 3: [(1, 2), (3, 3), (4, 4)], 4: [(1, 1), (2, 2), (3, 3), (4, 4)]}
    for k in range(1, 5):
        assert distill_groups(4, k) == expected[k]
        lfm_chain.check_chain([{**base, "block": a, "last_block": b} for a, b in distill_groups(4, k)])
        bad_groups = [expected[k][:-1] or [(1, 3)],  # the chain stops short of block 4
                      [(a + 1, b) for a, b in expected[k][:1]] + expected[k][1:],  # a gap before the first student
                      expected[k] + [(4, 4)]]  # block 4 twice
        for groups in bad_groups:
            with pytest.raises(ValueError, match="blocks"):
                lfm_chain.check_chain([{**base, "block": a, "last_block": b} for a, b in groups])
    with pytest.raises(ValueError, match="share one dataset"):
        lfm_chain.check_chain([{**base, "block": 1, "last_block": 3},
                              {**base, "block": 4, "last_block": 4, "interpolant": "trig"}])


def test_distill_refuses_pools_with_different_labels(chain, tmp_path, capsys):
    with np.load(chain / "pool_3.npz") as f:
        x, labels = f["x"], f["labels"]
    np.savez(tmp_path / "relabelled.npz", x=x, labels=(labels + 1) % NUM_CLASSES)
    out = tmp_path / "student_3"
    assert cli.main(["lfm", "distill", "--blocks", str(chain / "block_3"), "--pool-in", str(chain / "pool_2.npz"),
                     "--pool-out", str(tmp_path / "relabelled.npz"), "--steps", "1", "--quiet", "--out",
                     str(out)]) == 2
    assert "different labels" in capsys.readouterr().err
    np.savez(tmp_path / "unlabelled.npz", x=x)
    assert cli.main(["lfm", "distill", "--blocks", str(chain / "block_3"), "--pool-in", str(chain / "pool_2.npz"),
                     "--pool-out", str(tmp_path / "unlabelled.npz"), "--steps", "1", "--quiet", "--out",
                     str(out)]) == 2
    assert "different labels" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("blocks", [(1, 3), (2, 1), (1, 2, 2)])
def test_distill_refuses_blocks_that_are_not_consecutive(chain, tmp_path, capsys, blocks):
    out = tmp_path / "student"
    assert cli.main(["lfm", "distill", "--blocks", *[str(chain / f"block_{n}") for n in blocks], "--pool-in",
                     str(chain / "pool_0.npz"), "--pool-out", str(chain / "pool_3.npz"), "--steps", "1", "--quiet",
                     "--out", str(out)]) == 2
    assert "consecutive blocks" in capsys.readouterr().err
    assert not out.exists()


def test_student_records(chain):
    s12, s3 = _json(chain / "student_1-2" / "run.json"), _json(chain / "student_3" / "run.json")
    assert (s12["block"], s12["last_block"], s12["kind"]) == (1, 2, "student")
    assert (s3["block"], s3["last_block"]) == (3, 3) and s3["h"] == [None]
    assert s12["teacher_steps"] == 2 * STEPS and s3["teacher_steps"] == STEPS and s12["num_pairs"] == POOL
    assert s12["network"] == "dit-digits-tiny" and s12["num_classes"] == NUM_CLASSES


# ---------------------------------------------------------------------------------------------------------------------
# lfm_config
# ---------------------------------------------------------------------------------------------------------------------


def test_distill_groups_examples():
    assert distill_groups(4, 4) == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert distill_groups(4, 2) == [(1, 3), (4, 4)]
    assert distill_groups(9, 3) == [(1, 4), (5, 8), (9, 9)]
    assert distill_groups(4, 1) == [(1, 4)]
    assert distill_groups(1, 1) == [(1, 1)]
    for bad in (0, 5):
        with pytest.raises(ValueError):
            distill_groups(4, bad)
    assert [student_folder(a, b) for a, b in distill_groups(4, 2)] == ["student_1-3", "student_4"]


@pytest.mark.parametrize("num_blocks", range(1, 10))
def test_distill_groups_cover_the_chain_in_order(num_blocks):
    for k in range(1, num_blocks + 1):
        groups = distill_groups(num_blocks, k)
        assert len(groups) == k
        assert [b for a, last in groups for b in range(a, last + 1)] == list(range(1, num_blocks + 1))
        assert all(a <= last for a, last in groups)
        if k >= 2:  # the free block keeps its own student; the OU runs differ in length by at most one
            assert groups[-1] == (num_blocks, num_blocks)
            sizes = [last - a + 1 for a, last in groups[:-1]]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("solver,nfe,tol", [("euler", 6, None), ("heun", 12, None), ("dopri5", 0, 0.05),
                                            ("dopri5", 0, 1e-3), ("distilled", 2, None)])
def test_image_sample_tag_is_a_sweep_tag(solver, nfe, tol):
    tag = image_sample_tag(solver, nfe, 3, tol)
    m = re.fullmatch(TAG_PATTERN, tag)
    assert m is not None, tag
    assert m["nfe"] == str(nfe) and m["seed"] == "3" and m["guidance"] == "none"
    assert m["solver"] == solver if tol is None else m["solver"].startswith(f"{solver}-tol")


def test_image_sample_tags_of_different_tolerances_differ():
    tags = {image_sample_tag("dopri5", 0, 0, tol) for tol in (1e-3, 1.5e-3, 2e-3, 0.05, 0.0501)}
    assert len(tags) == 5


def _ci():
    with open("config/ci.yaml") as f:
        return yaml.safe_load(f)


def test_image_sample_sets_of_the_ci_config():
    cfg = validate_config(_ci())
    lfm, images = cfg["lfm_images"], cfg["images"]
    sets = image_sample_sets(lfm, images)
    tags = [(s["chain"], s["tag"]) for s in sets]
    assert len(tags) == len(set(tags))
    assert all(re.fullmatch(TAG_PATTERN, s["tag"]) for s in sets)
    distilled = sorted(s["num_students"] for s in sets if s["solver"] == "distilled")
    assert distilled == sorted(lfm["sample"]["distilled"]) * len(images["sample"].get("seeds", [0]))
    assert {s["chain"] for s in sets} == {"lfm", *(f"lfm-at{k}" for k in lfm["budgets"])}


# ---------------------------------------------------------------------------------------------------------------------
# lfm_images config checks
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ci", "config"])
def test_shipped_configs_validate(name):
    with open(f"config/{name}.yaml") as f:
        cfg = validate_config(yaml.safe_load(f))
    assert "lfm_images" in cfg and cfg["images"]["train"]["steps"] % cfg["lfm_images"]["num_blocks"] == 0


@pytest.mark.parametrize(
    "mutate,key",
    [
        (lambda c: c["images"]["train"].__setitem__("steps", 61), "images.train.steps"),
        (lambda c: c["lfm_images"].__setitem__("budgets", [31]), "lfm_images.budgets (31)"),
        (lambda c: c["lfm_images"].__setitem__("budgets", [c["images"]["train"]["steps"]]), "lfm_images.budgets"),
        (lambda c: c["lfm_images"]["sample"].__setitem__("distilled", [c["lfm_images"]["num_blocks"] + 1]),
         "lfm_images.sample.distilled"),
        (lambda c: c["lfm_images"].__setitem__("compare_sweeps", ["lfm-compare", "no-such-sweep"]),
         "lfm_images.compare_sweeps"),
        (lambda c: c.pop("images"), "lfm_images"),
        (lambda c: c["lfm_images"].__setitem__("push", {"solver": "heun", "nfe": 3}), "lfm_images.push.nfe"),
    ],
)
def test_bad_lfm_images_values_name_the_key(mutate, key):
    assert_refused(_ci(), mutate, key)

