"""Execute a notebook with papermill (parameters injected) and render it to HTML with nbconvert."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import nbformat
import papermill as pm
from nbconvert import HTMLExporter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--notebook", required=True, help="source notebook (committed without outputs)")
    p.add_argument("--out", required=True, help="executed notebook")
    p.add_argument("--html", required=True, help="rendered HTML")
    p.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="string parameter")
    a = p.parse_args()
    params = {k: v for k, v in a.p}
    params["results"] = os.path.abspath(params.get("results", "results"))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(a.notebook, a.out, parameters=params, kernel_name="python3", progress_bar=False,
                        cwd=str(Path(a.notebook).resolve().parent))
    nb = nbformat.read(a.out, as_version=4)
    body, _ = HTMLExporter(exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(nb)
    Path(a.html).write_text(body)


if __name__ == "__main__":
    main()
