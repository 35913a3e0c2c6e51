"""One-line, actionable errors for slide problems: each names the file, the problem and the fix."""
from __future__ import annotations

import os


class SlideError(RuntimeError):
    """A slide cannot be used as is. ``str(err)`` is one line: ``<file>: <problem>; fix: <fix>``.

    Args:
        path: the slide file.
        problem: what is wrong, in a few words.
        fix: what the user can do about it.
    """

    def __init__(self, path: str | os.PathLike, problem: str, fix: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())
        self.fix = " ".join(str(fix).split())
        super().__init__(f"{self.path}: {self.problem}; fix: {self.fix}")


class UnsupportedSlideError(SlideError):
    """No installed backend can open the file (corrupt, truncated, not a slide, unknown format)."""


class MissingMPPError(SlideError):
    """The slide has no microns-per-pixel metadata and no override was given."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(
            path,
            "no microns-per-pixel (MPP) in the slide metadata, so physical patch sizes are unknown",
            "pass --mpp X (µm/px at level 0, e.g. 0.25 for 40x, 0.5 for 20x) or --mpp-csv CSV "
            "with columns slide_id,mpp",
        )


class NoTissueError(SlideError):
    """Segmentation (or the tissue-fraction filter) kept no patch."""


class BackendUnavailableError(ImportError):
    """A requested backend is not installed; the message carries the pip command."""


def slide_read_error(path, what: str, exc: BaseException) -> SlideError:
    """A decode failure while reading ``path`` (OpenSlideError, a codec error, ...) as a bad-input
    ``SlideError``: ``what`` failed, the cause in one line, and the fix."""
    return SlideError(path, f"{what} failed ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})",
                      "the file may be corrupt: copy it again, or try another --backend")
