"""The latent-dataset pipeline (gmflow/harness/data_latents.py): ADM centre crop, cache independent of the batch size,
resuming a killed encode, clear refusals, decoding, and the config checks of imagenet256."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from project import ROOT, validate_config

from gmflow.harness.data_latents import (
    LatentDataError,
    center_crop_adm,
    decode_latents,
    encode_image_folder,
    load_latent_cache,
    load_vae,
    read_latent_index,
    save_tiny_vae,
    scan_image_folder,
    write_toy_image_folder,
)
from gmflow.harness.schema import ConfigError


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    write_toy_image_folder(root / "train", num_classes=3, per_class=4)
    save_tiny_vae(root / "vae")
    return root


def _encode(toy, out, **kw):
    opts = {"resolution": 32, "batch_size": 5, "shard_size": 5, "device": "cpu", "progress": False, **kw}
    return encode_image_folder(toy / "train", toy / "vae", out, **opts)


def test_center_crop_adm_hand_made_case():
    # 40 x 10 (W x H), resolution 4: short side 10 >= 8 -> box-halve to 20 x 5; 5 < 8 stops; bicubic to
    # round(20 * 4/5) x 4 = 16 x 4; crop columns (16 - 4) // 2 = 6 .. 10. A horizontal ramp that is constant down the
    # columns keeps every step's result checkable: rows equal, columns the centre of the resized ramp.
    arr = np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (10, 1, 3))  # (H=10, W=40, 3)
    img = Image.fromarray(arr)
    out = center_crop_adm(img, 4)
    expected = np.asarray(
        img.resize((20, 5), resample=Image.BOX).resize((16, 4), resample=Image.BICUBIC))[0:4, 6:10]
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    assert (out == out[:1]).all()  # constant down the columns
    assert 6 * 6 * 2 <= out[0, 0, 0] <= out[0, -1, 0] <= 6 * 14 * 2  # the centre of the ramp (box pairs average)
    # grayscale input becomes RGB; an exact-size square is unchanged
    sq = np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)
    np.testing.assert_array_equal(center_crop_adm(Image.fromarray(sq), 8), np.repeat(sq[..., None], 3, -1))


def test_cache_does_not_depend_on_batch_size(toy, tmp_path):
    _encode(toy, tmp_path / "a", batch_size=1)
    _encode(toy, tmp_path / "b", batch_size=7)
    za, ya, ia = load_latent_cache(tmp_path / "a")
    zb, yb, ib = load_latent_cache(tmp_path / "b")
    assert za.shape == (12, 4, 4, 4) and za.dtype == torch.float16
    assert ya.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    torch.testing.assert_close(za.float(), zb.float(), atol=2e-3, rtol=0)
    assert ia["key"] == ib["key"] and ia["num_classes"] == 3 and ia["class_names"] == ["class0", "class1", "class2"]
    assert ia["scaling_factor"] == pytest.approx(0.18215) and len(ia["vae_sha1"]) == 40
    # a posterior SAMPLE: another seed changes the latents
    _encode(toy, tmp_path / "c", seed=1)
    assert not torch.allclose(load_latent_cache(tmp_path / "c")[0].float(), za.float())


def test_killed_encode_resumes_by_shard(toy, tmp_path):
    out = tmp_path / "cache"
    part = _encode(toy, out, limit_shards=1)  # "killed" after its first shard
    assert not part["complete"] and not (out / "index.json").exists()
    with pytest.raises(LatentDataError, match="not a complete latent cache"):
        read_latent_index(out)
    first = (out / "shard-00000.safetensors").stat().st_mtime_ns
    full = _encode(toy, out)
    assert full["complete"] and full["num_shards"] == 3
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == first  # kept, not re-encoded
    _encode(toy, tmp_path / "fresh")
    torch.testing.assert_close(load_latent_cache(out)[0], load_latent_cache(tmp_path / "fresh")[0])
    # a shard made with other settings is not reused
    other = _encode(toy, out, dtype="float32")
    assert load_latent_cache(out)[0].dtype == torch.float32 and other["key"] != full["key"]


def test_refusals_are_one_line(toy, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatentDataError, match="is empty"):
        scan_image_folder(tmp_path / "empty")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    with pytest.raises(LatentDataError, match="holds no image"):
        scan_image_folder(tmp_path / "noimg")
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(LatentDataError, match="cannot read image"):
        encode_image_folder(tmp_path / "bad", toy / "vae", tmp_path / "o", resolution=32, device="cpu",
                            progress=False)
    with pytest.raises(LatentDataError, match="no such folder"):
        load_vae(tmp_path / "missing-vae")
    with pytest.raises(LatentDataError, match="not in the Hugging Face cache"):
        load_vae("nobody-has/this-vae")


def test_decode_gives_uint8_rgb(toy):
    vae, info = load_vae(toy / "vae")
    z = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    img = decode_latents(z, vae, info.scaling_factor, batch_size=2)
    assert img.shape == (3, 3, 32, 32) and img.dtype == torch.uint8


def test_imagenet_configs_validate_and_require_paths():
    smoke = yaml.safe_load(open(ROOT / "config/imagenet-smoke.yaml"))
    validate_config(smoke)
    paper = yaml.safe_load(open(ROOT / "config/imagenet256.yaml"))
    with pytest.raises(ConfigError, match="'image_root' is a required property when dataset = 'imagenet256'"):
        validate_config(json.loads(json.dumps(paper)))
    paper["images"].update(image_root="/data/train", vae="/models/vae")
    checked = validate_config(paper)
    images = checked["images"]
    assert checked["precision"] == "bf16" and images["train"]["batch_size"] == 4096
    assert images["train"]["batch_size"] % images["train"]["micro_batch_size"] == 0
    assert images["sample"]["num_samples"] == 50000 and images["runs"]["gm-k8"]["K"] == 8
    smoke["images"]["sweeps"]["nfe"]["extractors"] = ["classifier"]
    with pytest.raises(ConfigError, match="no in-domain classifier"):
        validate_config(smoke)
