"""Files: atomic writes, safetensors checkpoints, and the provenance record written beside every output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TRACKED_PACKAGES = ("torch", "numpy", "diffusers", "snakemake", "safetensors", "scikit-learn", "torch-fidelity")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: results in a shared folder follow the user's umask


def atomic_path(path: str | Path):
    """A temporary path in the same folder, with the user's umask applied (``mkstemp`` alone gives 0600);
    ``os.replace`` it onto ``path`` when complete."""
    path = Path(path)
    check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    return Path(tmp)


def check_output_path(path: str | Path) -> Path:
    """Make ``path``'s folder and check that a file can be written there; ``ValueError`` naming the folder if its
    parent is a file or it is not writable (called before long work, so that nothing is computed in vain)."""
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"cannot write {path}: a part of {folder} is a file, not a folder") from None
    except PermissionError:
        raise ValueError(f"cannot write {path}: no permission to create the folder {folder}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: the folder {folder} is not writable")
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder")
    return path


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata_: dict | None = None) -> None:
    """Write ``tensors`` atomically (a killed job never leaves a half-written file)."""
    tmp = atomic_path(path)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
              metadata={k: str(v) for k, v in (metadata_ or {}).items()})
    os.chmod(tmp, FILE_MODE)  # safetensors creates the file anew (mode 0600)
    os.replace(tmp, path)


def file_hash(path: str | Path, algorithm: str = "sha1") -> str:
    """Hex digest of a file's bytes (``sha1``, ``sha256``, ...), read in chunks."""
    import hashlib

    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, empty, truncated or foreign file raises one clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); make it again "
                         "(retrain or re-import the run)") from None


def load_npz(path: str | Path, required: tuple[str, ...] = ()) -> dict:
    """The arrays of an ``.npz`` file with the ``required`` keys; a missing, empty or foreign file, or one without
    those keys or with no rows, raises one clear error."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception as e:  # zipfile, EOF and format errors of a file that is not an npz
        raise ValueError(f"{path} is not a readable .npz file ({type(e).__name__}: {e})") from None
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{path} lacks the arrays {missing} (it has {sorted(data)}); is it the right kind of file?")
    empty = [k for k in required if data[k].ndim and len(data[k]) == 0]
    if empty:
        raise ValueError(f"{path}: the arrays {empty} are empty")
    return data


def _split_tensors(obj, tensors: dict[str, torch.Tensor]):
    """JSON skeleton of a nested dict/list/tuple of tensors and plain values; tensors go to ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _split_tensors(v, tensors) for k, v in obj.items()}}
        if all(isinstance(k, int) for k in obj):  # optimiser state is keyed by parameter index
            return {"__intdict__": [[k, _split_tensors(v, tensors)] for k, v in obj.items()]}
        raise TypeError(f"state dict keys must be all str or all int, got {sorted(map(type, obj), key=str)}")
    if isinstance(obj, list | tuple):
        return {"__list__" if isinstance(obj, list) else "__tuple__": [_split_tensors(v, tensors) for v in obj]}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a training state (tensors and plain values only)")


def _join_tensors(node, tensors: dict[str, torch.Tensor]):
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__dict__" in node:
            return {k: _join_tensors(v, tensors) for k, v in node["__dict__"].items()}
        if "__intdict__" in node:
            return {int(k): _join_tensors(v, tensors) for k, v in node["__intdict__"]}
        if "__list__" in node:
            return [_join_tensors(v, tensors) for v in node["__list__"]]
        if "__tuple__" in node:
            return tuple(_join_tensors(v, tensors) for v in node["__tuple__"])
        raise ValueError(f"unknown node in a training state: {sorted(node)}")
    return node


def save_state(obj: dict, path: str | Path) -> None:
    """Write a resumable training state (weights, optimiser, schedule, generator, counters) as ONE safetensors file:
    the tensors as safetensors, everything else as a JSON skeleton in its header. Atomic. No pickle is written, so
    loading a state can never run code (:func:`load_state`)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split_tensors(obj, tensors)
    save_safetensors(tensors, path, {"format": "gmflow-bench-state-1", "skeleton": json.dumps(skeleton)})


def load_state(path: str | Path) -> dict:
    """Read a state written by :func:`save_state`; a file that is not one is refused with ``ValueError``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"{path} is not a readable training state ({type(e).__name__}: {e}); delete it to train "
                         "from the start") from None
    if meta.get("format") != "gmflow-bench-state-1" or "skeleton" not in meta:
        raise ValueError(f"{path} is not a training state of this project (format {meta.get('format')!r}); delete it "
                         "to train from the start")
    return _join_tensors(json.loads(meta["skeleton"]), tensors)


def write_json(obj, path: str | Path) -> None:
    tmp = atomic_path(path)
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(config: dict | None = None, **extra) -> dict:
    """Resolved config, git commit, package versions and machine: written as JSON beside each output."""
    versions = {}
    for pkg in TRACKED_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "config": config,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "packages": versions,
        "machine": {"platform": platform.platform(), "processor": platform.machine(),
                    "torch_threads": torch.get_num_threads()},
        "command": " ".join(sys.argv),
        **extra,
    }


def save_npz(path: str | Path, **arrays) -> None:
    """``np.savez`` to ``path`` atomically."""
    import numpy as np

    tmp = atomic_path(path)
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def save_csv(df, path: str | Path) -> None:
    """``DataFrame.to_csv`` to ``path`` atomically."""
    tmp = atomic_path(path)
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def read_benchmark(path: str | Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one Snakemake benchmark file (columns ``s`` and ``cpu_time``); the mean over
    its rows when the job was repeated; CPU seconds are nan where the file has none."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: empty benchmark file")
    wall = sum(float(r["s"]) for r in rows) / len(rows)
    cpu = sum(float(r.get("cpu_time") or "nan") for r in rows) / len(rows)
    return wall, cpu


def benchmark_span(bench_dir: str | Path, patterns: tuple[str, ...] = ("*",)) -> tuple[float, float, int]:
    """Snakemake per-job benchmark files ``{bench_dir}/{pattern}/*.tsv``: (sum of job seconds, wall span from the first
    job's start to the last job's end, job count). A job's end is its file's modification time, its start that minus
    its seconds (:func:`read_benchmark`). ``(nan, nan, 0)`` when there is none."""
    import glob

    starts, ends, total = [], [], 0.0
    for pat in patterns:
        for path in glob.glob(os.path.join(str(bench_dir), pat, "*.tsv")):
            s = read_benchmark(path)[0]
            end = os.path.getmtime(path)
            starts.append(end - s)
            ends.append(end)
            total += s
    if not ends:
        return float("nan"), float("nan"), 0
    return total, max(ends) - min(starts), len(ends)
