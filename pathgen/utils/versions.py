"""The pathgen version a checkpoint was written by, against the running one."""
from __future__ import annotations

import warnings
from pathlib import Path


def major_minor(version: str) -> tuple[str, ...]:
    """``"1.4.2+cu130"`` -> ``("1", "4")``."""
    return tuple(str(version).split("+")[0].split(".")[:2])


def warn_if_other_pathgen(path: str | Path, saved: str | None, consequence_and_fix: str,
                          stacklevel: int = 3) -> bool:
    """Warn when ``saved`` (the writer's pathgen version) differs in major.minor from the running one;
    ``consequence_and_fix`` may use ``{series}`` (the writer's ``major.minor``). True if they match."""
    import pathgen

    if saved is None or major_minor(saved) == major_minor(pathgen.__version__):
        return True
    tail = consequence_and_fix.format(series=".".join(major_minor(saved)))
    warnings.warn(f"{path}: written by pathgen {saved}, running pathgen {pathgen.__version__}; {tail}",
                  UserWarning, stacklevel=stacklevel)
    return False
