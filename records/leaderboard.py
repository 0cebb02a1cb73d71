"""The leaderboard, from records/ alone: a table per track in README.md (between the leaderboard markers) and a
static records/leaderboard.html with a chart of metric against FLOPs for the budget tracks.

Only records that validate are listed. Every string that comes from a record is escaped, and the output is
byte-identical when nothing changed (no timestamps, stable order).
"""

import glob
import html
import json
import math
import os
import re

from records.record import TRACKS_FILE, load_tracks, validate

START, END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"


def ranked_records(records_dir, tracks, tracks_file=TRACKS_FILE, report=None):
    """{track id: [record dicts, best first]} of the records that validate; report(line) hears of the others."""
    board = {track_id: [] for track_id in tracks}
    for results in sorted(glob.glob(os.path.join(records_dir, "*", "*", "results.json"))):
        path = os.path.dirname(results)
        failures, _ = validate(path, tracks_file)
        if failures:
            if report:
                report(f"{path}: {len(failures)} problem(s), the first: {failures[0]}")
            continue
        with open(results) as f:
            record = json.load(f)
        record["path"] = os.path.relpath(path, os.path.dirname(records_dir))
        board[record["track"]].append(record)
    for track_id, records in board.items():
        key = tracks[track_id]["rank_by"]
        records.sort(key=lambda r: (r["summary"][key]["mean"], r["date"], r["slug"]))
    return board


def cells(track, record):
    s = record["summary"]
    metric = s.get(track["metric"], {})
    time_s = s["training_time_s"]
    return [record["date"], record["slug"], record["description"],
            f"{metric.get('mean', float('nan')):.4f} ± {metric.get('std', float('nan')):.4f}",
            f"{time_s['mean']:.1f} s ± {time_s['std']:.1f}", f"{s['model_flops']['mean']:.3g}",
            str(len(record["runs"])), record["commit"][:10], record["path"]]


HEADERS = ["date", "record", "description", "metric (mean ± std)", "training time", "model FLOPs", "runs", "commit",
           "folder"]


def markdown_escape(text):
    text = html.escape(str(text), quote=False).replace("\n", " ")
    return re.sub(r"([\\`*_{}\[\]()#+!|~])", r"\\\1", text)


def markdown(board, tracks):
    lines = [START, ""]
    for track_id, records in board.items():
        track = tracks[track_id]
        lines += [f"### {track_id}", "", markdown_escape(track["description"]), ""]
        if not records:
            lines += ["No records yet.", ""]
            continue
        lines += ["| " + " | ".join(["#"] + HEADERS) + " |", "|" + "---|" * (len(HEADERS) + 1)]
        for rank, record in enumerate(records, 1):
            lines.append("| " + " | ".join([str(rank)] + [markdown_escape(c) for c in cells(track, record)]) + " |")
        lines.append("")
    return "\n".join(lines + [END])


def chart(records, track):
    """An SVG of the metric against model FLOPs (log scale), one point per record."""
    points = [(r["summary"]["model_flops"]["mean"], r["summary"][track["metric"]]["mean"], r["slug"]) for r in records]
    if not points:
        return ""
    xs = [math.log10(p[0]) for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs) - 0.5, max(xs) + 0.5
    y0, y1 = min(ys) - 0.05 * (abs(min(ys)) + 1e-9), max(ys) + 0.05 * (abs(max(ys)) + 1e-9)
    def sx(x): return 50 + 500 * (x - x0) / (x1 - x0)
    def sy(y): return 220 - 200 * (y - y0) / (y1 - y0)
    dots = "".join(f'<circle cx="{sx(math.log10(f)):.1f}" cy="{sy(v):.1f}" r="4"><title>{html.escape(slug)}: '
                   f'{v:.4f} at {f:.3g} FLOPs</title></circle>' for f, v, slug in points)
    return (f'<svg width="600" height="250" role="img" aria-label="{html.escape(track["metric"])} against model FLOPs">'
            f'<line x1="50" y1="220" x2="550" y2="220" stroke="black"/><line x1="50" y1="20" x2="50" y2="220" '
            f'stroke="black"/><text x="300" y="245" text-anchor="middle">model FLOPs (log10, {x0:.1f} to {x1:.1f})'
            f'</text><text x="5" y="15">{html.escape(track["metric"])}</text>{dots}</svg>')


def html_page(board, tracks):
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>Speedrun leaderboard</title>',
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid "
             "#ccc;padding:4px 8px}th{background:#eee}</style></head><body>", "<h1>Speedrun leaderboard</h1>"]
    for track_id, records in board.items():
        track = tracks[track_id]
        parts += [f'<h2 id="{html.escape(track_id)}">{html.escape(track_id)}</h2>',
                  f"<p>{html.escape(track['description'])}</p>"]
        if not records:
            parts.append("<p>No records yet.</p>")
            continue
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in ["#"] + HEADERS) + "</tr>")
        for rank, record in enumerate(records, 1):
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in [str(rank)] + cells(track, record))
                         + "</tr>")
        parts.append("</table>")
        if "budget_flops" in track:
            parts.append(chart(records, track))
    return "\n".join(parts + ["</body></html>"]) + "\n"


def write_leaderboard(records_dir, readme, tracks_file=TRACKS_FILE, report=None):
    tracks = load_tracks(tracks_file)
    board = ranked_records(records_dir, tracks, tracks_file, report)
    page = os.path.join(records_dir, "leaderboard.html")
    with open(page, "w", encoding="utf-8") as f:
        f.write(html_page(board, tracks))
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    table = markdown(board, tracks)
    if START in text and END in text:
        text = text[:text.index(START)] + table + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Records\n\n" + table + "\n"
    with open(readme, "w", encoding="utf-8") as f:
        f.write(text)
    return [page, readme]
