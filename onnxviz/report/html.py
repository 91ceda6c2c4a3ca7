"""The report as one self-contained HTML page: inline CSS, images as data URIs, no scripts.

A Content-Security-Policy in the page itself forbids scripts and every network request, so
the page behaves the same offline, in a mail attachment, or on a laptop without a connection.
Plain string templates; every text from the model or the user goes through ``html.escape``.
"""
from __future__ import annotations

import logging
import math
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Optional

from .._version import __version__
from .pictures import Picture

log = logging.getLogger("onnxviz")

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def e(value) -> str:
    return escape(str(value), quote=True)


def img(p: Picture, cls: str = "") -> str:
    classes = " ".join(c for c in (cls, "px" if p.pixelated else "") if c)
    return (f'<img src="{p.data_uri()}" width="{p.width}" height="{p.height}" alt="{e(p.alt)}"'
            + (f' class="{classes}"' if classes else "") + ">")


def figure(p: Picture, cls: str = "") -> str:
    caption = f"<figcaption>{e(p.caption)}</figcaption>" if p.caption else ""
    return f'<figure class="{cls}">{img(p)}{caption}</figure>' if cls else f"<figure>{img(p)}{caption}</figure>"


def notice(kind: str, text: str, title: str = "") -> str:
    head = f"<strong>{e(title)}</strong> " if title else ""
    return f'<div class="notice {kind}">{head}{e(text)}</div>'


def human(n) -> str:
    if n is None:
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


def dims(shape) -> str:
    if shape is None:
        return "?"
    return "×".join("?" if d is None else str(d) for d in shape)


# ---------------------------------------------------------------------------- sections


def model_html(card) -> str:
    info = card.info
    spec = info["input_spec"]
    opset = str(info["opset"])
    if info["opset_converted"] != info["opset"]:
        opset += f" (converted to {info['opset_converted']} for the gradient graphs)"
    rows = [
        ("File", f"<code>{e(card.name)}</code> <span class=muted>{e(info['file'])}</span>"),
        ("Size", f"{e(human(info['bytes']))}B ({info['bytes']:,} bytes)"),
        ("SHA-256", f'<code class="hash">{e(card.sha256)}</code>'),
        ("Producer", e(info["producer"] or "not recorded") + f" <span class=muted>· IR version {info['ir_version']}</span>"),
        ("Opset", e(opset)),
    ]
    for io in info["inputs"]:
        rows.append(("Input", f"<code>{e(io['name'])}</code> {e(io['dtype'])}[{e(', '.join(map(str, io['shape'])))}]"
                              f" <span class=muted>· read as {e(spec['layout'])}, {spec['channels']} channel(s), "
                              f"{e(_size(spec))}</span>"))
    for io in info["outputs"]:
        rows.append(("Output", f"<code>{e(io['name'])}</code> {e(io['dtype'])}[{e(', '.join(map(str, io['shape'])))}]"))
    rows.append(("Preprocessing", "<br>".join(f"<span class=muted>{e(k)}:</span> {e(v)}" for k, v in card.preprocessing)))
    t = info["totals"]
    if t["macs_unknown"]:
        macs = (f"at least {e(human(t['macs']))} MACs per image <span class=muted>({t['macs_unknown']} layers' "
                "sizes depend on the input size)</span>")
    else:
        macs = f"{e(human(t['macs']))} MACs per image"
    rows.append(("Size of the network", f"{e(human(t['params']))} parameters, {macs}"))
    rows.append(("Runtime", e(card.runtime)))
    rows.append(("Environment", e(card.environment)))
    rows.append(("Images", e(", ".join(card.images) or "none")))
    if card.unreadable:
        rows.append(("Left out", "<br>".join(f"<code>{e(n)}</code>: {e(r)}" for n, r in card.unreadable)))
    if info["notes"]:
        rows.append(("Loading notes", "<br>".join(e(n) for n in info["notes"])))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<dl class="facts">{dl}</dl>' + layer_table(info)


def _size(spec: dict) -> str:
    h, w = spec["height"], spec["width"]
    return f"{h}×{w}" if h and w else "any size" if not (h or w) else f"{h or 'any'}×{w or 'any'}"


def _rf(rf) -> str:
    if rf is None:
        return ""
    size = "×".join("all" if s == math.inf else f"{s:g}" for s in rf["size"])
    return f"{size} / {'×'.join(f'{j:g}' for j in rf['jump'])}"


def layer_table(info: dict) -> str:
    layers = info["layers"]
    body = "".join(
        f"<tr{' class=cand' if r['gradcam'] else ''}><td><code>{e(r['name'])}</code>{' ★' if r['gradcam'] else ''}</td>"
        f"<td>{e(r['op'])}</td><td class=num>{e(dims(r['shape']))}</td><td class=num>{e(human(r['params']) if r['params'] else '')}</td>"
        f"<td class=num>{e(human(r['macs']) if r['macs'] else '')}</td><td class=num>{e(_rf(r['rf']))}</td></tr>"
        for r in layers)
    candidates = ", ".join(info["gradcam_candidates"][:5]) or "none found"
    return (f"<details><summary>Layer table: {len(layers)} tensors "
            f"<span class=muted>(★ Grad-CAM candidates, best first: {e(candidates)})</span></summary>"
            "<div class=scroll><table class=layers><thead><tr><th>tensor</th><th>op</th><th class=num>shape</th>"
            "<th class=num>params</th><th class=num>MACs</th><th class=num>receptive field / stride</th></tr></thead>"
            f"<tbody>{body}</tbody></table></div></details>")


def gradcheck_html(check) -> str:
    tensors = ", ".join(dict.fromkeys(r.tensor for r in check.rows))
    kinks = ""
    if check.kinks:
        kinks = (f" {len(check.kinks)} direction(s) could not be judged (a kink of the model in every try, "
                 "or a score too large for float64 differences); they are marked and not counted.")
    word, why = check.verdict
    if word == "exact":
        verdict = notice("good", f"The gradient graph agrees with float64 central finite differences to within "
                                 f"{check.tolerance:g} (worst relative error {check.worst:.1e}) on {tensors}, "
                                 f"at {check.image}.{kinks} The gradient methods below are exact.",
                         "Gradients are exact.")
    elif word == "inconclusive":
        verdict = notice("warn", f"Finite differences could not judge the gradient graph here: {why}, at "
                                 f"{check.image}. This is not a failure: the model's scores are beyond what "
                                 "float64 differences resolve (e.g. constant or untrained weights).",
                         "Gradient check inconclusive.")
    else:
        verdict = notice("warn", f"The analytic gradient differs from float64 finite differences by more than "
                                 f"{check.tolerance:g} at {', '.join(check.failing)} (worst relative error "
                                 f"{check.worst:.1e}), at {check.image}.{kinks} Treat the gradient maps below with "
                                 "care; `onnxviz check-grad` gives the details.",
                         "Gradients are not exact.")
    return (verdict + "<table class=compact><thead><tr><th>gradient with respect to</th><th class=num>direction</th>"
            "<th class=num>analytic</th><th class=num>finite difference</th><th class=num>relative error</th>"
            f"<th>within tolerance</th></tr></thead><tbody>{_check_rows(check.rows)}</tbody></table>"
            "<p class=note>Directional derivatives ⟨∂score/∂t, v⟩ along random directions v, at a point next to "
            "the image (faint noise added, off ties), against central differences of the model evaluated in "
            "float64 by onnx's reference evaluator.</p>")


def _check_rows(rows) -> str:
    return "".join(
        f"<tr><td><code>{e(r.tensor)}</code></td><td class=num>{r.direction}</td><td class=num>{r.analytic:.6g}</td>"
        f"<td class=num>{r.numeric:.6g}</td><td class=num>{r.error:.1e}</td>"
        f"<td class='{'ok' if r.ok else 'bad'}'>{_verdict(r)}</td></tr>" for r in rows)


def _verdict(row) -> str:
    """yes / NO, or the check's own word where it has one (e.g. "kink": no direction avoided one)."""
    status = getattr(row, "status", None)
    if isinstance(status, str) and status.lower() not in ("ok", "fail"):
        return e(status)
    return "yes" if row.ok else "NO"


def filters_html(view) -> str:
    node = f" (node <code>{e(view.node)}</code>)" if view.node else ""
    return (f"<p>Convolution <code>{e(view.layer)}</code>{node}, weights {e(dims(view.shape))} "
            "(out × in × height × width).</p>" + figure(view.picture, "filters"))


_JET = "linear-gradient(90deg,#00007f,#0000ff,#007fff,#00ffff,#7fff7f,#ffff00,#ff7f00,#ff0000,#7f0000)"


def explanations_html(ex) -> str:
    out = [f"<p>Grad-CAM layer: <code>{e(ex.layer or 'none')}</code> <span class=muted>({e(ex.layer_source)})</span>. "
           f"Each map explains the {e(ex.explained)} of {e(ex.target)}"
           + (f" (output <code>{e(ex.output)}</code>)" if ex.output else "")
           + f"; probabilities are {e(ex.probabilities)}.</p>",
           f'<p class="legend"><span>map value: low</span><span class="bar" style="background:{_JET}"></span>'
           "<span>high</span><span class=muted>· heatmaps are scaled per image; gradient images show "
           "±5 standard deviations around grey; each activation tile spans its own range</span></p>"]
    missing = ex.unavailable
    if missing:
        items = "".join(f"<li><strong>{e(p.name)}</strong>: {e(p.message)}</li>" for p in missing)
        out.append(f'<div class="notice skipped"><strong>Not shown for this model:</strong><ul>{items}</ul></div>')
    for i, view in enumerate(ex.images):
        out.append(image_html(view, i))
    return "".join(out)


def predictions_table(preds) -> str:
    logits = any(p.logit is not None for p in preds)
    rows = "".join(
        f"<tr{' class=top1' if p.rank == 1 else ''}><td class=num>{p.rank}</td>"
        f"<td class=cls title=\"class index {p.index}\">{e(p.label)}</td>"
        f'<td class="prob"><span class="track"><span class="fill" style="width:{max(0.0, min(1.0, p.prob)) * 100:.1f}%">'
        f"</span></span><span class=pval>{p.prob:.3f}</span></td>"
        + (f"<td class=num>{'' if p.logit is None else f'{p.logit:.3g}'}</td>" if logits else "") + "</tr>"
        for p in preds)
    head = "<th class=num>#</th><th>class</th><th>probability</th>" + ("<th class=num>logit</th>" if logits else "")
    return f"<table class=preds><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def image_html(view, i: int) -> str:
    best = view.predictions[0]
    panels = "".join(figure(p) for p in view.panels)
    if view.activations is not None:
        panels += figure(view.activations, "acts")
    return (f'<article class="image" id="image-{i + 1}"><h3>{e(view.name)} '
            f'<span class="pred">→ {e(best.label)} <span class=muted>{best.prob:.1%}</span></span></h3>'
            f'<div class="image-grid"><div class="side">{figure(view.input)}{predictions_table(view.predictions)}</div>'
            f'<div><p class="caption">{e(view.caption)}</p><div class="panels">{panels}</div></div></div>'
            "</article>")


def dataset_html(view) -> str:
    out = [f"<p>{view.images} images under <code>{e(view.folder)}</code>"
           + (f", {len(view.classes)} classes ({e(', '.join(view.classes))})" if view.classes else "")
           + (f"; features at <code>{e(view.embedding_layer)}</code>, averaged over positions" if view.embedding_layer else "")
           + ".</p>"]
    if view.left_out:
        shown = "; ".join(f"{p}: {r}" for p, r in view.left_out[:5])
        more = f" … and {len(view.left_out) - 5} more" if len(view.left_out) > 5 else ""
        out.append(notice("skipped", shown + more, f"{len(view.left_out)} file(s) could not be used:"))
    problems = [p for p in view.parts if p.status != "ok"]
    if problems:
        items = "".join(f"<li><strong>{e(p.name)}</strong>: {e(p.message)}</li>" for p in problems)
        out.append(f'<div class="notice skipped"><strong>Not shown:</strong><ul>{items}</ul></div>')
    if view.tsne is not None:
        chips = "".join(f'<span class="chip"><span class="dot" style="background:{e(c)}"></span>{e(n)}</span>'
                        for n, c in view.legend)
        out.append(f"<h3>t-SNE map</h3>{figure(view.tsne, 'map')}<p class=chips>{chips}</p>")
    if view.neighbors:
        out.append(f"<h3>Nearest neighbours</h3><p class=note>The images of the folder closest to each image in the "
                   f"feature space of <code>{e(view.embedding_layer)}</code> (cosine distance).</p>")
        for strip in view.neighbors:
            tiles = "".join(figure(p, "thumb" + (" query" if k == 0 else "")) for k, p in enumerate(strip.pictures))
            out.append(f'<div class="strip"><div class="strip-name">{e(strip.query)}</div><div class="thumbs">{tiles}</div></div>')
    if view.channels:
        out.append(f"<h3>Top patches</h3><p class=note>The crops of the folder that excite the most selective "
                   f"channels of <code>{e(view.patches_layer)}</code> most ({e(view.receptive_field)}); the number "
                   "under each crop is the activation. Selectivity: how many standard deviations a channel's best "
                   "images stand above a typical one.</p>")
        for row in view.channels:
            out.append(f'<div class="strip"><div class="strip-name">channel {row.channel}<br>'
                       f'<span class=muted>selectivity {row.selectivity:.2f}</span></div>{img(row.picture)}</div>')
    return "".join(out)


def classvis_html(view) -> str:
    more = f" The first {len(view.pictures)} are shown; {view.left_out} more were predicted." if view.left_out else ""
    return (f"<p>For each predicted class, the input the model scores highest: gradient ascent on the class's "
            f"pre-softmax logit, with L2 and total-variation penalties, {view.steps} steps from low-contrast noise. "
            f"p is the probability the model gives the result.{e(more)}</p>"
            f'<div class="panels">{"".join(figure(p) for p in view.pictures)}</div>')


def trust_html(view) -> str:
    rows = "".join(
        f"<tr><td>{e(r.title)}</td><td class=num>{r.deletion:.3f}</td><td class=num>{r.insertion:.3f}</td>"
        f"<td class=num>{r.randomized:.2f}</td><td class=num>{r.random_class:.2f}</td>"
        f"<td class='{'ok' if r.passes else 'bad'}'>{e(r.verdict)}</td></tr>" for r in view.rows)
    out = [f"<p>Each map is scored on the first {view.images} image{'s' if view.images != 1 else ''} "
           f"for the predicted class. <strong>Deletion</strong>: how fast the class's probability falls as "
           f"the pixels the map ranks highest are removed ({view.steps} steps; lower area is better). "
           "<strong>Insertion</strong>: how fast it rises as they are restored into a blurred copy (higher is "
           "better). <strong>Randomization test</strong> (Adebayo et al., 2018): the weights of the model's "
           "layers are replaced by noise, from the output back; a map that stays similar to the original "
           "(rank correlation above 0.5 with every layer randomized) shows the image, not the model. "
           "<strong>Random class</strong>: the similarity of the map for a random other class.</p>",
           "<table class=compact><thead><tr><th>method</th><th class=num>deletion AUC ↓</th>"
           "<th class=num>insertion AUC ↑</th><th class=num>similarity, all layers randomized ↓</th>"
           f"<th class=num>similarity, random class ↓</th><th>verdict</th></tr></thead><tbody>{rows}</tbody></table>"]
    missing = view.unavailable
    if missing:
        items = "".join(f"<li><strong>{e(p.name)}</strong>: {e(p.message)}</li>" for p in missing)
        out.append(f'<div class="notice skipped"><strong>Not scored for this model:</strong><ul>{items}</ul></div>')
    for pic in (view.curves, view.sanity):
        if pic is not None:
            out.append(figure(pic))
    return "".join(out)


RENDERERS = {
    "model": model_html,
    "gradcheck": gradcheck_html,
    "filters": filters_html,
    "images": explanations_html,
    "trust": trust_html,
    "dataset": dataset_html,
    "classvis": classvis_html,
}


def section_html(s) -> str:
    if s.status == "ok":
        try:
            body = RENDERERS[s.key](s.result)
        except Exception as exc:  # a rendering bug shows in its section, like a computing one
            log.error("report: rendering %s failed", s.title, exc_info=True)
            body = notice("error", f"internal error, please report it: {type(exc).__name__}: {exc}",
                          "This section could not be drawn.")
    elif s.status == "skipped":
        body = notice("skipped", s.message, "Not included:")
    else:
        body = notice("error", s.message, "This section failed:")
    return (f'<section id="{e(s.key)}" class="card {e(s.status)}"><h2>{e(s.title)}'
            f'<span class="time">{e(seconds(s.seconds))}</span></h2>{body}</section>')


def timings_html(sections, total: float) -> str:
    rows = []
    for s in sections:
        rows.append(f"<tr><td><a href='#{e(s.key)}'>{e(s.title)}</a></td><td class='st {e(s.status)}'>{e(s.status)}</td>"
                    f"<td class=num>{e(seconds(s.seconds))}</td></tr>")
        for p in getattr(s.result, "parts", []) or []:
            rows.append(f"<tr class=sub><td>{e(p.name)}</td><td class='st {e(p.status)}'>{e(p.status)}</td>"
                        f"<td class=num>{e(seconds(p.seconds))}</td></tr>")
    rows.append(f"<tr class=total><td>Total, with loading and rendering</td><td></td><td class=num>{e(seconds(total))}</td></tr>")
    return (f'<section id="timings" class="card"><h2>Timings</h2><table class="compact timings"><thead><tr>'
            f"<th>section</th><th>status</th><th class=num>time</th></tr></thead><tbody>{''.join(rows)}</tbody>"
            "</table></section>")


def render(sections, inputs, generated: Optional[datetime] = None, seconds: float = 0.0) -> str:
    """The whole page for the computed sections."""

    name = Path(inputs.model.path).name
    when = (generated or datetime.now().astimezone()).strftime("%Y-%m-%d %H:%M %Z").strip()
    nav = "".join(f'<a href="#{e(s.key)}" class="{e(s.status)}">{e(s.title)}</a>' for s in sections)
    nav += '<a href="#timings">Timings</a>'
    meta = [f"{len(inputs.paths)} image{'s' if len(inputs.paths) != 1 else ''}", f"generated {when}",
            f"onnxviz {__version__}", inputs.model.runtime.describe()]
    failed = [s.title for s in sections if s.status == "error"]
    alert = notice("error", ", ".join(failed), "Sections that failed:") if failed else ""
    body = "".join(section_html(s) for s in sections)
    return PAGE.format(
        title=e(f"onnxviz report — {name}"), css=CSS, csp=escape(CSP, quote=False), name=e(name),
        meta=" · ".join(e(m) for m in meta), nav=nav, alert=alert, body=body,
        timings=timings_html(sections, seconds))


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="onnxviz">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<header class="top"><div class="wrap">
<p class="kicker">onnxviz · model audit report</p>
<h1>{name}</h1>
<p class="meta">{meta}</p>
<nav class="toc">{nav}</nav>
</div></header>
<main class="wrap">
{alert}
{body}
{timings}
</main>
<footer class="wrap">Self-contained page made by onnxviz: every image is inlined; it loads nothing from the network.</footer>
</body>
</html>
"""

CSS = """
:root{--ink:#1b2230;--muted:#5d6678;--line:#e2e5eb;--bg:#f4f5f8;--card:#fff;--accent:#2f5bd3;
--good:#1d7a46;--good-bg:#e8f6ee;--warn:#8a5a00;--warn-bg:#fff5df;--bad:#b3261e;--bad-bg:#fdecea;--skip-bg:#f1f2f5}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--ink);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans","DejaVu Sans",sans-serif}
code,.hash{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:.88em}
.hash{word-break:break-all}
.wrap{max-width:1180px;margin:0 auto;padding:0 24px}
.top{background:#1b2230;color:#fff;padding:22px 0 14px;margin-bottom:22px}
.top h1{margin:2px 0 4px;font-size:28px;font-weight:650;letter-spacing:-.01em}
.kicker{margin:0;font-size:12px;letter-spacing:.08em;text-transform:uppercase;color:#aab3c5}
.meta{margin:0 0 12px;color:#c9d0dd;font-size:13px}
.toc{display:flex;flex-wrap:wrap;gap:6px}
.toc a{color:#fff;text-decoration:none;font-size:13px;padding:3px 10px;border-radius:999px;background:rgba(255,255,255,.1)}
.toc a:hover{background:rgba(255,255,255,.22)}
.toc a.skipped{color:#aab3c5}.toc a.error{background:#b3261e}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 22px;margin:0 0 20px;
box-shadow:0 1px 2px rgba(20,30,50,.04)}
h2{font-size:20px;margin:0 0 12px;display:flex;align-items:baseline;gap:10px;font-weight:650}
h2 .time{margin-left:auto;font-size:12px;font-weight:400;color:var(--muted)}
h3{font-size:16px;margin:18px 0 8px;font-weight:650}
p{margin:6px 0 10px}
.muted{color:var(--muted)}
.note{color:var(--muted);font-size:13px}
dl.facts{display:grid;grid-template-columns:170px 1fr;gap:6px 16px;margin:0 0 12px}
dl.facts dt{color:var(--muted);font-size:13px;padding-top:1px}
dl.facts dd{margin:0;min-width:0;overflow-wrap:anywhere}
details{border:1px solid var(--line);border-radius:8px;padding:8px 12px;margin-top:8px}
summary{cursor:pointer;font-weight:600}
.scroll{overflow-x:auto;max-height:560px;overflow-y:auto;margin-top:8px}
table{border-collapse:collapse;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{font-weight:600;color:var(--muted);background:#fafbfc;position:sticky;top:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.layers tr.cand td{background:#f3f6ff}
table.compact{margin:8px 0}
td.ok{color:var(--good);font-weight:600}td.bad{color:var(--bad);font-weight:600}
.notice{border-radius:8px;padding:10px 14px;margin:8px 0 12px;font-size:14px;background:var(--skip-bg);
border-left:4px solid #9aa3b3}
.notice ul{margin:6px 0 0;padding-left:20px}
.notice.good{background:var(--good-bg);border-color:var(--good)}
.notice.warn{background:var(--warn-bg);border-color:#d99a00}
.notice.error{background:var(--bad-bg);border-color:var(--bad)}
section.skipped h2{color:var(--muted)}
figure{margin:0}
figure img{display:block;max-width:100%;height:auto;border-radius:4px;background:#fafafa}
figcaption{font-size:12px;color:var(--muted);margin-top:4px;line-height:1.35}
img.px{image-rendering:pixelated}
figure.filters img,figure.map img{border:1px solid var(--line)}
.legend{display:flex;align-items:center;gap:8px;font-size:12px;color:var(--muted)}
.legend>span:not(.muted){white-space:nowrap;flex:none}
.legend .bar{display:inline-block;width:160px;height:10px;border-radius:3px}
article.image{border-top:1px solid var(--line);padding-top:6px;margin-top:14px}
article.image h3 .pred{font-weight:500;color:var(--accent);margin-left:6px}
.image-grid{display:grid;grid-template-columns:300px 1fr;gap:20px;align-items:start}
.side figure img{width:224px}
.caption{font-size:13px;margin:0 0 10px}
.panels{display:grid;grid-template-columns:repeat(3,minmax(0,224px));gap:14px 16px}
.panels figure img{width:100%}
table.preds{width:100%;margin-top:10px}
table.preds td{vertical-align:middle}
table.preds tr.top1 td{font-weight:600}
td.cls{white-space:nowrap;max-width:130px;overflow:hidden;text-overflow:ellipsis}
td.prob{white-space:nowrap;width:110px}
.track{display:inline-block;vertical-align:middle;width:52px;height:8px;background:#eceff4;border-radius:4px;overflow:hidden;margin-right:6px}
.fill{display:block;height:100%;background:var(--accent)}
.pval{font-variant-numeric:tabular-nums}
.chips{display:flex;flex-wrap:wrap;gap:10px;font-size:13px}
.chip{display:inline-flex;align-items:center;gap:5px}
.dot{width:11px;height:11px;border-radius:2px;display:inline-block}
figure.map{max-width:760px}
.strip{display:flex;gap:14px;align-items:flex-start;margin:8px 0;padding:8px 0;border-bottom:1px solid var(--line)}
.strip-name{width:120px;flex:none;font-size:13px;font-weight:600;overflow-wrap:anywhere}
.thumbs{display:flex;flex-wrap:wrap;gap:8px}
figure.thumb{width:96px}
figure.thumb img{width:96px}
figure.query img{outline:3px solid var(--accent);outline-offset:-3px}
.strip > img{max-width:calc(100% - 134px);height:auto}
table.timings td.st.ok{color:var(--good)}table.timings td.st.error{color:var(--bad)}
table.timings td.st.skipped{color:var(--muted)}
table.timings tr.sub td:first-child{padding-left:28px;color:var(--muted)}
table.timings tr.total td{font-weight:600;border-bottom:none}
footer{color:var(--muted);font-size:12px;padding-bottom:30px}
@media (max-width:760px){.image-grid{grid-template-columns:1fr}dl.facts{grid-template-columns:1fr}
.panels{grid-template-columns:repeat(2,minmax(0,1fr))}}
@page{margin:14mm}
@media print{
body{background:#fff;font-size:11pt}
.top{background:none;color:var(--ink);padding:0 0 8px;border-bottom:2px solid var(--ink)}
.kicker,.meta{color:var(--muted)}
.toc{display:none}
.card{border:none;box-shadow:none;padding:8px 0;border-radius:0}
.scroll{max-height:none;overflow:visible}
details>*{display:block}
details::details-content{content-visibility:visible;display:block}
article.image,figure,tr,.strip,.notice{break-inside:avoid}
h2,h3{break-after:avoid}
a{color:inherit;text-decoration:none}
th{position:static}
.bar,.fill,.dot,.notice,.toc a,tr.cand td{-webkit-print-color-adjust:exact;print-color-adjust:exact}
}
"""
