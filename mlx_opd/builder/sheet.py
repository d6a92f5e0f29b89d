"""DATA/sheet.html: an offline contact sheet of kept and dropped items to scan by eye.

Each card: the full image with the box drawn, the crop, the question and its options, the
crop's k answers and the full image's m answers, and the verdict with its reason. Images
are embedded (JPEG data URIs): the page opens from anywhere, without a server or network.
"""

from __future__ import annotations

import html
from pathlib import Path

from PIL import Image

from mlx_opd.evaluation.pages import data_uri as _data_uri
from mlx_opd.method.views import LETTERS

PER_SECTION = 48  # cards per section: the page stays light


def _answers(letters) -> str:
    if not letters:
        return "-"
    return " ".join("?" if x is None else x for x in letters)


def card(it: dict, boxed: Image.Image | None, crop: Image.Image | None) -> str:
    """One item's card; without images (None) when its photo is gone."""
    q, c, m = it["question_rec"], it["consensus"], it["mining"]
    e = html.escape
    opts = "".join(f"<li>{LETTERS[i]}. {e(str(o))}</li>" for i, o in enumerate(q.get("options") or []))
    answer = q.get("answer") or (c or {}).get("majority") or "-"
    rows = [f"<b>{e(q.get('question') or '(no question)')}</b><ul class=o>{opts}</ul>",
            f"answer <b>{e(str(answer))}</b> &middot; {e(q['region']['label'])} &middot; "
            f"{e(q['style'])}"]
    if c and c["agreement"] is not None:  # None: the photo was lost before the stage
        rows.append(f"crop: {_answers(c['letters'])} (agreement {c['agreement']:.2f})")
    if m and m["full_acc"] is not None:
        rows.append(f"full: {_answers(m['letters'])} (accuracy {m['full_acc']:.2f})")
    verdict = "kept" if it["status"] == "kept" else f"{it['status']}: {it['reason']}"
    cls = "kept" if it["status"] == "kept" else "drop"
    ims = ("(photo lost)" if boxed is None else
           f'<img src="{_data_uri(boxed, 300)}"><img src="{_data_uri(crop, 150)}">')
    return (f'<div class="card {cls}"><div class=ims>{ims}</div><div class=t>{"<br>".join(rows)}'
            f'<div class=v>{e(verdict)}</div><div class=id>{e(q["id"])}</div></div></div>')


STYLE = """body{font:13px system-ui,sans-serif;margin:16px;background:#fafafa}
h1{font-size:18px}h2{font-size:15px;margin-top:22px}.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #ccc;border-left:6px solid #999;width:470px;
padding:8px;display:flex;gap:8px}.kept{border-left-color:#2a2}.drop{border-left-color:#c33}
.ims{display:flex;flex-direction:column;gap:4px}.ims img{max-width:170px;border:1px solid #ddd}
.t{flex:1}.o{margin:2px 0 4px 4px;padding:0;list-style:none}.v{margin-top:4px;color:#444}
.id{color:#999;font-size:11px}table{border-collapse:collapse}td,th{border:1px solid #ccc;
padding:2px 8px;text-align:right}"""


def write_sheet(path: Path, items: list[dict], report: dict, images_dir: Path, views,
                per_section: int = PER_SECTION) -> Path:
    """The page, kept items first, then each stage's drops (the first `per_section` of
    each)."""
    from mlx_opd.data.images import open_rgb
    from mlx_opd.method.views import crop_box, draw_box
    from mlx_opd.run.errors import DataError

    sections: dict[str, list] = {}
    for it in items:
        sections.setdefault(it["status"], []).append(it)
    order = ["kept"] + sorted(k for k in sections if k != "kept")
    st = report["stages"]
    summary = "".join(
        f"<tr><th>{k}</th><td>{v.get('in', v.get('images', ''))}</td><td>{v.get('out', '')}</td>"
        f"<td style='text-align:left'>{html.escape(', '.join(f'{a}: {b}' for a, b in v.get('dropped', {}).items()))}</td></tr>"
        for k, v in st.items())
    parts = [f"<!doctype html><meta charset=utf-8><title>mlx-opd build-data</title>"
             f"<style>{STYLE}</style><h1>mlx-opd build-data: {report['output'].get('train', 0)} "
             f"train + {report['output'].get('heldout', 0)} held-out items</h1>"
             f"<p>builder {html.escape(str(report['models'].get('builder')))}, miner "
             f"{html.escape(str(report['models'].get('miner')))}</p><table><tr><th>stage</th>"
             f"<th>in</th><th>out</th><th>dropped (reason: count)</th></tr>{summary}</table>"]
    for name in order:
        group = sections.get(name, [])
        anchor = name.replace(":", "").replace(" ", "-")  # sheet.html#dropped-mining
        parts.append(f"<h2 id={anchor}>{html.escape(name)} ({len(group)}"
                     f"{', first ' + str(per_section) if len(group) > per_section else ''})</h2>"
                     "<div class=grid>")
        for it in group[:per_section]:
            rel = it["question_rec"]["image"]
            try:  # one photo at a time: big photos add up
                full = open_rgb(images_dir / rel, rel)
            except DataError:  # gone since (the item's reason says so)
                parts.append(card(it, None, None))
                continue
            box = it["question_rec"]["region"]["box"]
            parts.append(card(it, draw_box(full, box, views), crop_box(full, box, views)))
        parts.append("</div>")
    path.write_text("".join(parts))
    return path


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 1600,
               section: str | None = None) -> Path | None:
    """The page as headless Chromium renders it, from the top or from `section` (an
    anchor: "kept", "dropped-mining", ...); None when no Chromium is installed."""
    import shutil
    import subprocess
    import tempfile

    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(n)), None)
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={png}",
                        Path(page).resolve().as_uri() + (f"#{section}" if section else "")],
                       check=True, capture_output=True, timeout=120)
    return png
