"""Make the data of config/imagenet-smoke.yaml: a toy ImageFolder of JPEGs and a tiny random AutoencoderKL.

    python scripts/make_imagenet_smoke.py --out data/imagenet-smoke   # writes train/ and vae/ (a few hundred KB)

Nothing here is ImageNet or the SD VAE: the smoke configuration runs the ImageNet path (encode, train, sample,
decode, TF-Inception metrics) end to end on CPU in about a minute, and its numbers mean nothing.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gmflow.harness.data_latents import save_tiny_vae, write_toy_image_folder  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder that gets train/ (4 classes x 8 JPEGs, 64x80) and vae/")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--per-class", type=int, default=8)
    a = p.parse_args()
    write_toy_image_folder(Path(a.out) / "train", a.classes, a.per_class)
    save_tiny_vae(Path(a.out) / "vae")
    print(f"{a.out}/train ({a.classes} classes x {a.per_class} JPEGs) and {a.out}/vae (tiny AutoencoderKL)")
