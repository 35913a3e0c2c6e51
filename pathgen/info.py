"""``pathgen info``: what was built, against what, and what this machine can run."""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import json
import os
import platform
from pathlib import Path

import torch

OPS = ("denoise_step", "coattention")


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _importable(module: str) -> tuple[bool, str]:
    try:
        mod = importlib.import_module(module)
        return True, getattr(mod, "__version__", "") or ""
    except Exception as exc:  # noqa: BLE001 - report any failure to import (missing libs too)
        return False, f"{type(exc).__name__}: {exc}".splitlines()[0][:120]


def thp_mode() -> str:
    """The system's transparent-huge-page mode (always | madvise | never), or "unknown"."""
    try:
        return Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "unknown"


def _huge_pages() -> str:
    """Whether torch's CPU allocator asks for transparent huge pages, and what the kernel allows."""
    asked = os.environ.get("THP_MEM_ALLOC_ENABLE", "0") not in ("", "0")
    return f"{'asked' if asked else 'not asked'} (THP_MEM_ALLOC_ENABLE), system mode {thp_mode()}"


def collect() -> dict:
    from pathgen import __version__
    from pathgen import _extension as ext

    kernels = {}
    for op in OPS:
        kernels[op] = {dev: ext.has_kernel(op, dev) for dev in ("cpu", "cuda")}
    backends = {}
    for name, module in (("cucim", "cucim"), ("openslide", "openslide"), ("tifffile", "tifffile")):
        ok, detail = _importable(module)
        backends[name] = {"importable": ok, "detail": detail}
    # threads the compiled CPU kernels really run (ATen's parallel_for inside the extension)
    kernel_threads = torch.ops.pathgen._parallel_threads(64) if ext.HAS_OPS else None
    parallel = torch.__config__.parallel_info()
    backend_line = next((ln for ln in parallel.splitlines() if "parallel backend" in ln), "")
    return {
        "pathgen": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "extension_loaded": ext.HAS_OPS,
        "extension_error": ext.LOAD_ERROR,
        "build": ext.BUILD_INFO,
        "kernels": kernels,
        "threads": torch.get_num_threads(),
        "huge_pages": _huge_pages(),
        "kernel_threads": kernel_threads,
        "parallel_backend": backend_line.split(":")[-1].strip(),
        "gpu_visible": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "slide_backends": backends,
        "packages": {p: _version(p) for p in ("numpy", "h5py", "pandas", "lifelines", "tifffile",
                                               "openslide-python", "cucim-cu13", "scikit-build-core")},
    }


def format_report(info: dict) -> str:
    b = info["build"]
    lines = [
        f"pathgen {info['pathgen']}  (python {info['python']})",
        f"torch   {info['torch']}  (CUDA {info['torch_cuda'] or 'none'})",
        f"extension pathgen._C: {'loaded' if info['extension_loaded'] else 'NOT loaded -> pure-PyTorch twins'}",
    ]
    if info["extension_error"]:
        lines.append(f"  reason: {info['extension_error']}")
    if b:
        archs = b.get("cuda_archs") or "-"
        cuda = f"yes (nvcc {b.get('nvcc_version')}, archs {archs})" if b.get("with_cuda") else \
            f"no ({b.get('cuda_reason')})"
        lines += [f"  built for torch {b.get('torch_version')}, {b.get('cxx_compiler')}, {b.get('build_type')}",
                  f"  CUDA kernels compiled: {cuda}"]
    lines.append("kernels:")
    for op, devs in info["kernels"].items():
        lines.append(f"  {op:<14} cpu={'yes' if devs['cpu'] else 'no':<4} cuda={'yes' if devs['cuda'] else 'no'}")
    lines += [
        f"threads: {info['threads']} ({info['parallel_backend']})"
        + ("" if info.get("kernel_threads") is None else f"; the CPU kernels run on {info['kernel_threads']}"),
        f"huge pages for tensors: {info['huge_pages']}",
        f"GPU visible: {'yes: ' + ', '.join(info['gpus']) if info['gpu_visible'] else 'no'}",
        "slide backends:",
    ]
    for name, st in info["slide_backends"].items():
        lines.append(f"  {name:<10} {'ok ' + st['detail'] if st['importable'] else 'missing (' + st['detail'] + ')'}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def main(args: argparse.Namespace) -> int:
    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_report(info))
    return 0
