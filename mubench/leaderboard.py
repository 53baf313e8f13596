"""The leaderboard: result files, validated, grouped into rows that are comparable, aggregated over seeds, ranked,
and written as ``leaderboard.json`` (with its JSON Schema) and a static page that opens from the file system.

A row is one task × model × method configuration on one deletion set: results are
averaged over their run seeds only when everything else agrees (protocol, deletion
ratio or classes, ``forget_sha256``, split and original seeds, the method arguments
given, PEFT). Methods are ranked within each deletion set by MU-Bench's overall
score (higher is better) and by Deep Unlearn's gap to the retrained model (lower is
better).
"""
from __future__ import annotations

import datetime
import hashlib
import html
import json
import math
import shutil
from pathlib import Path

from mubench import __version__
from mubench.api.card import schema_errors
from mubench.errors import UserError
from mubench.files import atomic_folder, write_json
from mubench.recheck import recheck
from mubench.results import ULIRA_SUFFIX, given_args, load_result, mean_ci, validate_ulira

SCHEMA_VERSION = 4
FACETS = ("knowledge", "corruption", "retention", "parameters")
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")


def collect(folders: list[Path], registry, read_data: bool = True) -> tuple[list[tuple[Path, dict]], list[dict]]:
    """Every result file under ``folders``, validated as ``mubench validate`` does; the accepted and the rejected (with why)."""
    accepted, rejected, drawn = [], [], {}
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            raise UserError(f"{folder}: no such folder")
        for path in sorted(folder.rglob("*.json")) if folder.is_dir() else [folder]:
            if any(part.startswith(".") for part in path.relative_to(folder).parts) or path.name == "leaderboard.json":
                continue  # a sweep's own state, a built leaderboard
            try:
                if path.name.endswith(ULIRA_SUFFIX):
                    accepted.append((path, checked_ulira(path, registry)))
                    continue
                recheck(path, registry, read_data=read_data, drawn=drawn)
                accepted.append((path, load_result(path)))
            except UserError as e:
                rejected.append({"file": str(path), "error": str(e)})
    return accepted, rejected


def checked_ulira(path: Path, registry) -> dict:
    """A U-LiRA result file, validated, made with the card the registry has."""
    result = load_result(path)
    validate_ulira(result, path)
    card = registry.card(result["task"])
    if result["task_card"]["sha256"] != card.sha256:
        raise UserError(f"{path}: key 'task_card.sha256': made with another card than the registered '{card.name}'")
    return result


def ulira_rows(results: list[tuple[Path, dict]]) -> dict:
    """Per task, one row per U-LiRA result: method, arguments, deletion, shadows, targets and the balanced accuracy."""
    rows = {}
    for path, result in sorted(results, key=lambda item: (item[1]["task"], item[1]["config"]["deletion_ratio"], item[1]["method"])):
        config = result["config"]
        rows.setdefault(result["task"], []).append({
            "method": result["method"], "model": result["model"], "method_args": config["given_args"],
            "tuned": tuned_study(config), "deletion_ratio": config["deletion_ratio"], "seed": config["seed"],
            "shadows": config["shadows"], "n_targets": result["split"]["n_targets"],
            "balanced_accuracy": result["ulira"]["balanced_accuracy"], "file": str(path)})
    return rows


def tuned_study(config: dict) -> str | None:
    """The study a run's tuned hyperparameters came from (``<name>#<trial>``), or None."""
    tuned = config.get("tuned")
    return None if tuned is None else f"{tuned['study'].get('name')}#{tuned['study'].get('trial')}"


def row_key(result: dict) -> tuple:
    """What must agree for results to be averaged: all but the run seed (θ₀'s bits included, where the result names them)."""
    config, split = result["config"], result["split"]
    return (result["task"], result["model"], result["method"], config["protocol"], config["deletion_ratio"],
            tuple(split.get("forget_classes", ())), split["forget_sha256"], split["split_seed"], config.get("original_seed"),
            json.dumps(given_args(result), sort_keys=True), json.dumps(config["peft"], sort_keys=True),
            result["model_info"].get("original_sha256") or "")


def summarise(values: list) -> dict | None:
    """Mean, sample standard deviation, half-width of the 95% CI (Student's t; null for one value) and count."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return None
    mean, half = mean_ci(finite)
    n = len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "ci95": None if math.isnan(half) else half, "n": n}


def row_values(results: list[dict]) -> dict:
    """Each metric of the unlearned models, their unlearning time and, with a reference, the gaps to retraining."""
    keys = list(dict.fromkeys(key for r in results for key in r["results"]["unlearned"]))
    values = {key: summarise([r["results"]["unlearned"].get(key) for r in results]) for key in keys}
    values["unlearn_s"] = summarise([r["times"]["unlearn_s"] for r in results])
    if all("reference" in r for r in results):
        values["deep_unlearn_score"] = summarise([r["reference"]["deep_unlearn_score"] for r in results])
        values["efficiency"] = summarise([r["reference"]["efficiency"] for r in results])
        for key in results[0]["reference"]["gap"]:
            values[f"gap_{key}"] = summarise([r["reference"]["gap"].get(key) for r in results])
    return {key: value for key, value in values.items() if value is not None}


def competition_ranks(scores: list[float | None], higher_is_better: bool) -> list[int | None]:
    """1, 2, 2, 4 ranking (ties share the better rank); None for a missing score."""
    present = [s for s in scores if s is not None]
    ranks = []
    for score in scores:
        if score is None:
            ranks.append(None)
        else:
            ranks.append(1 + sum((other > score) if higher_is_better else (other < score) for other in present))
    return ranks


def rank(rows: list[dict]) -> None:
    """Rank methods within each deletion set (same model, protocol, D_f and seeds of θ₀ and the split)."""
    groups = {}
    for row in rows:
        groups.setdefault(row["deletion_set"], []).append(row)
    for group in groups.values():
        for field, key, higher in (("rank_overall", "overall_score", True), ("rank_gap", "deep_unlearn_score", False)):
            scores = [row["values"].get(key, {}).get("mean") for row in group]
            for row, place in zip(group, competition_ranks(scores, higher)):
                row[field] = place


def by_facet(rows: list[dict]) -> dict:
    """Per taxonomy facet and value: how many rows have it and their mean ranks (overall, and by the gap to retraining)."""
    out = {}
    for facet in FACETS:
        groups = {}
        for row in rows:
            value = row["taxonomy"][facet] if row["taxonomy"] else "undeclared"
            groups.setdefault(value, []).append(row)
        out[facet] = {}
        for value, members in sorted(groups.items()):
            summary = {"rows": len(members)}
            for field in ("rank_overall", "rank_gap"):
                ranks = [row[field] for row in members if row[field] is not None]
                summary[f"mean_{field}"] = sum(ranks) / len(ranks) if ranks else None
            out[facet][value] = summary
    return out


def over_originals(rows: list[dict]) -> list[dict]:
    """Rows that differ only in θ₀ (``--original-seed``), aggregated Deep Unlearn's way: per metric, the mean over the
    originals of each one's mean over run seeds, the spread of those means across originals (``std_originals``) and
    the mean spread over run seeds within one original (``std_seeds``). Only configurations with two originals or more."""
    groups = {}
    for row in rows:
        if row["original_seed"] is None:
            continue
        key = json.dumps([row["model"], row["method"], row["protocol"], row["deletion_ratio"], row["forget_classes"],
                          row["split_seed"], row["method_args"], row["peft"]], sort_keys=True)
        groups.setdefault(key, []).append(row)
    out = []
    for members in groups.values():
        if len({row["original_seed"] for row in members}) < 2:
            continue
        first = members[0]
        values = {}
        for metric in sorted({key for row in members for key in row["values"]}):
            summaries = [row["values"][metric] for row in members if row["values"].get(metric)]
            if len(summaries) < 2:
                continue
            means = [s["mean"] for s in summaries]
            within = [s["std"] for s in summaries if s["std"] is not None]
            overall = summarise(means)
            values[metric] = {"mean": overall["mean"], "std_originals": overall["std"], "ci95": overall["ci95"],
                              "std_seeds": sum(within) / len(within) if within else None, "n_originals": len(means)}
        out.append({"model": first["model"], "method": first["method"], "protocol": first["protocol"],
                    "deletion_ratio": first["deletion_ratio"], "forget_classes": first["forget_classes"],
                    "method_args": first["method_args"], "peft": first["peft"],
                    "original_seeds": sorted(row["original_seed"] for row in members),
                    "seeds_per_original": sorted({len(row["seeds"]) for row in members}), "values": values})
    return sorted(out, key=lambda row: (row["deletion_ratio"], row["method"]))


def build(accepted: list[tuple[Path, dict]], rejected: list[dict], registry) -> dict:
    """The aggregated, ranked leaderboard (see ``mubench/schemas/leaderboard.schema.json``)."""
    grouped, seen = {}, {}
    attacks = [(path, result) for path, result in accepted if result.get("kind") == "ulira"]
    accepted = [(path, result) for path, result in accepted if result.get("kind") != "ulira"]
    for path, result in accepted:
        key, seed = row_key(result), result["config"]["seed"]
        if (key, seed) in seen:  # the same run twice (copied into two folders): counted once
            rejected = rejected + [{"file": str(path), "error": f"{path}: the same configuration and seed as {seen[key, seed]}"}]
            continue
        seen[key, seed] = path
        grouped.setdefault(key, []).append((path, result))
    tasks = {}
    for key, members in sorted(grouped.items(), key=lambda item: (item[0][0], item[0][1], item[0][4], item[0][2])):
        results = [result for _, result in members]
        first = results[0]
        card = registry.card(first["task"])
        task_type = registry.task_type(card)
        entry = tasks.setdefault(first["task"], {"task_type": card.task_type, "metric": task_type.metric, "modality": card.data["modality"],
                                                 "card_sha256": card.sha256, "metrics": first["metrics"], "rows": []})
        config, split = first["config"], first["split"]
        original_sha256 = first["model_info"].get("original_sha256")
        deletion_set = hashlib.sha256(json.dumps([first["model"], config["protocol"], split["forget_sha256"], split["split_seed"],
                                                  config.get("original_seed"), config["peft"], original_sha256]).encode()).hexdigest()[:12]
        entry["rows"].append({
            "model": first["model"], "method": first["method"], "protocol": config["protocol"],
            "deletion_ratio": config["deletion_ratio"], "forget_classes": split.get("forget_classes"),
            "n_forget": split["n_forget"], "forget_sha256": split["forget_sha256"], "split_seed": split["split_seed"],
            "original_seed": config.get("original_seed"), "original_sha256": original_sha256,
            "method_args": given_args(first), "tuned": tuned_study(config), "peft": config["peft"],
            "deletion_set": deletion_set, "taxonomy": first["method_info"]["taxonomy"],
            "seeds": sorted(r["config"]["seed"] for r in results),
            "files": [str(path) for path, _ in members], "values": row_values(results),
            "samples": [dict(sample, file=str(members[0][0].parent / sample["file"])) for sample in first.get("samples", [])],
        })
    for entry in tasks.values():
        rank(entry["rows"])
        entry["by_facet"] = by_facet(entry["rows"])
        entry["over_originals"] = over_originals(entry["rows"])
    board = {"schema_version": SCHEMA_VERSION, "mubench_version": __version__,
             "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "n_results": len(seen), "rejected": rejected, "tasks": tasks, "ulira": ulira_rows(attacks)}
    schema_errors(board, "leaderboard", "leaderboard.json")
    return board


# ---- the page ------------------------------------------------------------------------------------------------------

def number(value: dict | None, digits: int = 4) -> str:
    if value is None:
        return "–"
    text = f"{value['mean']:.{digits}f}"
    return text + (f" ± {value['ci95']:.{digits}f}" if value.get("ci95") is not None else "")


def label(row: dict) -> str:
    """A row's method, with the arguments it was given: one line of a plot."""
    args = ", ".join(f"{key}={value}" for key, value in row["method_args"].items())
    return f"{row['method']} ({args})" if args else row["method"]


def colours(rows: list[dict]) -> dict:
    """A colour per method configuration, the same in the table and every plot of a task."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted({label(row) for row in rows}))}


def svg_plot(title: str, series: dict, colour: dict, x_label: str, y_label: str, lines: bool = True, log_x: bool = False) -> str:
    """A small SVG chart: ``series`` maps a method to its (x, y) points, drawn as a line (or dots) in its colour."""
    width, height, left, bottom, top, right = 460, 260, 56, 40, 28, 150
    points = [p for values in series.values() for p in values]
    if not points:
        return ""
    def tx(x):
        return math.log10(x) if log_x else x
    xs, ys = [tx(x) for x, _ in points], [y for _, y in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    def px(x):
        return left + (tx(x) - x0) / (x1 - x0) * (width - left - right)
    def py(y):
        return height - bottom - (y - y0) / (y1 - y0) * (height - bottom - top)
    parts = [f'<svg class="plot" role="img" aria-label="{html.escape(title)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{left}" y="16" class="title">{html.escape(title)}</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" class="axis"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" class="axis"/>',
             f'<text x="{left}" y="{height - bottom + 14}" class="tick">{10 ** x0 if log_x else x0:.3g}</text>',
             f'<text x="{width - right}" y="{height - bottom + 14}" class="tick" text-anchor="end">{10 ** x1 if log_x else x1:.3g}</text>',
             f'<text x="{left - 4}" y="{height - bottom}" class="tick" text-anchor="end">{y0:.3g}</text>',
             f'<text x="{left - 4}" y="{top + 8}" class="tick" text-anchor="end">{y1:.3g}</text>',
             f'<text x="{(left + width - right) / 2}" y="{height - 6}" class="label" text-anchor="middle">{html.escape(x_label)}</text>',
             f'<text x="12" y="{(top + height - bottom) / 2}" class="label" text-anchor="middle" '
             f'transform="rotate(-90 12 {(top + height - bottom) / 2})">{html.escape(y_label)}</text>']
    for k, (method, values) in enumerate(sorted(series.items())):
        values = sorted(values)
        if lines and len(values) > 1:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in values)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour[method]}" stroke-width="1.5"/>')
        for x, y in values:
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour[method]}">'
                         f'<title>{html.escape(method)}: {x:.3g}, {y:.4g}</title></circle>')
        parts.append(f'<rect x="{width - right + 8}" y="{top + 14 * k}" width="10" height="10" fill="{colour[method]}"/>'
                      f'<text x="{width - right + 22}" y="{top + 14 * k + 9}" class="tick">{html.escape(method)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def task_section(name: str, entry: dict, images: dict) -> str:
    """A task's table (sortable), its deletion-capacity curves, its metric-vs-time scatter and its samples."""
    metric, rows = entry["metric"], entry["rows"]
    colour = colours(rows)
    columns = [f"test_{metric}", f"forget_{metric}", f"retain_{metric}", "overall_score", "deep_unlearn_score", "unlearn_s"]
    columns += sorted({key for row in rows for key in row["values"] if not key.startswith("gap_")} - set(columns))
    head = ["method", "model", "deletion", "seeds", "rank (overall)", "rank (gap)", *columns, *FACETS, "protocol", "forget_sha256"]
    out = [f'<section id="task-{html.escape(name)}"><h2>{html.escape(name)}</h2>',
           f'<p>{html.escape(entry["task_type"])} · {html.escape(entry["modality"])} · primary metric <code>{html.escape(metric)}</code> · '
           f'card <code>{entry["card_sha256"][:12]}</code>. Ranks are within one deletion set (same <code>forget_sha256</code>); '
           f'mean ± 95% CI over seeds. Click a column to sort.</p>',
           '<table class="board"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for row in rows:
        facets = row["taxonomy"] or dict.fromkeys(FACETS, "undeclared")
        deletion = "classes " + "+".join(row["forget_classes"]) if row["forget_classes"] else f"{row['deletion_ratio'] * 100:g}%"
        cells = [f'<span style="color:{colour[label(row)]}">■</span> {html.escape(label(row))}',
                 html.escape(row["model"]), deletion, str(len(row["seeds"])),
                 str(row["rank_overall"] or "–"), str(row["rank_gap"] or "–"),
                 *[number(row["values"].get(c), 2 if c == "unlearn_s" else 4) for c in columns],
                 *[html.escape(facets[f]) for f in FACETS], html.escape(row["protocol"]),
                 f'<code title="{row["forget_sha256"]}">{row["forget_sha256"][:10]}</code>']
        sort_keys = [label(row), row["model"], row["deletion_ratio"], len(row["seeds"]), row["rank_overall"], row["rank_gap"],
                     *[row["values"].get(c, {}).get("mean") for c in columns], *[facets[f] for f in FACETS], row["protocol"],
                     row["forget_sha256"]]
        out.append("<tr>" + "".join(f'<td data-sort="{html.escape(str("" if k is None else k))}">{c}</td>'
                                    for c, k in zip(cells, sort_keys)) + "</tr>")
    out.append("</tbody></table>")
    out.append("<h3>Mean rank by taxonomy facet (MU-Bench's Table 2)</h3><div class=\"plots\">")
    for facet, values in entry["by_facet"].items():
        out.append(f'<table class="facet"><thead><tr><th>{html.escape(facet)}</th><th>rows</th><th>rank (overall)</th>'
                   '<th>rank (gap)</th></tr></thead><tbody>')
        for value, summary in values.items():
            ranks = ["–" if summary[k] is None else f"{summary[k]:.1f}" for k in ("mean_rank_overall", "mean_rank_gap")]
            out.append(f'<tr><td data-sort="{html.escape(value)}">{html.escape(value)}</td><td data-sort="{summary["rows"]}">'
                       f'{summary["rows"]}</td>' + "".join(f'<td data-sort="{r if r != "–" else ""}">{r}</td>' for r in ranks) + "</tr>")
        out.append("</tbody></table>")
    out.append("</div>")
    plots = []
    curves = {}
    for row in rows:
        if not row["forget_classes"]:
            curves.setdefault((row["model"], row["protocol"], row["split_seed"], row["original_seed"]), []).append(row)
    for (model, protocol, _, _), members in curves.items():
        if len({row["deletion_ratio"] for row in members}) < 2:
            continue
        for part in ("test", "forget"):
            series = {}
            for row in members:
                value = row["values"].get(f"{part}_{metric}")
                if value is not None:
                    series.setdefault(label(row), []).append((row["deletion_ratio"] * 100, value["mean"]))
            plots.append(svg_plot(f"{model}: {part}_{metric} against deletion ratio", series, colour, "deleted (%)", f"{part}_{metric}"))
    scatter = {}
    for row in rows:  # on a log scale of time: rows that took none (the original) are left out
        if row["values"].get("unlearn_s", {}).get("mean", 0) > 0 and f"test_{metric}" in row["values"]:
            scatter.setdefault(label(row), []).append((row["values"]["unlearn_s"]["mean"], row["values"][f"test_{metric}"]["mean"]))
    plots.append(svg_plot(f"test_{metric} against unlearning time", scatter, colour, "unlearn_s (log)", f"test_{metric}",
                          lines=False, log_x=True))
    out.append('<div class="plots">' + "".join(plots) + "</div>")
    shown = [(row, sample) for row in rows for sample in row["samples"] if sample["file"] in images]
    if shown:
        out.append("<h3>Samples (first seed of each row)</h3><div class=\"samples\">")
        for row, sample in shown:
            out.append(f'<figure><img src="{html.escape(images[sample["file"]])}" alt="{html.escape(sample["prompt"])}" width="96">'
                       f'<figcaption>{html.escape(row["method"])} · {html.escape(sample["model"])} · {html.escape(sample["part"])}'
                       f'<br>{html.escape(sample["prompt"])}</figcaption></figure>')
        out.append("</div>")
    out.append("</section>")
    return "\n".join(out)


STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table.board,table.facet{border-collapse:collapse;font-size:12px;margin:.5em 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}th{background:#f3f3f3;cursor:pointer}
td:first-child,th:first-child{text-align:left}.plots{display:flex;flex-wrap:wrap;gap:8px}.plot .title{font-size:12px;font-weight:bold}
.plot .tick{font-size:10px}.plot .label{font-size:11px}.plot .axis{stroke:#444}.samples{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;font-size:10px;width:110px}th.asc::after{content:" ▲"}th.desc::after{content:" ▼"}"""

SORT_SCRIPT = """document.querySelectorAll("table.board, table.facet").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, index) {
    th.addEventListener("click", function () {
      var ascending = !th.classList.contains("asc");
      table.querySelectorAll("th").forEach(function (other) { other.classList.remove("asc", "desc"); });
      th.classList.add(ascending ? "asc" : "desc");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[index].dataset.sort, y = b.cells[index].dataset.sort;
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var nx = Number(x), ny = Number(y);
        var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});"""


def page(board: dict, images: dict) -> str:
    """The static page: one section per task, every style and script inline (no server, no network)."""
    rejected = "".join(f"<li><code>{html.escape(r['file'])}</code>: {html.escape(r['error'])}</li>" for r in board["rejected"])
    links = " · ".join(f'<a href="#task-{html.escape(name)}">{html.escape(name)}</a>' for name in board["tasks"])
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>mubench leaderboard</title>",
        f"<style>{STYLE}</style></head><body>", "<h1>mubench leaderboard</h1>",
        f"<p>{board['n_results']} results, mubench {html.escape(board['mubench_version'])}, built {html.escape(board['generated'])}. "
        f"The data: <a href=\"leaderboard.json\">leaderboard.json</a>. Tasks: {links}</p>",
        *(task_section(name, entry, images) for name, entry in board["tasks"].items()),
        ulira_section(board["ulira"]),
        (f"<h2>Rejected files</h2><ul>{rejected}</ul>" if rejected else ""),
        f"<script>{SORT_SCRIPT}</script>", "</body></html>"])


def ulira_section(attacks: dict) -> str:
    """The U-LiRA results of every task, one table (empty when there are none)."""
    if not attacks:
        return ""
    head = ["task", "method", "arguments", "deletion", "shadows", "targets", "U-LiRA balanced accuracy (0.5: perfect)"]
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in (
        task, row["method"], row["tuned"] or ", ".join(f"{k}={v}" for k, v in row["method_args"].items()) or "–",
        f"{row['deletion_ratio'] * 100:g}%", row["shadows"], row["n_targets"], number(row["balanced_accuracy"], 3))) + "</tr>"
        for task, rows in attacks.items() for row in rows)
    return (f'<section id="ulira"><h2>U-LiRA</h2><p>The per-example attack of Deep Unlearn (Hayes et al. 2024): shadow '
            f'originals on halves of the training split, each unlearned on the part of D_f it holds; mean ± 95% CI over the '
            f'held-out shadows.</p><table class="board"><thead><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}'
            f"</tr></thead><tbody>{body}</tbody></table></section>")


def card_setting(row: dict, card) -> bool:
    """Whether a row ran as the card has it: its split seed and θ₀'s seed, no given arguments, no PEFT."""
    return not row["method_args"] and row["peft"] is None and row["original_seed"] is None and row["split_seed"] == card.split_seed


def headline_rows(entry: dict, card) -> list[dict]:
    """A task's rows on the card's own deletion set (its default ratio, or its classes, in the card's setting): the
    original, the retrained model, then the rest by the gap to retraining (closest first)."""
    rows = [row for row in entry["rows"]
            if card_setting(row, card) and (row["forget_classes"] or row["deletion_ratio"] == card.default_ratio)]
    def order(row):
        gap = row["values"].get("deep_unlearn_score", {}).get("mean")
        return ({"original": 0, "retrain": 1}.get(row["method"], 2), math.inf if gap is None else gap, row["method"])
    return sorted(rows, key=order)


def markdown(board: dict, registry) -> str:
    """The result tables of every task, as Markdown (the README's): per method, mean ± 95% CI over seeds of the primary
    metric on D_test, D_f and D_r (and the forgotten classes' test examples), the attacks, MU-Bench's overall score,
    Deep Unlearn's gap to retraining, the D_f gap, the efficiency t_retrain / t_method and the unlearning seconds; for a
    task with several deletion ratios, its deletion capacity too."""
    out = []
    for name, entry in board["tasks"].items():
        card, m = registry.card(name), entry["metric"]
        rows = headline_rows(entry, card)
        extras = tuned_table(name, entry, card) + originals_table(name, entry) + ulira_table(name, board["ulira"].get(name, []))
        if not rows:
            out += extras
            continue
        parts = ["test", "forget", "retain"] + (["forgotten"] if any(f"forgotten_{m}" in r["values"] for r in rows) else [])
        columns = [(f"{part}_{m}", f"{part} {m}", 3) for part in parts] + [
            ("forget_mia_efficacy", "MIA-efficacy", 2), ("forget_mia_loss_acc", "loss attack", 2),
            ("overall_score", "MU-Bench overall", 3), ("deep_unlearn_score", "Deep Unlearn ↓", 3),
            (f"gap_forget_{m}", "D_f gap to retrain", 3), ("efficiency", "efficiency", 1)]
        first = rows[0]
        where = "classes " + ", ".join(first["forget_classes"]) if first["forget_classes"] else f"{first['deletion_ratio'] * 100:g}%"
        out += [f"**`{name}`** ({where}, {first['n_forget']} examples of D_f; seeds {', '.join(map(str, first['seeds']))}):", "",
                "| method | " + " | ".join(title for _, title, _ in columns) + " | unlearn s |",
                "|---" * (len(columns) + 2) + "|"]
        for row in rows:
            cells = []
            for key, _, digits in columns:
                if row["method"] == "retrain" and key in ("deep_unlearn_score", f"gap_forget_{m}", "efficiency"):
                    cells.append("0 (itself)" if key == "deep_unlearn_score" else "0" if key.startswith("gap") else "1")
                elif row["method"] == "original" and key == "efficiency":
                    cells.append("–")  # it does nothing: t_retrain over a few microseconds is no speed
                else:
                    cells.append(number(row["values"].get(key), digits))
            seconds = row["values"].get("unlearn_s")
            cells.append("–" if seconds is None else f"{seconds['mean']:.2f}")
            out.append(f"| `{row['method']}` | " + " | ".join(cells) + " |")
        out.append("")
        ratios = sorted({row["deletion_ratio"] for row in entry["rows"] if not row["forget_classes"]})
        if len(ratios) > 2:
            shown = [ratios[0], card.default_ratio, ratios[-1]]
            out += [f"**Deletion capacity on `{name}`**: test {m} / D_f {m} / MU-Bench overall / rank by the gap to retraining, "
                    "means over the seeds:", "", "| method | " + " | ".join(f"{r * 100:g}%" for r in shown) + " |",
                    "|---" * (len(shown) + 1) + "|"]
            for row in rows:
                cells = []
                for ratio in shown:
                    [match] = [r for r in entry["rows"] if r["method"] == row["method"] and r["deletion_ratio"] == ratio
                               and card_setting(r, card)
                               and (r["protocol"], r["original_sha256"]) == (row["protocol"], row["original_sha256"])] or [None]
                    if match is None:
                        cells.append("–")
                        continue
                    v = match["values"]
                    triple = [f"{v[k]['mean']:.3f}" if k in v else "–" for k in (f"test_{m}", f"forget_{m}", "overall_score")]
                    cells.append(" / ".join(triple + ["–" if row["method"] == "retrain" else str(match["rank_gap"] or "–")]))
                out.append(f"| `{row['method']}` | " + " | ".join(cells) + " |")
            out.append("")
        out += extras
    for name, attacks in board["ulira"].items():
        if name not in board["tasks"]:
            out += ulira_table(name, attacks)
    return "\n".join(out)


def tuned_table(name: str, entry: dict, card) -> list[str]:
    """Markdown: each row run with `mubench tune`'s choice beside the same method's default row (same deletion set)."""
    m, lines = entry["metric"], []
    for row in entry["rows"]:
        if row["tuned"] is None:
            continue
        [default] = [r for r in entry["rows"] if r["deletion_set"] == row["deletion_set"] and r["method"] == row["method"]
                     and r["deletion_ratio"] == row["deletion_ratio"] and card_setting(r, card)] or [None]
        def pair(key, digits=3):
            return " → ".join(number((r or {"values": {}})["values"].get(key), digits) for r in (default, row))
        args = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["method_args"].items())
        ranks = " → ".join(str(r["rank_gap"]) if r else "–" for r in (default, row))
        lines.append(f"| `{row['method']}` | {args} | {pair(f'test_{m}')} | {pair(f'forget_{m}')} | {pair(f'retain_{m}')} | "
                     f"{pair('deep_unlearn_score')} | {ranks} | `{row['tuned']}` |")
    if not lines:
        return []
    first = next(row for row in entry["rows"] if row["tuned"])
    return [f"**Tuned vs default on `{name}`** ({first['deletion_ratio'] * 100:g}%; default → tuned, mean ± 95% CI over seeds "
            f"{', '.join(map(str, first['seeds']))}; rank by the gap to retraining among all rows of the deletion set):", "",
            f"| method | tuned hyperparameters | test {m} | D_f {m} | D_r {m} | Deep Unlearn ↓ | rank | study#trial |",
            "|---" * 8 + "|", *lines, ""]


def originals_table(name: str, entry: dict) -> list[str]:
    """Markdown: configurations run on several θ₀s, with the spread over originals and over run seeds apart."""
    m, lines = entry["metric"], []
    for row in entry["over_originals"]:
        cells = []
        for key in (f"test_{m}", f"forget_{m}", "deep_unlearn_score"):
            v = row["values"].get(key)
            cells.append("–" if v is None else f"{v['mean']:.3f} (±{v['std_originals'] or 0:.3f} θ₀, ±{v['std_seeds'] or 0:.3f} seeds)")
        lines.append(f"| `{label(row)}` | {row['deletion_ratio'] * 100:g}% | {len(row['original_seeds'])} | "
                     + " | ".join(cells) + " |")
    if not lines:
        return []
    return [f"**Over initialisations on `{name}`** (mean over θ₀s of the mean over run seeds; standard deviation across θ₀s "
            "and, averaged, within one θ₀ across run seeds):", "",
            f"| method | deletion | θ₀s | test {m} | D_f {m} | Deep Unlearn ↓ |", "|---" * 6 + "|", *lines, ""]


def ulira_table(name: str, attacks: list[dict]) -> list[str]:
    """Markdown: U-LiRA's balanced accuracy per method (0.5 is perfect unlearning)."""
    if not attacks:
        return []
    lines = [f"**U-LiRA on `{name}`** (balanced accuracy of the per-example likelihood-ratio attack, mean ± 95% CI over the "
             "held-out shadows; 0.5 is perfect unlearning):", "", "| method | deletion | shadows | targets | U-LiRA ↓ |", "|---" * 5 + "|"]
    for row in attacks:
        method = f"{row['method']} (tuned)" if row["tuned"] else label(row)
        lines.append(f"| `{method}` | {row['deletion_ratio'] * 100:g}% | {row['shadows']} | {row['n_targets']} | "
                     f"{number(row['balanced_accuracy'], 3)} |")
    return lines + [""]


def write_site(board: dict, out: Path, registry) -> Path:
    """``leaderboard.json``, ``index.html``, the result tables as Markdown (``tables.md``) and the sample images the page
    shows, written into ``out`` as one unit."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "leaderboard.json").is_file())):
        raise UserError(f"--out {out}: exists and is not a leaderboard built before; name a new folder")
    with atomic_folder(out) as tmp:
        images = {}
        for entry in board["tasks"].values():
            for row in entry["rows"]:
                for sample in row["samples"]:
                    source = Path(sample["file"])
                    if source.is_file():
                        name = f"samples/{hashlib.sha256(str(source).encode()).hexdigest()[:12]}-{source.name}"
                        (tmp / "samples").mkdir(exist_ok=True)
                        shutil.copyfile(source, tmp / name)
                        images[sample["file"]] = name
        write_json(tmp / "leaderboard.json", board)
        (tmp / "index.html").write_text(page(board, images), encoding="utf-8")
        (tmp / "tables.md").write_text(markdown(board, registry), encoding="utf-8")
    return out / "index.html"
