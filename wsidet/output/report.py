"""The cohort report: one static HTML page per output folder, opened from disk.

``report.html`` lists every slide of the folder's manifest with its QC preview (a link to
``SLIDE.preview.png`` beside it), nuclei, tissue area, nuclei per mm² of tissue, time, status
and error, and the cohort's totals. No script, no server, no network: everything the page
shows is in the page or next to it (relative links), so the folder can be copied or zipped
and the report still opens.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from wsidet._version import __version__
from wsidet.output.files import atomic_path
from wsidet.output.manifest import SlideResult, load_rows

#: The report's file name in an output folder.
REPORT = "report.html"

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
.totals { color: #555; margin-bottom: 1em; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 240px; max-height: 160px; border: 1px solid #ccc; }
tr.failed td { background: #fff1f0; }
.status-done { color: #1a7f37; font-weight: 600; }
.status-failed { color: #cf222e; font-weight: 600; }
.warning { color: #9a6700; font-size: .9em; }
.path { color: #666; font-size: .85em; word-break: break-all; }
.error { color: #cf222e; font-weight: normal; }
"""


def _number(value: float, digits: int = 1) -> str:
    return (
        "—"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:,.{digits}f}")
    )


def _row(result: SlideResult, folder: Path) -> str:
    e = html.escape
    preview = folder / f"{result.slide_id}.preview.png"
    link = e(quote(preview.name))  # a slide id may hold '#', '%' or '?'
    picture = (
        f'<a href="{link}"><img src="{link}" alt="QC preview of '
        f'{e(result.slide_id)}" loading="lazy"></a>'
        if preview.is_file()
        else "—"
    )
    tissue = result.tissue_mm2
    per_mm2 = result.n_points / tissue if tissue and tissue == tissue and tissue > 0 else None
    warnings = json.loads(result.warnings or "[]") if result.status == "done" else []
    notes = "".join(f'<div class="warning">{e(w)}</div>' for w in warnings)
    error = f'<div class="error">{e(result.error)}</div>' if result.error else ""
    reused = " (reused)" if result.reused else ""
    return (
        f'<tr class="{e(result.status)}" data-slide="{e(result.slide_id)}">'
        f"<td>{picture}</td>"
        f'<td><b>{e(result.slide_id)}</b><div class="path">{e(result.path)}</div></td>'
        f'<td class="status-{e(result.status)}">{e(result.status)}{reused}{error}{notes}</td>'
        f'<td class="num">{result.n_points:,}</td>'
        f'<td class="num">{_number(tissue, 2)}</td>'
        f'<td class="num">{_number(per_mm2, 0) if per_mm2 is not None else "—"}</td>'
        f'<td class="num">{_number(result.seconds)}</td>'
        f"<td>{e(result.method)}</td>"
        "</tr>"
    )


def render_report(rows: Sequence[SlideResult], folder: Path, *, title: str | None = None) -> str:
    """The report page of ``rows`` (a folder's manifest rows) as an HTML string."""
    e = html.escape
    done = [r for r in rows if r.status == "done"]
    failed = [r for r in rows if r.status != "done"]
    nuclei = sum(r.n_points for r in done)
    tissue = sum(r.tissue_mm2 for r in done if r.tissue_mm2 == r.tissue_mm2)
    heading = title or f"wsidet report: {folder.resolve().name}"
    body = "\n".join(_row(r, folder) for r in sorted(rows, key=lambda r: r.slide_id))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(heading)}</title><style>{_STYLE}</style></head>
<body>
<h1>{e(heading)}</h1>
<div class="totals" id="totals">{len(rows)} slides: {len(done)} done, {len(failed)} failed |
{nuclei:,} nuclei | {_number(tissue, 2)} mm² tissue | made {e(time.strftime("%Y-%m-%d %H:%M"))}
by wsidet {e(__version__)}</div>
<table id="slides">
<thead><tr><th>preview</th><th>slide</th><th>status</th><th>nuclei</th><th>tissue mm²</th>
<th>nuclei / mm²</th><th>seconds</th><th>method</th></tr></thead>
<tbody>
{body}
</tbody></table>
</body></html>
"""


def write_report(folder: str | os.PathLike[str]) -> Path:
    """Write ``report.html`` into an output folder from its manifest (atomically).

    Returns
    -------
    pathlib.Path
        The report.
    """
    out = Path(folder)
    rows = list(load_rows(out).values())
    path = out / REPORT
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(render_report(rows, out), encoding="utf-8")
    return path
