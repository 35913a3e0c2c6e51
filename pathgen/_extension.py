"""Load the compiled kernels (``pathgen._C``) once, never crashing the import.

``HAS_OPS`` is True when ``torch.ops.pathgen.*`` are registered by the extension. When the
extension is missing, fails to load, or was built for another torch, pathgen warns once
with the rebuild command and every op in ``pathgen.ops`` runs its pure-PyTorch twin.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import warnings
from pathlib import Path

import torch

REBUILD_HINT = (
    "rebuild it against the torch you run with: "
    "`pip install --no-build-isolation -e .` from the pathgen checkout (or `bash dev.sh setup`)"
)

HAS_OPS: bool = False
LOAD_ERROR: str | None = None
BUILD_INFO: dict = {}


def _torch_release(version: str) -> str:
    return version.split("+")[0]


def _load() -> None:
    global LOAD_ERROR
    if os.environ.get("PATHGEN_DISABLE_EXTENSION", "") not in ("", "0"):
        LOAD_ERROR = "pathgen._C disabled by PATHGEN_DISABLE_EXTENSION"
    else:
        _import_extension()
    if not HAS_OPS:
        warnings.warn(
            f"{LOAD_ERROR}; pathgen falls back to its pure-PyTorch reference ops (slower). To fix, {REBUILD_HINT}.",
            RuntimeWarning,
            stacklevel=3,
        )


def _import_extension() -> None:
    global HAS_OPS, LOAD_ERROR, BUILD_INFO
    # the build record sits next to the compiled module (site-packages in editable installs)
    spec = importlib.util.find_spec("pathgen._C")
    if spec is None or spec.origin is None:
        LOAD_ERROR = "pathgen._C is not built"
        return
    info_path = Path(spec.origin).with_name("_build_info.json")
    if info_path.exists():
        try:
            BUILD_INFO = json.loads(info_path.read_text())
        except ValueError:
            BUILD_INFO = {}
    built_for = BUILD_INFO.get("torch_version")
    if built_for and _torch_release(built_for) != _torch_release(torch.__version__):
        LOAD_ERROR = f"pathgen._C was built for torch {built_for}, running torch {torch.__version__}"
    else:
        try:
            importlib.import_module("pathgen._C")
            HAS_OPS = hasattr(torch.ops.pathgen, "denoise_step")
            if not HAS_OPS:
                LOAD_ERROR = "pathgen._C loaded but registered no ops"
        except (ImportError, OSError) as exc:  # missing, or undefined symbols from another torch
            LOAD_ERROR = f"pathgen._C could not be loaded ({exc})"


_load()


def _kernel_table() -> dict[tuple[str, str], bool]:
    """(op, device type) -> compiled kernel present; computed once, after ``_C`` registered."""
    table: dict[tuple[str, str], bool] = {}
    if not HAS_OPS:
        return table
    names = [n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("pathgen::")]
    for op in names:
        table[(op, "cpu")] = torch._C._dispatch_has_kernel_for_dispatch_key(f"pathgen::{op}", "CPU")
        table[(op, "cuda")] = bool(BUILD_INFO.get("with_cuda", False)) and \
            torch._C._dispatch_has_kernel_for_dispatch_key(f"pathgen::{op}", "CUDA")
    return table


KERNELS = _kernel_table()


def has_kernel(op: str, device: str | torch.device) -> bool:
    """True when ``torch.ops.pathgen.<op>`` has a compiled kernel for ``device``'s type
    (a constant table, so ``torch.compile`` traces through it)."""
    dev = device.type if isinstance(device, torch.device) else torch.device(device).type
    return KERNELS.get((op, dev), False)
