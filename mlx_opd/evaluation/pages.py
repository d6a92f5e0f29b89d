"""Results as pages: self-contained HTML that opens from disk, no server, images embedded.

- `eval_page`: `eval --out OUT.json` writes OUT.html beside it: the headline figures and
  the chart on top, then a card per item (the image with its box, the crop, the question
  and options, each view's answer marked right or wrong, the gold), filterable by right /
  wrong per view. The filters also read the page's address (`OUT.html#plain=wrong`), so a
  link opens a filtered page.
- `changes_page`: `eval --compare BEFORE.json AFTER.json --out CMP.json` writes CMP.html:
  the per-category differences with their intervals on top, then per view the items that
  went from wrong to right (fixed) and from right to wrong (broken), from the two evals'
  rows (OUT.jsonl).
Cards are built from the eval rows alone (image path, box, question, options, answers), so
a page can be written again later from the files.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from PIL import Image

from mlx_opd.method.views import LETTERS

THUMB, CROP_THUMB = 320, 160  # longest side in the page, pixels


def data_uri(im: Image.Image, side: int) -> str:
    """A JPEG data URI of `im` shrunk to `side` pixels on its longest side."""
    im = im.copy()
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _thumbs(full: Image.Image, box, crop: Image.Image | None, views) -> tuple[str, str | None]:
    """(the image with its box drawn, the crop) as data URIs; the crop is the box cropped
    as the teacher sees it unless one is given (a benchmark's own)."""
    from mlx_opd.method.views import crop_box, draw_box

    if crop is None and box:
        crop = crop_box(full, box, views)
    shown = draw_box(full, box, views) if box else full
    return data_uri(shown, THUMB), None if crop is None else data_uri(crop, CROP_THUMB)


def item_images(item: dict, views) -> tuple[str | None, str | None]:
    """An eval row's (image with its box, crop) as data URIs; (None, None) when the image
    is not a file that can still be read."""
    from mlx_opd.data.images import open_rgb
    from mlx_opd.run.errors import DataError

    if not item.get("image"):
        return None, None
    try:
        return _thumbs(open_rgb(Path(item["image"]), item["image"]), item.get("box"), None,
                       views)
    except DataError:
        return None, None


def bench_images(item, views) -> tuple[str | None, str | None]:
    """A benchmark item's (image with its box, its crop: the benchmark's own where it has
    one, as ZoomBench, else the box cropped) as data URIs; (None, None) if unreadable."""
    from mlx_opd.data.images import open_rgb
    from mlx_opd.run.errors import DataError

    try:
        crop = None if item.crop is None else open_rgb(item.crop, item.where)
        return _thumbs(open_rgb(item.image, item.where), item.box, crop, views)
    except DataError:
        return None, None


def items_of(rows: list[dict]) -> dict[str, dict]:
    """Eval rows (one per sample and view) grouped per sample, in order."""
    items: dict[str, dict] = {}
    for r in rows:
        it = items.setdefault(r["id"], {k: r.get(k) for k in
                                        ("id", "image", "box", "options", "expected",
                                         "category")}
                              | {"question": r.get("question") or r.get("prompt"), "views": {}})
        it["views"][r["view"]] = {"answer": r.get("answer", ""), "parsed": r.get("parsed"),
                                  "correct": bool(r.get("correct"))}
    return items


def card(it: dict, views, extra: str = "", images: tuple | None = None) -> str:
    e = html.escape
    full, crop = images if images is not None else item_images(it, views)
    ims = ("<div class=lost>(image not found)</div>" if full is None else
           f'<img class=full src="{full}">' + (f'<img class=crop src="{crop}">' if crop else ""))
    opts = "".join(f"<li>{LETTERS[i]}. {e(str(o))}</li>"
                   for i, o in enumerate(it.get("options") or []))
    answers = "".join(
        f'<tr class="{"right" if a["correct"] else "wrong"}"><th>{e(v)}</th>'
        f'<td>{"&#10003;" if a["correct"] else "&#10007;"}</td><td>{e(str(a["parsed"] or "?"))}'
        f'</td><td class=raw>{e(str(a["answer"]).strip()[:80])}</td></tr>'
        for v, a in it["views"].items())
    attrs = " ".join(f'data-{e(v)}="{"right" if a["correct"] else "wrong"}"'
                     for v, a in it["views"].items())
    return (f'<div class=card data-id="{e(str(it["id"]))}" data-category="'
            f'{e(str(it.get("category") or "all"))}" {attrs}><div class=ims>{ims}</div>'
            f'<div class=t><b>{e(str(it.get("question") or ""))}</b><ul class=o>{opts}</ul>'
            f'gold <b>{e(str(it.get("expected") or "-"))}</b><table class=a>{answers}</table>'
            f'{extra}<div class=id>{e(str(it["id"]))}</div></div></div>')


STYLE = """body{font:13px system-ui,sans-serif;margin:16px;background:#fafafa}
h1{font-size:18px}h2{font-size:15px;margin-top:22px}.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #ccc;width:560px;padding:8px;display:flex;gap:8px}
.ims{display:flex;flex-direction:column;gap:4px}.ims img{border:1px solid #ddd}
.full{max-width:240px}.crop{max-width:120px}.t{flex:1}.o{margin:2px 0 4px 4px;padding:0;
list-style:none}.a td,.a th{padding:1px 6px;border:0;text-align:left}.right td{color:#282}
.wrong td{color:#c22}.raw{color:#666!important;font-size:11px}.id{color:#999;font-size:11px}
.lost{width:240px;height:60px;color:#999}table.s{border-collapse:collapse}
table.s td,table.s th{border:1px solid #ccc;padding:2px 8px;text-align:right}
.filters{margin:10px 0;display:flex;gap:14px;align-items:center}"""

# Filters: a select per view (any / right / wrong) and per category; the address's hash
# (#plain=wrong&teacher=right) sets them on load, so a link opens a filtered page.
SCRIPT = """<script>
function apply(){let n=0;const sel=[...document.querySelectorAll('.filters select')];
document.querySelectorAll('.card').forEach(c=>{const ok=sel.every(s=>s.value==='any'||
c.dataset[s.name]===s.value);c.style.display=ok?'':'none';n+=ok});
document.getElementById('shown').textContent=n+' of '+document.querySelectorAll('.card').length
+' items shown';}
window.addEventListener('DOMContentLoaded',()=>{const h=new URLSearchParams(location.hash.slice(1));
document.querySelectorAll('.filters select').forEach(s=>{if(h.get(s.name))s.value=h.get(s.name);
s.addEventListener('change',apply)});apply();});
</script>"""


def _filters(views: list[str], categories: list[str]) -> str:
    def select(name, values):
        opts = "".join(f"<option>{html.escape(v)}</option>" for v in ["any", *values])
        return f"<label>{html.escape(name)} <select name={html.escape(name)}>{opts}</select></label>"
    parts = [select(v, ["right", "wrong"]) for v in views]
    if len(categories) > 1:
        parts.append(select("category", categories))
    return f"<div class=filters>{''.join(parts)}<span id=shown></span></div>"


def _head(title: str) -> str:
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style>{SCRIPT}<h1>{html.escape(title)}</h1>")


def eval_page(summary: dict, rows: list[dict], path: Path, views, chart: Path | None = None,
              title: str = "", images: dict | None = None) -> Path:
    """OUT.html of an eval: figures, chart, one filterable card per item (`images`: id ->
    (full, crop) data URIs made by the caller, as a benchmark's are; else from the rows)."""
    items = items_of(rows)
    names = list(dict.fromkeys(r["view"] for r in rows))
    accs = {v: summary[f"{v}_acc"] for v in names if f"{v}_acc" in summary}
    accs |= {v: a["acc"] for v, a in (summary.get("views") or {}).items()
             if isinstance(a, dict) and "acc" in a}  # a benchmark's summary
    figures = "".join(f"<tr><th>{v}</th><td>{a:.3f}</td></tr>" for v, a in accs.items())
    if "gap" in summary:
        figures += f"<tr><th>gap (teacher - plain)</th><td>{summary['gap']:+.3f}</td></tr>"
    cats = sorted({str(it.get("category") or "all") for it in items.values()})
    title = title or (f"mlx-opd eval: {summary.get('title') or ''} "
                      f"{Path(str(summary.get('model', ''))).name}"
                      + (" + adapter" if summary.get("adapter") else "")
                      + f" on {Path(str(summary.get('data', ''))).name}, n={summary['n']}")
    parts = [_head(title), f"<table class=s>{figures}</table>"]
    if chart is not None and Path(chart).exists():
        parts.append(f'<p><img src="{png_uri(chart)}" style="max-width:420px"></p>')
    parts += [_filters(names, cats), "<div class=grid>"]
    parts += [card(it, views, images=(images or {}).get(i)) for i, it in items.items()]
    parts.append("</div>")
    Path(path).write_text("".join(parts), encoding="utf-8")
    return Path(path)


def changes(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict[str, list]]:
    """view -> {"fixed": ids wrong before and right after, "broken": the reverse}, over
    the items and views both evals have."""
    out: dict[str, dict[str, list]] = {}
    for i, a in after.items():
        b = before.get(i)
        if b is None:
            continue
        for v, ans in a["views"].items():
            if v not in b["views"]:
                continue
            was, now = b["views"][v]["correct"], ans["correct"]
            if was != now:
                out.setdefault(v, {"fixed": [], "broken": []})["fixed" if now else "broken"].append(i)
    return out


def changes_page(before_rows: list[dict], after_rows: list[dict], cmp_rows: list[dict],
                 path: Path, views, title: str) -> Path:
    """CMP.html of `eval --compare`: the differences per category with their 95%
    intervals, then per view the items fixed and broken (cards with both answers)."""
    before, after = items_of(before_rows), items_of(after_rows)
    table = "".join(
        f"<tr><th>{html.escape(str(r['category']))}</th><th>{html.escape(r['view'])}</th>"
        f"<td>{r['acc_before']:.3f}</td><td>{r['acc_after']:.3f}</td><td>{r['diff']:+.3f}</td>"
        f"<td>[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]</td></tr>" for r in cmp_rows)
    parts = [_head(title), "<table class=s><tr><th>category</th><th>view</th><th>before</th>"
             "<th>after</th><th>difference</th><th>95% CI</th></tr>" + table + "</table>"]
    for view, groups in changes(before, after).items():
        for kind in ("fixed", "broken"):
            ids = groups[kind]
            parts.append(f"<h2 id={kind}-{html.escape(view)}>{html.escape(view)}: {len(ids)} "
                         f"{kind} ({'wrong before, right after' if kind == 'fixed' else 'right before, wrong after'})</h2>"
                         f"<div class='grid {kind}' data-view={html.escape(view)}>")
            for i in ids:
                was = before[i]["views"][view]
                extra = (f"<div class=raw>before: {html.escape(str(was['parsed'] or '?'))} "
                         f"({html.escape(str(was['answer']).strip()[:60])})</div>")
                parts.append(card(after[i], views, extra))
            parts.append("</div>")
    Path(path).write_text("".join(parts), encoding="utf-8")
    return Path(path)


def validation_chart(history: list[dict], best: int | None, path: Path) -> Path:
    """Each view's validation accuracy by step, the best step marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlx_opd.evaluation.evaluate import VIEW_COLOURS

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for v, colour in VIEW_COLOURS.items():
        pts = [(h["step"], h[f"val/{v}_acc"]) for h in history if f"val/{v}_acc" in h]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, color=colour, label=v)
    if best is not None:
        ax.axvline(best, color="#2a2", ls="--", label=f"best step {best}")
    ax.set_xlabel("step")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_page(run_dir: Path) -> Path:
    """RUN_DIR/report.html: the training curves, each view's validation curve with the best
    step marked, and the validation items whose answer changed between the first and the
    best evaluation, as cards."""
    import tempfile

    from mlx_opd.method.validation import ROWS_DIR
    from mlx_opd.run.config import load_train_config
    from mlx_opd.run.plot import plot_run

    run_dir = Path(run_dir)
    plots = plot_run(run_dir)
    guards = json.loads((run_dir / "validation.json").read_text()) \
        if (run_dir / "validation.json").exists() else {}
    history, best = guards.get("history", []), (guards.get("best") or {}).get("step")
    views = load_train_config(str(run_dir / "config.yaml")).views
    parts = [_head(f"mlx-opd run {run_dir.name}"), "<h2>training</h2>"]
    parts += [f'<img src="{png_uri(p)}" style="max-width:640px">' for p in plots[:1]]
    if not history:
        parts.append("<p>This run did not validate (validation.path or validation.fraction "
                     "turns it on): no validation curve or items.</p>")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            chart = validation_chart(history, best, Path(tmp) / "val.png")
            parts += ["<h2>validation</h2>", f'<img src="{png_uri(chart)}">']
        first = history[0]["step"]
        step = best if best is not None else history[-1]["step"]
        rows = {s: _jsonl(run_dir / ROWS_DIR / f"step_{s:06d}.jsonl") for s in (first, step)}
        if rows[first] and rows[step]:
            before, after = items_of(rows[first]), items_of(rows[step])
            for view, groups in changes(before, after).items():
                for kind in ("fixed", "broken"):
                    parts.append(f"<h2 id={kind}-{html.escape(view)}>{html.escape(view)}: "
                                 f"{len(groups[kind])} {kind} between step {first} and step "
                                 f"{step}</h2><div class='grid {kind}' data-view="
                                 f"{html.escape(view)}>")
                    parts += [card(after[i], views) for i in groups[kind]]
                    parts.append("</div>")
        else:
            parts.append("<p>No per-item answers were kept for these evaluations (a run "
                         "from before they were recorded).</p>")
    from mlx_opd.run.files import keep_edited

    path = run_dir / "report.html"
    from mlx_opd.run.run_dir import seal_run

    keep_edited(run_dir, ["report.html"])  # a page edited since is kept, renamed
    path.write_text("".join(parts), encoding="utf-8")
    seal_run(run_dir)  # the run's own names only (run_dir.RUN_FILES)
    return path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] \
        if path.exists() else []


def read_rows(path: Path) -> list[dict]:
    """An eval's rows (OUT.jsonl beside OUT.json); empty when it has none."""
    return _jsonl(Path(path).with_suffix(".jsonl"))
