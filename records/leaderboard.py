"""The leaderboard, from records/ alone: a table per track in README.md (between the leaderboard markers) and a
static records/leaderboard.html with a chart of metric against FLOPs for the budget tracks.

Only records that validate, sit in records/<track>/<date>_<slug>/ and hold no log another record holds are listed;
every other one is listed as left out, with the reason, and the page is still written. Both files are written whole
or not at all (a temporary file, then os.replace). Every string that comes from a record is escaped, and the output
is byte-identical when nothing changed (no timestamps, stable order). serve() shows the page on localhost.
"""

import html
import http.server
import math
import os
import re
import tempfile

from records import trust
from records.attest import LEVELS
from records.record import TRACKS_FILE, across_records, load_tracks, validate

START, END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"
HEADERS = ["date", "record", "author", "description", "metric (mean ± std)", "training time", "model FLOPs", "runs",
           "replayed", "rules", "commit", "folder", "links"]
LINKS = (("url", "code"), ("run_link", "run"))  # results.json key, the link's label


def ranked_records(records_dir, tracks, tracks_file=TRACKS_FILE, report=None):
    """{track id: [entries, best first]} of the records that are listed; report(line) hears of every one left out.
    An entry is {"record", "cells", "links", "point"}: everything shown, computed before anything is written."""
    report = report or (lambda line: None)
    paths, refused = trust.find_records(records_dir, tracks)
    for line in refused:
        report(line)
    valid, levels = {}, {}
    for path in paths:
        failures, notes = validate(path, tracks_file)
        note = lambda key, default: next((n[len(key) + 2:] for n in notes if n.startswith(f"{key}: ")), default)
        levels[path] = (note("replay", LEVELS[-1]), note("resources", "not measured"), note("ab", ""))
        if failures:
            report(trust.printable(f"{path}: {len(failures)} problem(s), the first: {failures[0]}"))
            continue
        try:
            valid[path] = trust.read_json(os.path.join(path, "results.json"))
        except trust.RecordError as e:
            report(str(e))
    for path, lines in across_records(valid).items():
        report(trust.printable(f"{path}: {lines[0]}"))
        del valid[path]
    board = {track_id: [] for track_id in tracks}
    for path, record in sorted(valid.items()):
        try:
            board[record["track"]].append(entry(path, record, tracks[record["track"]], records_dir, levels[path]))
        except Exception as e:  # a field validate let through that the board cannot show: left out, not a crash
            report(trust.one_line(path, f"cannot be listed ({type(e).__name__}: {e})"))
    for records in board.values():
        records.sort(key=lambda e: e["rank"])
    return board


def entry(path, record, track, records_dir, level=(LEVELS[-1], "not measured", "")):
    """What the board shows of one record: its cells, links and chart point, and its rank key: a record of seeds
    0..N-1 before one that chose its seeds (seeds_note), then the track's rank_by mean, the date, the slug. `level`:
    how far it was replayed (records/attest.py) and whether it kept the track's rules on resources, shown beside it."""
    s = record["summary"]
    metric, time_s, flops = s.get(track["metric"], {}), s["training_time_s"], s["model_flops"]["mean"]
    values = [metric.get("mean", math.nan), metric.get("std", math.nan), time_s["mean"], time_s["std"], flops]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError("a summary value is not a number")
    if not (flops > 0 and math.isfinite(flops)):
        raise ValueError(f"model FLOPs {flops} are not a positive number")
    author = record.get("author") or ""
    if record.get("affiliation"):
        author += f" ({record['affiliation']})"
    name = record["slug"]
    if record.get("modified"):  # validate checked that the runs' diffs change exactly these files, all prose
        name += f" (modified tree: {', '.join(record['modified'])})"
    if record.get("seeds_note"):  # validate checked it is one line of text
        name += f" (seeds chosen: {record['seeds_note']})"
    cells = [record["date"], name, author, record["description"],
             f"{values[0]:.4f} ± {values[1]:.4f}",
             f"{values[2]:.1f} s ± {values[3]:.1f}" + (f" ({level[2]})" if level[2] else ""), f"{flops:.3g}",
             str(len(record["runs"])), level[0], level[1], record["commit"][:10], os.path.relpath(path, os.path.dirname(records_dir))]
    if not all(isinstance(c, str) for c in cells):
        raise ValueError("a field shown is not a string")
    links = [(label, record[key]) for key, label in LINKS if record.get(key)]
    point = (flops, values[0], record["slug"]) if math.isfinite(values[0]) else None
    rank = (bool(record.get("seeds_note")), s[track["rank_by"]]["mean"], record["date"], record["slug"])
    return {"record": record, "cells": cells, "links": links, "point": point, "rank": rank}


# -----------------------------------------------------------------------------
# README.md's table


def markdown_escape(text):
    """One table cell: every control, bidi or line-break character and run of whitespace made one space (a \\r or a
    newline cannot end the row), HTML escaped, and the Markdown syntax characters (| too) backslashed."""
    text = " ".join("".join(" " if trust.hidden(c) else c for c in str(text)).split())
    return re.sub(r"([\\`*_{}\[\]()#+!|~<>])", r"\\\1", html.escape(text, quote=False))


def markdown(board, tracks):
    lines = [START, ""]
    for track_id, entries in board.items():
        lines += [f"### {track_id}", "", markdown_escape(tracks[track_id]["description"]), ""]
        if not entries:
            lines += ["No records yet.", ""]
            continue
        lines += ["| " + " | ".join(["#"] + HEADERS) + " |", "|" + "---|" * (len(HEADERS) + 1)]
        for rank, e in enumerate(entries, 1):
            links = ", ".join(f"{label}: {url}" for label, url in e["links"])
            lines.append("| " + " | ".join([str(rank)] + [markdown_escape(c) for c in e["cells"] + [links]]) + " |")
        lines.append("")
    return "\n".join(lines + [END])


# -----------------------------------------------------------------------------
# leaderboard.html


def chart(entries, track):
    """An SVG of the metric against model FLOPs (log scale), one point per record with FLOPs > 0."""
    points = [e["point"] for e in entries if e["point"]]
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


def html_links(links):
    """Links as anchors: their URLs are http(s) (trust.url_problem) and escaped; nofollow, no referrer."""
    return ", ".join(f'<a href="{html.escape(url, quote=True)}" rel="nofollow noopener noreferrer">'
                     f"{html.escape(label)}</a>" for label, url in links)


def html_page(board, tracks, left_out=()):
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>Speedrun leaderboard</title>',
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid "
             "#ccc;padding:4px 8px}th{background:#eee}</style></head><body>", "<h1>Speedrun leaderboard</h1>"]
    for track_id, entries in board.items():
        track = tracks[track_id]
        parts += [f'<h2 id="{html.escape(track_id)}">{html.escape(track_id)}</h2>',
                  f"<p>{html.escape(track['description'])}</p>"]
        if not entries:
            parts.append("<p>No records yet.</p>")
            continue
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in ["#"] + HEADERS) + "</tr>")
        for rank, e in enumerate(entries, 1):
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in [str(rank)] + e["cells"])
                         + f"<td>{html_links(e['links'])}</td></tr>")
        parts.append("</table>")
        if "budget_flops" in track:
            parts.append(chart(entries, track))
    if left_out:
        parts += ["<h2>Left out</h2>", "<ul>"] + [f"<li>{html.escape(line)}</li>" for line in left_out] + ["</ul>"]
    return "\n".join(parts + ["</body></html>"]) + "\n"


# -----------------------------------------------------------------------------
# Writing, whole or not at all; serving


def write_atomic(path, text):
    """path holds text, or what it held before: the text goes to a temporary file beside it, then os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_leaderboard(records_dir, readme, tracks_file=TRACKS_FILE, report=None):
    """Both files built in memory first, then each replaced whole: a failure leaves the old ones."""
    tracks = load_tracks(tracks_file)
    left_out, base = [], os.path.dirname(os.path.abspath(records_dir)) + os.sep

    def hear(line):  # the page names folders from the repository's root: the same page on every machine
        left_out.append(trust.printable(line.replace(base, "")))
        if report:
            report(trust.printable(line))

    board = ranked_records(records_dir, tracks, tracks_file, hear)
    page_path = os.path.join(records_dir, "leaderboard.html")
    page = html_page(board, tracks, left_out)
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    table = markdown(board, tracks)
    if START in text and END in text:
        text = text[:text.index(START)] + table + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Records\n\n" + table + "\n"
    write_atomic(page_path, page)
    write_atomic(readme, text)
    return [page_path, readme]


def make_server(page_path, port=8000, host="127.0.0.1"):
    """An HTTP server on localhost that answers / and /leaderboard.html with the page as it is on disk (read anew
    for each request), and 404 to anything else; serve it with serve_forever()."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?", 1)[0] not in ("/", "/leaderboard.html"):
                return self.send_error(404, "only the leaderboard is served here: /")
            try:
                body = trust.read_bounded(page_path, trust.LOG_BYTES)
            except trust.RecordError as e:
                return self.send_error(500, str(e))
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            print(trust.printable(f"{self.address_string()} {format % args}"))

    return http.server.ThreadingHTTPServer((host, port), Page)
