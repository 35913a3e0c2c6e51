"""A self-contained HTML report of one run folder: plain HTML + CSS, every figure embedded as a
base64 PNG, no scripts and no external resources (it opens offline, from an e-mail attachment).

``build_report(run_dir)`` assembles the sections of ``pathgen.report.sections`` (each tolerates a
missing file by saying what is missing and which command makes it); ``write_report`` writes it
atomically to ``RUN/report.html``. The helpers here render any JSON generically
(:func:`json_html`), so a key added to a metrics file shows up instead of breaking the report.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from pathgen.utils.io import atomic_write_text

MAX_IMAGE_WIDTH = 1400  # px; wider PNGs are downscaled before embedding

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:1.7em;margin:0.2em 0}h2{font-size:1.3em;margin-top:2em;border-bottom:2px solid #d9dee7;padding-bottom:4px}
h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;margin:8px 0 14px;font-size:0.86em}
th,td{border:1px solid #d9dee7;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#eef1f6;text-align:center}td:first-child,th:first-child{text-align:left}
tr.group td{background:#f7f9fc;font-weight:600}
.missing{background:#fff6e0;border-left:4px solid #e0a800;padding:8px 12px;margin:8px 0}
.error{background:#fdecec;border-left:4px solid #d33;padding:8px 12px;margin:8px 0}
.note{color:#5a6475;font-size:0.88em}
figure{margin:10px 0 18px}figure img{max-width:100%;border:1px solid #e3e6ec}
figcaption{font-size:0.85em;color:#5a6475}
pre{background:#f3f5f8;padding:10px;overflow-x:auto;font-size:0.8em;max-height:520px}
nav ol{columns:2;font-size:0.92em}details{margin:6px 0}summary{cursor:pointer;color:#2a5db0}
.kv td{text-align:left}.kv td:first-child{font-family:ui-monospace,Menlo,monospace;font-size:0.95em}
.small{font-size:0.8em}.flag{color:#b34700;font-weight:600}
"""


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------
def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(x: Any, digits: int = 3) -> str:
    """A cell: None -> "–", floats to ``digits`` decimals (scientific when tiny), lists joined."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "–"
        if x != 0 and abs(x) < 10 ** -digits:
            return f"{x:.2g}"
        if abs(x) >= 1e5:
            return f"{x:.3g}"
        return f"{x:.{digits}f}"
    if isinstance(x, (list, tuple)):
        if len(x) == 2 and all(isinstance(v, (int, float)) or v is None for v in x):
            return f"[{fmt(x[0], digits)}, {fmt(x[1], digits)}]"
        items = [fmt(v, digits) for v in x[:20]]
        return ", ".join(items) + (f", … ({len(x)} in all)" if len(x) > 20 else "")
    return str(x)


def fmt_p(p: Any) -> str:
    """A p-value: 3 decimals, or 2 significant digits below 0.001."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    p = float(p)
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def fmt_ci(est: Any, lo: Any, hi: Any, digits: int = 3) -> str:
    if est is None:
        return "–"
    if lo is None or hi is None:
        return fmt(est, digits)
    return f"{fmt(est, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


# --------------------------------------------------------------------------------------------
# blocks
# --------------------------------------------------------------------------------------------
def table(header: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "", raw: bool = False,
          group_rows: Iterable[int] = ()) -> str:
    """An HTML table; cells are formatted with :func:`fmt` (``raw=True``: cells are trusted HTML)."""
    groups = set(group_rows)
    out = [f'<table class="{esc(cls)}">' if cls else "<table>", "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header)
           + "</tr>"]
    for i, row in enumerate(rows):
        cells = "".join(f"<td>{c if raw else esc(fmt(c))}</td>" for c in row)
        out.append(f'<tr class="group">{cells}</tr>' if i in groups else f"<tr>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def missing(what: str, command: str, why: str = "") -> str:
    """The note a section shows instead of its content."""
    extra = f" {esc(why)}" if why else ""
    return (f'<div class="missing"><b>Missing:</b> <code>{esc(what)}</code>.{extra} Make it with '
            f'<code>{esc(command)}</code> (or run the whole job: <code>pathgen demo --out RUN</code>).</div>')


def error_note(where: str, exc: BaseException) -> str:
    return (f'<div class="error"><b>Could not render {esc(where)}:</b> {esc(type(exc).__name__)}: '
            f'{esc(" ".join(str(exc).split())[:400])}</div>')


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def png_data_uri(data: bytes, max_width: int = MAX_IMAGE_WIDTH) -> str:
    """``data:image/png;base64,...`` for PNG bytes, downscaled to ``max_width`` when wider."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if img.width > max_width:
        img = img.convert("RGB").resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=False, compress_level=6)
        data = buf.getvalue()
    elif img.format != "PNG":
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="PNG")
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image(path: str | os.PathLike, caption: str = "", max_width: int = MAX_IMAGE_WIDTH) -> str:
    """A ``<figure>`` with the PNG at ``path`` embedded."""
    p = Path(path)
    uri = png_data_uri(p.read_bytes(), max_width)
    cap = f"<figcaption>{esc(caption or p.name)}</figcaption>"
    return f'<figure><img alt="{esc(caption or p.name)}" src="{uri}">{cap}</figure>'


def figure(fig, caption: str = "") -> str:
    """A ``<figure>`` from a matplotlib figure (rendered to PNG in memory)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    uri = png_data_uri(buf.getvalue())
    return f'<figure><img alt="{esc(caption)}" src="{uri}"><figcaption>{esc(caption)}</figcaption></figure>'


def details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


def pre_json(obj: Any, limit: int = 60_000) -> str:
    text = json.dumps(obj, indent=2, default=str)
    if len(text) > limit:
        text = text[:limit] + f"\n… ({len(text) - limit} more characters)"
    return f"<pre>{esc(text)}</pre>"


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _short_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= 20 and all(_scalar(x) for x in v)


def json_html(obj: Any, depth: int = 0, max_depth: int = 4) -> str:
    """Render any JSON value readably, whatever its schema.

    dict of scalars -> key/value table; dict of dicts of scalars -> one matrix table (rows = keys,
    columns = the union of inner keys); list of dicts -> table; anything deeper -> nested
    collapsible blocks; beyond ``max_depth`` -> pretty-printed JSON.
    """
    if _scalar(obj) or _short_list(obj):
        return esc(fmt(obj))
    if depth >= max_depth:
        return pre_json(obj)
    if isinstance(obj, list):
        if obj and all(isinstance(x, dict) for x in obj):
            cols = list(dict.fromkeys(k for x in obj for k in x))
            if all(_scalar(x.get(k)) or _short_list(x.get(k)) for x in obj for k in cols):
                return table(cols, ([x.get(k) for k in cols] for x in obj))
        return "<ol>" + "".join(f"<li>{json_html(x, depth + 1, max_depth)}</li>" for x in obj[:200]) + "</ol>"
    if isinstance(obj, dict):
        if obj and all(isinstance(v, dict) and v and all(_scalar(x) or _short_list(x) for x in v.values())
                       for v in obj.values()):
            cols = list(dict.fromkeys(k for v in obj.values() for k in v))
            if len(cols) <= 16:
                return table([""] + cols, ([k] + [v.get(c) for c in cols] for k, v in obj.items()))
        simple = [(k, v) for k, v in obj.items() if _scalar(v) or _short_list(v)]
        nested = [(k, v) for k, v in obj.items() if not (_scalar(v) or _short_list(v))]
        parts = []
        if simple:
            parts.append(table(["key", "value"], simple, cls="kv"))
        for k, v in nested:
            parts.append(details(str(k), json_html(v, depth + 1, max_depth), open_=depth == 0 and len(nested) <= 3))
        return "\n".join(parts)
    return esc(str(obj))


def flatten(obj: Any, prefix: str = "", max_items: int = 400) -> list[tuple[str, Any]]:
    """Nested dict -> ``[("a.b.c", scalar), ...]`` (lists of scalars kept whole)."""
    out: list[tuple[str, Any]] = []

    def walk(o, p):
        if len(out) >= max_items:
            return
        if isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{p}.{k}" if p else str(k))
        elif _scalar(o) or _short_list(o):
            out.append((p, o))
        elif isinstance(o, list):
            for i, v in enumerate(o):
                walk(v, f"{p}[{i}]")

    walk(obj, prefix)
    return out


def read_json(path: Path) -> Any:
    """Parse a JSON file, naming the file when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-run the command that writes it") from exc


# --------------------------------------------------------------------------------------------
# page
# --------------------------------------------------------------------------------------------
def page(title: str, sections: Sequence[tuple[str, str, str]], subtitle: str = "") -> str:
    """The whole document: title, table of contents, then ``(anchor, heading, body)`` sections."""
    toc = "".join(f'<li><a href="#{esc(a)}">{esc(h)}</a></li>' for a, h, _ in sections)
    body = "\n".join(f'<section id="{esc(a)}"><h2>{esc(h)}</h2>\n{b}\n</section>' for a, h, b in sections)
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><main>\n<h1>{esc(title)}</h1>"
            f"<p class=\"note\">{esc(subtitle)} Generated {esc(stamp)} by <code>pathgen report</code>.</p>\n"
            f"<nav><ol>{toc}</ol></nav>\n{body}\n</main></body></html>\n")


def build_report(run_dir: str | os.PathLike, max_heatmap_cases: int = 4) -> str:
    """The report of ``run_dir`` as one HTML string (sections in ``pathgen.report.sections``)."""
    from pathgen.report import sections as S

    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder (make one with `pathgen demo --out {run}`)")
    built = []
    for anchor, heading, fn in S.SECTIONS:
        try:
            body = fn(run, max_heatmap_cases=max_heatmap_cases) if anchor == "heatmaps" else fn(run)
        except Exception as exc:  # noqa: BLE001 - one broken file must not take the whole report down
            body = error_note(heading, exc)
        built.append((anchor, heading, body))
    return page(f"pathgen run report: {run.resolve().name}", built, subtitle=f"Run folder {run.resolve()}.")


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 max_heatmap_cases: int = 4) -> Path:
    """Build the report and write it atomically (default ``RUN/report.html``)."""
    out = Path(out) if out is not None else Path(run_dir) / "report.html"
    atomic_write_text(out, build_report(run_dir, max_heatmap_cases=max_heatmap_cases))
    return out


def kv_table(pairs: Iterable[tuple[str, Any]]) -> str:
    return table(["", "value"], pairs, cls="kv")

