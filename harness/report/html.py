"""One self-contained HTML file for a run: its tables (gains with intervals), figures (inline PNG), the
metadata a reader needs to trust the numbers (model, weights, versions, data fingerprints, every
non-default setting) and the failed trials with their errors. No network, no scripts."""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
from pathlib import Path

import pandas as pd

from .. import __version__, atomic
from .figures import png_bytes
from .intervals import label_column

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1500px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; vertical-align: top; white-space: nowrap; }
.scroll { overflow-x: auto; }
th:first-child, td:first-child { text-align: left; }
tr.gain td { color: #555; background: #fafafa; } td.real { font-weight: bold; color: #064; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 4px 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
td.error { text-align: left; font-family: monospace; white-space: pre-wrap !important; max-width: 40em; }
.note { color: #555; font-size: 0.92em; } p.footer { margin-top: -0.8em; }
table.settings td { white-space: normal; overflow-wrap: anywhere; max-width: 70em; }
"""

# What each figure shows, as its caption.
CAPTIONS = {
    "accuracy": "Test accuracy of each stack against the number of shots, mean over seeds.",
    "speed": "Test accuracy against inference throughput (images per second) of each stack. Timings on a "
             "CPU from one run vary between runs and machines: read them as rough, not as differences.",
    "gains": "What a stacked method adds: accuracy of each stack minus that of its base stack, with the 95 % "
             "paired-bootstrap interval.",
    "masks": "Where the masks fall: the share of each masked weight tensor that was switched off.",
}



def _table(caption: str, header: list[str], body: list[list[str]], gain: list[list[str]] = (),
           css: str = "results") -> str:
    out = [f'<div class="scroll"><table class="{css}"><caption>{html.escape(caption)}</caption><thead><tr>']
    out += [f"<th>{html.escape(str(h))}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for cls, rows in (("", body), ("gain", gain)):
        for row in rows:
            out.append(f'<tr class="{cls}">' if cls else "<tr>")
            for i, cell in enumerate(row):
                text = str(cell)
                real = cls == "gain" and text.endswith("*")
                klass = ' class="real"' if real else (' class="error"' if css == "errors" and i == len(row) - 1
                                                      else "")
                out.append(f"<td{klass}>{html.escape(text)}</td>")
            out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _figure(name: str, fig) -> str:
    data = base64.b64encode(png_bytes(fig)).decode("ascii")
    return (f'<figure id="fig-{html.escape(name)}"><img alt="{html.escape(name)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(CAPTIONS.get(name, name))}'
            '</figcaption></figure>')


def non_default_settings(rows: pd.DataFrame) -> dict[str, list[str]]:
    """Row label -> ``method.key=value`` for every setting that differs from the method's default for
    that dataset and shot count (all settings when the method is no longer installed)."""
    from .tables import row_settings

    key = label_column(rows)
    out: dict[str, dict[str, None]] = {}
    for row in rows.itertuples(index=False):
        found = out.setdefault(getattr(row, key), {})
        for method, values in row_settings(row).items():
            found.update({f"{method}.{name}={json.dumps(value)}": None for name, value in values.items()})
    return {label: list(settings) for label, settings in out.items()}


def metadata_rows(rows: pd.DataFrame) -> list[list[str]]:
    def values(column: str) -> str:
        if column not in rows.columns:
            return "-"
        return ", ".join(str(v) for v in dict.fromkeys(rows[column].dropna())) or "-"

    meta = [["model", values("model")], ["weights (pretrained)", values("pretrained")],
            ["bench", values("bench")], ["torch", values("torch")], ["open_clip", values("open_clip")],
            ["device", values("device")], ["protocol", values("protocol")], ["suite", values("suite")],
            ["trials", f"{int((rows.status == 'ok').sum())} ok, {int((rows.status != 'ok').sum())} failed"],
            ["shots", values("shots")], ["seeds", values("seed")]]
    if "data_fingerprint" in rows.columns:
        for dataset, group in rows.dropna(subset=["data_fingerprint"]).groupby("dataset"):
            meta.append([f"data fingerprint: {dataset}", ", ".join(dict.fromkeys(group["data_fingerprint"]))])
    return meta


def html_document(run: str, tables: list[tuple], figures: dict, rows: pd.DataFrame,
                  errors: list[list[str]], note: str = "", search: tuple[str, list, list] | None = None) -> str:
    """The page: ``tables`` as (caption, header, body, gain rows[, footer lines]), ``figures`` as
    {name: matplotlib figure}, ``search`` the run's search table (bench.tune) as (caption, header, body).
    Failed trials come first, where they are seen."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>bench report: {html.escape(run)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>bench report: {html.escape(run)}</h1>",
             f"<p class='note'>generated {now} by bench {html.escape(__version__)}</p>"]
    if errors:
        parts.append(f"<h2>Failed trials ({len(errors)})</h2>")
        parts.append(_table("failed trials", ["trial_id", "dataset", "shots", "seed", "stack", "error"], errors,
                            css="errors"))
    parts.append("<h2>Results</h2>")
    if note:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    for caption, header, body, gain, *footer in tables:
        parts.append(_table(caption, header, body, gain))
        parts += [f"<p class='note footer'>{html.escape(line)}</p>" for line in (footer[0] if footer else [])]
    if search is not None:
        parts += ["<h2>Search</h2>", _table(*search, css="search")]
    parts.append("<h2>Figures</h2>")
    parts += [_figure(name, fig) for name, fig in figures.items()]
    parts.append("<h2>Run</h2>")
    parts.append(_table("metadata", ["field", "value"], metadata_rows(rows), css="meta"))
    settings = non_default_settings(rows)
    parts.append(_table("non-default settings", ["method", "settings"],
                        [[label, "; ".join(s) or "(defaults)"] for label, s in settings.items()], css="settings"))
    if not errors:
        parts.append("<h2>Failed trials</h2><p>none</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: Path, document: str) -> Path:
    """Write through a temporary name and rename, so a report being replaced is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, document)
    return path
