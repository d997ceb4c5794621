"""``results/index.html``: the page a person opens first.

It holds the claims tables (the paper's claim, our number, the paper's, and the verdict: agrees, disagrees or within
noise), a link to every rendered report, and one sample grid per image run at the headline NFE. It reads only
``results/`` and embeds the grids as PNG data, so the page is one file that opens anywhere.
"""

from __future__ import annotations

import base64
import html
import io as _io
import json
from pathlib import Path

import numpy as np
import pandas as pd

CLAIM_COLUMNS = ["dataset", "figure", "claim", "ours", "paper", "verdict", "agrees"]


def sample_grid_png(images: np.ndarray, columns: int = 10, count: int = 50) -> bytes:
    """A PNG of the first ``count`` uint8 images ``(N, C, H, W)`` (C = 1 or 3) in rows of ``columns``."""
    from PIL import Image

    images = np.asarray(images)[:count]
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {images.shape}")
    n, c, h, w = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * (h + 1) + 1, columns * (w + 1) + 1, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, columns)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = img.transpose(1, 2, 0)
    pil = Image.fromarray(grid[..., 0] if c == 1 else grid).resize((grid.shape[1] * 3, grid.shape[0] * 3),
                                                                   Image.NEAREST)
    buf = _io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def _headline_sets(results: Path, nfe: int) -> list[tuple[str, str, Path]]:
    """(dataset, run, sample file) per image run: its guided sample set at ``nfe`` if there is one, else unguided;
    the GM-ODE 2 / DPM++ 2M / Euler set first when several solvers were run."""
    preferred = ("gm-ode-2", "dpm++-2m", "unipc", "euler")
    out = []
    for run_dir in sorted(p for p in (results / "images").glob("*/*") if (p / "samples").is_dir()):
        files = sorted((run_dir / "samples").glob(f"*_nfe{nfe}_*.npz"))
        if not files:
            continue
        rank = {f: (f.name.split("_nfe")[0] not in preferred,
                    preferred.index(f.name.split("_nfe")[0]) if f.name.split("_nfe")[0] in preferred else 0,
                    "_gnone" in f.name, f.name) for f in files}
        out.append((run_dir.parent.name, run_dir.name, min(files, key=rank.get)))
    return out


def _table_html(df: pd.DataFrame) -> str:
    cols = [c for c in CLAIM_COLUMNS if c in df.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = "" if pd.isna(r[c]) else str(r[c])
            cls = f' class="{v.replace(" ", "-")}"' if c == "verdict" else ""
            cells.append(f"<td{cls}>{html.escape(v)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def write_index(results: str | Path, out: str | Path, nfe: int = 6) -> dict:
    """Write ``out`` (normally ``results/index.html``) from what ``results`` holds; returns what it shows."""
    results, out = Path(results), Path(out)
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>GMFlow benchmark: results</title><style>",
             "body{font-family:sans-serif;margin:2em;max-width:80em} table{border-collapse:collapse;font-size:90%}",
             "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top} .agrees{background:#d9f2d9}",
             ".disagrees{background:#f6d5d5} .within-noise{background:#f2f2d0} img{image-rendering:pixelated}",
             "</style></head><body><h1>GMFlow benchmark: results</h1>",
             f"<p>Everything below is read from <code>{html.escape(str(results))}</code>. Verdicts compare 95% "
             "intervals: overlapping intervals are <em>within noise</em>. The paper's numbers are ImageNet 256 "
             "(DiT-XL/2); ours come from the configured datasets, so only directions are compared.</p>"]
    shown = {"claims": 0, "reports": [], "grids": []}
    claim_files = sorted((results / "tables").glob("claims*.csv")) if (results / "tables").is_dir() else []
    parts.append("<h2>The paper's claims</h2>")
    if not claim_files:
        parts.append("<p>No claims table yet (the image experiment has not run).</p>")
    for f in claim_files:
        df = pd.read_csv(f)
        shown["claims"] += len(df)
        parts.append(f"<h3>{html.escape(f.name)}</h3>{_table_html(df)}")
    reports = sorted((results / "reports").glob("*.html")) if (results / "reports").is_dir() else []
    parts.append("<h2>Reports</h2><ul>")
    for r in reports:
        rel = r.relative_to(out.parent) if r.is_relative_to(out.parent) else r
        parts.append(f"<li><a href='{html.escape(str(rel))}'>{html.escape(r.stem)}</a></li>")
        shown["reports"].append(r.name)
    parts.append("</ul>")
    parts.append(f"<h2>Samples at NFE {nfe}</h2>")
    for dataset, run, f in _headline_sets(results, nfe):
        with np.load(f, allow_pickle=False) as data:
            if "images" not in data.files:
                continue
            png = base64.b64encode(sample_grid_png(data["images"])).decode()
            rec = json.loads(str(data["record"])) if "record" in data.files else {}
        label = (f"{dataset} / {run}: {rec.get('solver', f.stem)}, NFE {rec.get('nfe', nfe)}, guidance "
                 f"{rec.get('guidance', '?')} {rec.get('guidance_scale', '')}")
        parts.append(f"<figure><img alt='{html.escape(label)}' src='data:image/png;base64,{png}'>"
                     f"<figcaption>{html.escape(label)}</figcaption></figure>")
        shown["grids"].append(f.name)
    if not shown["grids"]:
        parts.append(f"<p>No image sample set at NFE {nfe}.</p>")
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    from gmflow.harness import io

    tmp = io.atomic_path(out)
    tmp.write_text("\n".join(parts))
    tmp.replace(out)
    return shown
