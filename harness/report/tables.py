"""Paper-style tables from a run's rows: stacks x datasets (+ Average) per shot count, and gain rows
(with paired-bootstrap intervals when the trials kept their predictions, see :mod:`bench.intervals`)."""
from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd

from ..errors import BenchError
from ..results import RunFolder, list_runs
from ..selection import FIXED, ORACLE

SELECTION_ORDER = (FIXED, "val-tuned", ORACLE)

def load_rows(results: str, run: str) -> pd.DataFrame:
    folder = RunFolder(results, run)
    if not folder.exists():
        runs = list_runs(results)
        hint = f"runs here: {', '.join(runs)}" if runs else "run `bench run` first"
        raise BenchError(f"no run '{run}' under {results}; {hint}")
    rows = folder.read()
    if rows.empty:
        raise BenchError(f"run '{run}' has no rows yet; run `bench run --run {run}` first")
    return rows


def expand_shift(rows: pd.DataFrame) -> pd.DataFrame:
    """Domain-shift rows carry the target datasets' accuracies in ``extras``: one table column each."""
    extra = []
    for row in rows[rows["protocol"] == "shift"].itertuples(index=False):
        for key, value in json.loads(row.extras if isinstance(row.extras, str) else "{}").items():
            if key.startswith("top1."):
                extra.append({**row._asdict(), "dataset": key[len("top1."):], "top1": value,
                              "shift_source": row.dataset})
    if not extra:
        return rows
    return pd.concat([rows, pd.DataFrame(extra, columns=[*rows.columns, "shift_source"])], ignore_index=True)


def infer_protocol(row) -> str:
    """Rows written before rows carried their protocol: base-to-new rows have new-class accuracies,
    domain-shift rows target accuracies in ``extras``."""
    if isinstance(row.protocol, str) and row.protocol:
        return row.protocol
    if row.top1_new == row.top1_new and row.top1_new is not None:
        return "base2new"
    if isinstance(row.extras, str) and '"top1.' in row.extras:
        return "shift"
    return "fewshot"


def _plugin(name: str):
    from ..registry import get_method

    try:
        return get_method(name)
    except BenchError:
        return None


def _canonical(stack: str) -> str:
    from ..registry import canonical_stack

    try:
        return canonical_stack(stack)
    except BenchError:  # a plugin that is no longer installed: keep the spelling the row has
        return stack


def row_settings(row) -> dict:
    """A row's non-default settings; for rows written before the column existed, from ``hparams``."""
    if isinstance(row.settings, str) and row.settings:
        return json.loads(row.settings)
    out = {}
    for method, values in json.loads(row.hparams if isinstance(row.hparams, str) else "{}").items():
        plugin = _plugin(method)
        try:
            default = dataclasses.asdict(plugin.make_config(row.dataset, int(row.shots))) if plugin else {}
        except BenchError:
            default = {}
        changed = {k: v for k, v in values.items() if default.get(k, object()) != v}
        if changed:
            out[method] = changed
    return out


def _value(v) -> str:
    return str(v).lower() if isinstance(v, bool) else (f"{v:g}" if isinstance(v, float) else
                                                       (v if isinstance(v, str) else json.dumps(v)))


def _variant(row, stack: str) -> dict[str, str]:
    """What tells this row's configuration apart: its non-default settings (but those a search chose), model,
    weights and precision."""
    several = "+" in stack
    chosen = json.loads(row.tuned) if isinstance(getattr(row, "tuned", None), str) else {}
    out = {(f"{m}.{k}" if several else k): _value(v) for m, kv in row_settings(row).items() for k, v in kv.items()
           if f"{m}.{k}" not in chosen}
    out["model"] = str(row.model)
    out["weights"] = str(row.pretrained)
    precision = getattr(row, "precision", None)
    out["precision"] = precision if isinstance(precision, str) and precision else "fp32"  # older rows: fp32
    return out


_VARIANT_FIELDS = ["settings", "hparams", "dataset", "shots", "model", "pretrained"]  # what _variant reads


def label_rows(rows: pd.DataFrame) -> pd.Series:
    """One report row per stack *and* configuration: a stack run with two settings (or models, weights) in
    one run gives two labelled rows, e.g. ``mask`` and ``mask (gdr=false, lr=0.001)``."""
    labels = dict(zip(rows.index, rows["stack"].to_numpy(dtype=object)))
    fields = _VARIANT_FIELDS + (["tuned"] if "tuned" in rows else [])
    for (stack, selection), group in rows.groupby([rows["stack"], selections(rows)]):
        seen: dict[tuple, dict] = {}  # rows of one configuration: worked out once
        variants = {i: seen[r] if r in seen else seen.setdefault(r, _variant(r, stack))
                    for i, r in zip(group.index, group[fields].itertuples(index=False))}
        keys = sorted({k for v in variants.values() for k in v})
        differing = [k for k in keys if len({v.get(k) for v in variants.values()}) > 1]
        for i, v in variants.items():
            shown = [f"{k}={v[k]}" for k in differing if k in v and k not in ("model", "weights", "precision")]
            shown += [f"{k}={v[k]}" for k in ("model", "weights", "precision") if k in differing]
            labels[i] = (f"{stack} ({', '.join(shown)})" if shown else stack) + (
                "" if selection == FIXED else f" [{selection}]")
    return pd.Series([labels[i] for i in rows.index], index=rows.index, dtype=object)


def selections(rows: pd.DataFrame) -> pd.Series:
    """How each row's settings were chosen (bench.selection); rows written before the column are fixed."""
    if "selection" not in rows:
        return pd.Series(FIXED, index=rows.index, dtype=object)
    return rows["selection"].fillna(FIXED)


def split_selection(label: str) -> tuple[str, str]:
    """``coop (lr=0.01) [val-tuned]`` -> (``coop (lr=0.01)``, ``val-tuned``); a fixed row's label as it is."""
    if label.endswith("]") and " [" in label:
        plain, _, selection = label[:-1].rpartition(" [")
        return plain, selection
    return label, FIXED


def selection_groups(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The rows a table may hold together, with what its title adds: oracle rows (settings chosen on the
    test split) are never put beside the others; tuned rows' titles say their search and budget."""
    chosen = selections(rows)
    groups = []
    for oracle in (False, True):
        part = rows[(chosen == ORACLE) == oracle]
        if part.empty:
            continue
        note = "; ".join(dict.fromkeys(
            f"{s}: settings chosen per cell by {r.tune_search} search on the "
            f"{'TEST split (oracle: measures inflation, not a result)' if s == ORACLE else 'few-shot val split'}, "
            f"budget {int(r.tune_budget)} trials" for s, r in zip(selections(part), part.itertuples(index=False))
            if s != FIXED))
        groups.append((f"; {note}" if note else "", part))
    return groups


def table_rows(rows: pd.DataFrame, current: dict[str, str] | None = None) -> tuple[pd.DataFrame, str | None]:
    """The ok rows a report may put in one table, and a one-line note on what it set aside.

    Rows get their protocol (inferred for old rows), the canonical stack name and a ``label``. Per
    dataset, rows made on another version of its data are set aside: those not matching ``current``
    (dataset -> dataset fingerprint, e.g. what `bench run` just planned), else all but the newest
    version's."""
    ok = rows[rows["status"] == "ok"].copy()
    if ok.empty:
        return ok.assign(label=pd.Series(dtype=object)), None
    if "variants" in ok:
        from ..registry import define_recorded_variants

        define_recorded_variants(ok["variants"])
    ok["protocol"] = [infer_protocol(r) for r in ok[["protocol", "top1_new", "extras"]].itertuples(index=False)]
    ok["stack"] = ok["stack"].map({s: _canonical(s) for s in set(ok["stack"])})
    ok["dataset_fingerprint"] = ok["dataset_fingerprint"].fillna("")
    keep = pd.Series(True, index=ok.index)
    aside: dict[str, int] = {}
    for dataset, group in ok.groupby("dataset"):
        if current is not None and dataset in current:
            wanted = current[dataset]
        else:
            newest = group.sort_values("finished_at", na_position="first", kind="stable").iloc[-1]
            wanted = newest["dataset_fingerprint"]
        other = group["dataset_fingerprint"] != wanted
        if other.any():
            keep[group.index[other]] = False
            aside[dataset] = int(other.sum())
    ok = expand_shift(ok[keep])
    ok["label"] = label_rows(ok) if not ok.empty else pd.Series(dtype=object)
    note = None
    if aside:
        what = ", ".join(f"{d}: {n}" for d, n in sorted(aside.items()))
        note = (f"set aside {sum(aside.values())} rows made on another version of their data ({what}); "
                "they stay in the run folder, and `bench run` redoes them on the data as it is now")
    return ok, note


def metrics_of(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, caption) pairs the report shows, from the rows' protocol."""
    from ..protocols import PROTOCOLS

    seen = [PROTOCOLS[p] for p in dict.fromkeys(rows["protocol"]) if p in PROTOCOLS]
    return list(dict.fromkeys(m for p in seen for m in p.metrics)) or [("top1", "top-1 (%)")]


def _dataset_order(rows: pd.DataFrame) -> list[str]:
    from ..suite import builtin_suites, load_suite

    present = list(dict.fromkeys(rows["dataset"]))
    suite = rows["suite"].dropna().iloc[0] if rows["suite"].notna().any() else None
    order = [*load_suite(suite).datasets, *load_suite(suite).shift_targets] if suite in builtin_suites() else []
    targets = list(dict.fromkeys(rows["dataset"][rows["shift_source"].notna()])) if "shift_source" in rows else []
    ordered = [d for d in order if d in present and d not in targets]
    ordered += sorted(d for d in present if d not in order and d not in targets)
    targets = [d for d in order if d in targets] + [d for d in targets if d not in order]
    return ordered + targets  # domain-shift targets after their source, in the suite's order


def _split_stack(stack: str) -> tuple[str, bool]:
    """(the stack without methods that declare ``stacked_gain``, whether it had one)."""
    parts = stack.split("+")
    plain = [p for p in parts if not getattr(_plugin(p), "stacked_gain", False)]
    return "+".join(plain), len(plain) < len(parts)


def _label_order(labels) -> list[str]:
    def key(label: str):
        plain, selection = split_selection(label)
        stack, _, variant = plain.partition(" (")
        base, stacked = _split_stack(stack)
        plugin = _plugin(stack)
        rank = (0 if getattr(plugin, "gain_baseline", False) else 1 if getattr(plugin, "reference", False)
                else 2 if not base else 3)
        of = getattr(plugin, "variant_of", None)  # a method's named variants after it, by name
        order = SELECTION_ORDER.index(selection) if selection in SELECTION_ORDER else len(SELECTION_ORDER)
        return rank, base, stacked, of or stack, of is not None, stack, variant, order

    return sorted(set(labels), key=key)


def accuracy_tables(rows: pd.DataFrame, shots: int | None = None, metric: str = "top1"):
    """{shots: (mean table, std table)}; rows = labels (stack and configuration), columns = datasets +
    Average; cells are means over seeds. ``rows`` from :func:`table_rows` (raw rows go through it)."""
    ok = rows if "label" in rows else table_rows(rows)[0]
    if shots is not None:
        ok = ok[ok["shots"] == shots]
        if ok.empty:
            have = sorted(set(rows["shots"].dropna().astype(int)))
            raise BenchError(f"no ok rows with {shots} shots in this run; shots present: {have}")
    datasets = _dataset_order(ok)
    out = {}
    for k, group in ok.groupby("shots"):
        grouped = group.groupby(["label", "dataset"])[metric]
        present = set(group.dataset)
        mean = grouped.mean().unstack("dataset").reindex(columns=[d for d in datasets if d in present])
        std = grouped.std(ddof=0).where(grouped.count() > 1).unstack("dataset").reindex(columns=mean.columns)
        order = _label_order(mean.index)
        mean, std = mean.reindex(order), std.reindex(order)
        mean["Average"] = mean.mean(axis=1, skipna=False)
        std["Average"] = float("nan")
        out[int(k)] = (mean, std)
    return out


def gain_rows(mean: pd.DataFrame) -> pd.DataFrame:
    """'X+m vs X' for every stack adding a ``stacked_gain`` method m whose base ran (same configuration of
    X), 'V vs M' for every named variant V of a method M that ran (the ablation rows: ``amt vs mask``), and
    'S vs B' against every ``gain_baseline`` method B (zero-shot); those within one selection (fixed, val-tuned).
    And 'S [val-tuned] vs S': what tuning adds to a stack."""
    gains = {}
    for label in mean.index:
        plain, selection = split_selection(label)
        suffix = label[len(plain):]
        base = getattr(_plugin(plain), "variant_of", None)
        if base and base + suffix in mean.index:
            gains[f"{label} vs {base}{suffix}"] = mean.loc[label] - mean.loc[base + suffix]
    for label in mean.index:
        plain, selection = split_selection(label)
        suffix = label[len(plain):]
        stack, sep, variant = plain.partition(" (")
        base, stacked = _split_stack(stack)
        base_label = base + (sep + variant if base + sep + variant + suffix in mean.index else "") + suffix
        if stacked and base and base_label in mean.index:
            gains[f"{label} vs {base_label}"] = mean.loc[label] - mean.loc[base_label]
    for label in mean.index:
        plain, selection = split_selection(label)
        if selection != FIXED and plain in mean.index:
            gains[f"{label} vs {plain}"] = mean.loc[label] - mean.loc[plain]
    for baseline in [b for b in mean.index if getattr(_plugin(b), "gain_baseline", False)]:
        for label in mean.index:
            if label != baseline:
                gains[f"{label} vs {baseline}"] = mean.loc[label] - mean.loc[baseline]
    return pd.DataFrame(gains).T.reindex(columns=mean.columns)


def protocol_tables(rows: pd.DataFrame, shots: int | None = None, metric: str = "top1"):
    """:func:`accuracy_tables` by the published conventions of the rows' protocol.

    * base-to-new (CoCoOp): a dataset's HM is the HM of its seed-mean base and new accuracies, and the
      Average HM is the HM of the average base and the average new accuracy (not a mean of per-trial HMs).
    * domain shift: the source and each target are columns; the Average is over the targets only."""
    ok = rows if "label" in rows else table_rows(rows)[0]
    if metric == "hm":
        base, new = accuracy_tables(ok, shots, "top1"), accuracy_tables(ok, shots, "top1_new")
        out = {}
        for k, (b, _) in base.items():
            n = new[k][0].reindex(index=b.index, columns=b.columns)
            out[k] = (2 * b * n / (b + n)).where(b + n != 0, 0.0), pd.DataFrame(float("nan"), b.index, b.columns)
        return out
    tables = accuracy_tables(ok, shots, metric)
    if "shift_source" in ok:
        targets = set(ok["dataset"][ok["shift_source"].notna()])
        for mean, _ in tables.values():
            shown = [c for c in mean.columns if c in targets]
            if shown:
                mean["Average"] = mean[shown].mean(axis=1, skipna=False)
    return tables


def _shots_free(stack: str) -> bool:
    """A stack of methods that change nothing (zero-shot) gives the same number at every K."""
    plugins = [_plugin(p) for p in stack.split("+")]
    return all(p is not None and not p.changes for p in plugins)


@dataclasses.dataclass
class Comparison:
    """One run table beside the published numbers for one backbone."""
    backbone: str
    table: pd.DataFrame  # bench.published.compare output
    notes: list[str]  # the caveats of the published cells it used, one line per source and caveat
    no_paper: dict[str, str]  # label -> why it has no paper value


def paper_comparisons(rows: pd.DataFrame, mean: pd.DataFrame, shots: int, metric: str = "top1",
                      source: str | None = None) -> list[Comparison]:
    """``mean`` (labels x datasets, from :func:`protocol_tables`) beside the published numbers of the same
    protocol and metric. A label is compared only where its rows match what a published number describes:
    OpenAI weights, a published model, and the settings it was published with (``{}``: plugin defaults);
    each other label gets a reason instead. Labels are grouped by their model."""
    from ..published import compare, load_published, normalise_backbone

    ok = rows if "label" in rows else table_rows(rows)[0]
    ok = ok[ok["shots"] == shots]
    published = load_published()
    protocol = next(iter(dict.fromkeys(ok["protocol"])), "fewshot")
    backbones = set(published.backbone[published.protocol == protocol])
    groups: dict[str, list[str]] = {}
    no_paper: dict[str, str] = {}
    stacks, settings = {}, {}
    for label in mean.index:
        mine = ok[ok["label"] == label]
        first = mine.iloc[0]
        stacks[label], settings[label] = first["stack"], row_settings(first)
        models = {normalise_backbone(str(m)) for m in mine["model"]}
        weights = {w if isinstance(w, str) and w else "unknown" for w in mine["pretrained"]}
        if weights != {"openai"}:
            no_paper[label] = f"weights {', '.join(sorted(weights))}, not OpenAI's: published numbers are OpenAI CLIP's"
        elif len(models) != 1 or next(iter(models)) not in backbones:
            no_paper[label] = f"model {', '.join(sorted(models))}: nothing published for it in this protocol"
        else:
            groups.setdefault(next(iter(models)), []).append(label)
    if not set(ok["dataset"]) >= set(published.dataset[published.protocol == protocol]) - {"average"}:
        mean = mean.drop(columns="Average", errors="ignore")  # a published average spans all its datasets
    out = []
    for backbone, labels in groups.items():
        free = {stacks[label] for label in labels if _shots_free(stacks[label])}
        table = compare(mean.loc[labels], shots, backbone, source, protocol=protocol, metric=metric, stacks=stacks,
                        settings=settings, any_shots=free)
        why = dict(table.attrs["unmatched"])
        matched = {label for label, _ in table.attrs["notes"]}
        for label in labels:
            if label not in matched and label not in why:
                why[label] = f"'{stacks[label]}' has no published {protocol} number at {shots} shots on {backbone}"
        lines: dict[str, list[str]] = {}
        for (label, _), note in table.attrs["notes"].items():
            lines.setdefault(note, [])
            if stacks[label] not in lines[note]:
                lines[note].append(stacks[label])
        notes = [f"{', '.join(s)}: {note}" for note, s in lines.items()]
        out.append(Comparison(backbone, table, notes, why))
    if no_paper:  # labels no published model or weights match: said under the first table
        if not out:
            out.append(Comparison("", pd.DataFrame(), [], {}))
        out[0].no_paper = {**no_paper, **out[0].no_paper}
    return out


def comparison_rows(comparison: Comparison, datasets: list[str] | None = None) -> tuple[list, list]:
    """(header, body) of a comparison for these datasets (all by default): ours, paper and diff per dataset."""
    table = comparison.table
    shown = datasets if datasets is not None else list(dict.fromkeys(d for d, _ in table.columns))
    header = ["method", *(f"{d} {part}" for d in shown for part in ("ours", "paper", "diff"))]
    body = [[label, *(_number(table.at[label, (d, part)], part == "diff") for d in shown
                      for part in ("ours", "paper", "diff"))] for label in table.index]
    return header, body


def _number(value, signed: bool = False) -> str:
    if value != value:
        return "-"
    value = 0.0 if abs(value) < 0.005 else value  # no "-0.00"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


# -- rendering ---------------------------------------------------------------------------------------
def _cell(value: float, std: float | None = None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:+.2f}" if signed else f"{value:.2f}"
    if std is not None and not math.isnan(std):
        text += f" ± {std:.2f}"
    return text


def _gain_cell(value: float, ci) -> str:
    """A gain with its interval, ``+10.3 [+8.1, +12.6]``, starred when the interval excludes 0."""
    if ci is None or (isinstance(value, float) and math.isnan(value)):
        return _cell(value, signed=True)
    return f"{value:+.1f} [{ci.low:+.1f}, {ci.high:+.1f}]" + ("*" if ci.excludes_zero else "")


def text_rows(mean: pd.DataFrame, std: pd.DataFrame | None, gains: pd.DataFrame,
              intervals: pd.DataFrame | None = None) -> tuple[list, list, list]:
    header = ["method", *mean.columns]
    body = [[stack, *(_cell(mean.at[stack, c], None if std is None else std.at[stack, c]) for c in mean.columns)]
            for stack in mean.index]
    gain = [[label, *(_gain_cell(gains.at[label, c], None if intervals is None else intervals.at[label, c])
                      for c in gains.columns)] for label in gains.index]
    return header, body, gain


def render(title: str, header: list, body: list, gain: list, fmt: str) -> str:
    if fmt == "markdown":
        lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body + gain]
        return "\n".join(lines) + "\n"
    if fmt == "csv":
        frame = pd.DataFrame(body + gain, columns=header)
        frame.insert(0, "table", title)
        return frame.to_csv(index=False)
    if fmt == "latex":
        esc = lambda s: str(s).replace("_", r"\_").replace("±", r"$\pm$")  # noqa: E731
        lines = [f"% {title}", r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
                 " & ".join(map(esc, header)) + r" \\", r"\midrule"]
        lines += [" & ".join(map(esc, r)) + r" \\" for r in body]
        if gain:
            lines += [r"\midrule"] + [" & ".join(map(esc, r)) + r" \\" for r in gain]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise BenchError(f"unknown format '{fmt}'; use table, markdown, csv or latex")


def rich_table(title: str, header: list, body: list, gain: list):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    labels = [str(r[0]) for r in body + gain] + [str(header[0])]
    for i, name in enumerate(header):
        if i == 0:  # labels are never cut or folded: two rows can differ only at their end
            table.add_column(name, justify="left", no_wrap=True, min_width=max(map(len, labels)))
        else:
            table.add_column(name, justify="right", no_wrap=True, style="bold" if name == "Average" else None)
    for r in body:
        table.add_row(*map(escape, r))  # labels such as "coop [val-tuned]" are text, not markup
    if gain:
        table.add_section()
        for r in gain:
            table.add_row(*map(escape, r), style="dim")
    return table


def rich_tables(title: str, header: list, body: list, gain: list, console) -> list:
    """The table as one rich table when it fits ``console``'s width; else the accuracies and the gains as
    separate tables, each split into blocks of columns (the label column repeated) that fit."""
    from rich.measure import Measurement

    unbounded = console.options.update(max_width=1_000_000)

    def fits(table) -> bool:
        return Measurement.get(console, unbounded, table).maximum <= console.width

    whole = rich_table(title, header, body, gain)
    if fits(whole):
        return [whole]
    head, _, tail = title.partition("; ")
    parts = [(head, body, [])] + ([(f"{head.partition(',')[0]}: {tail or 'gains'}", [], gain)] if gain else [])
    out = []
    for part_title, part_body, part_gain in parts:
        blocks, start = [], 1
        while start < len(header):
            end = start + 1
            while end < len(header) and fits(rich_table(part_title, [header[0], *header[start:end + 1]],
                                                        *_cut(part_body, part_gain, start, end + 1))):
                end += 1
            blocks.append((start, end))
            start = end
        for n, (a, b) in enumerate(blocks, 1):
            shown = part_title + (f" ({n}/{len(blocks)})" if len(blocks) > 1 else "")
            out.append(rich_table(shown, [header[0], *header[a:b]], *_cut(part_body, part_gain, a, b)))
    return out


def _cut(body: list, gain: list, start: int, end: int) -> tuple[list, list]:
    return [[r[0], *r[start:end]] for r in body], [[r[0], *r[start:end]] for r in gain]


def table_footer(rows: pd.DataFrame, shown: pd.DataFrame, mean: pd.DataFrame, shots: int, run: str) -> list[str]:
    """The lines under a table: what it is missing and why (failed trials, cells no trial filled) and any
    stack whose masks switched nothing off. ``rows``: the run's rows, failed ones too; ``shown``: what
    :func:`table_rows` kept of them (with labels); ``mean``: the table at ``shots``."""
    lines = []
    bad = rows[(rows["status"] != "ok") & (rows["shots"] == shots)]
    for (stack, dataset), group in bad.groupby(["stack", "dataset"], sort=False):
        error = next((line for line in str(group["error"].iloc[0]).splitlines() if line.strip()), "no error recorded")
        seeds = ", ".join(map(str, sorted(group["seed"])))
        lines.append(f"missing: {stack} on {dataset} (seed {seeds}) failed: {error[:200]}")
    if len(bad):
        lines.append(f"`bench report --run {run} --errors` lists the errors; `bench run` with --retry-failed "
                     "reruns those trials")
    failed = set(zip(bad["stack"], bad["dataset"]))
    for dataset in [c for c in mean.columns if c != "Average"]:
        empty = [label for label in mean.index if mean.at[label, dataset] != mean.at[label, dataset]
                 and (label.partition(" (")[0], dataset) not in failed]
        if empty:
            lines.append(f"missing: {dataset} for {', '.join(empty)}: no trial of theirs ran on it in this run")
    at_k = shown[shown["shots"] == shots]
    if "mask_sparsity" in at_k:
        for label, group in at_k.dropna(subset=["mask_sparsity"]).groupby("label", sort=False):
            if (group["mask_sparsity"] == 0).all():
                lines.append(f"{label}: its masks switched nothing off in any of its {len(group)} trials "
                             "(mask_sparsity 0): identical to its base")
    return lines


def errors_table(rows: pd.DataFrame) -> list[list[str]]:
    bad = rows[rows["status"] != "ok"]
    return [[str(r.trial_id), r.dataset, str(r.shots), str(r.seed), r.stack, str(r.error)]
            for r in bad.itertuples()]
