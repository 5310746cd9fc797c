"""``report.html`` of ``swin-maskrcnn analyze``: one self-contained page to look at.

The page holds the AP tables, the TIDE error counts and dAP as a bar chart, the confusion matrix,
the precision / recall / F-beta curves of every class against the score with the chosen threshold
marked (and the PR curves), and the worst images drawn with ground truth and detections coloured by
verdict: green true positive, red false positive labelled with its error type, orange missed ground
truth, white other ground truth. Plots are made with matplotlib (the ``[report]`` extra) and
embedded in the page as PNG data, so the file opens anywhere with no network access; the same PNGs
are also written beside it (``plots/``, ``worst/``).
"""
from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["write_report", "draw_verdicts"]

TP_COLOUR = (60, 180, 75)
FP_COLOUR = (230, 25, 75)
MISSED_COLOUR = (245, 130, 48)
GT_COLOUR = (255, 255, 255)
MAX_CURVE_CLASSES = 24


def _matplotlib():
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - the [report] extra is installed in the tested set
        raise ImportError("the report's plots need matplotlib: pip install 'swin-maskrcnn[report]' "
                          "(or pass --no-report)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _img_tag(data: bytes, alt: str, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'


def _error_chart(plt: Any, analysis: dict) -> bytes:
    from ..diagnostics.errors import ERROR_TYPES

    types = [t for t in ("bbox", "segm") if t in analysis]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    x = np.arange(len(ERROR_TYPES))
    w = 0.8 / max(1, len(types))
    for k, t in enumerate(types):
        axes[0].bar(x + k * w, [analysis[t]["errors"][e] for e in ERROR_TYPES], w, label=t)
        axes[1].bar(x + k * w, [analysis[t]["dAP"][e] for e in ERROR_TYPES], w, label=t)
    for ax, title in zip(axes, ("errors (count)", "dAP when fixed (TIDE oracle, AP50 scale 0-1)")):
        ax.set_xticks(x + w * (len(types) - 1) / 2, ERROR_TYPES)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    data = _png_bytes(fig)
    plt.close(fig)
    return data


def _confusion_chart(plt: Any, conf: dict) -> bytes:
    m = np.asarray(conf["matrix"])
    labels = conf["labels"]
    n = len(labels)
    size = min(14, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    shown = np.log1p(m)
    im = ax.imshow(shown, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=60, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted (background: missed ground truth)")
    ax.set_ylabel("ground truth (background: unmatched detections)")
    ax.set_title(f"confusion at IoU {conf['iou']:g}, score >= {conf['score_thr']:g}")
    if n <= 30:
        top = shown.max() if shown.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if top and shown[i, j] > 0.6 * top else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="log(1 + count)")
    fig.tight_layout()
    data = _png_bytes(fig)
    plt.close(fig)
    return data


def _curve_charts(plt: Any, curves: dict, chosen: dict, beta: float) -> tuple[bytes, bytes]:
    names = [n for n, c in curves.items() if len(c["score"])][:MAX_CURVE_CLASSES]
    cols = min(4, max(1, len(names)))
    rows = max(1, (len(names) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        c = curves[name]
        ax.plot(c["score"], c["precision"], label="precision", drawstyle="steps-post")
        ax.plot(c["score"], c["recall"], label="recall", drawstyle="steps-post")
        ax.plot(c["score"], c["f"], label=f"F{beta:g}", drawstyle="steps-post")
        if name in chosen:
            t = chosen[name]
            ax.axvline(t["score"], color="k", ls="--", lw=1)
            ax.set_title(f"{name}: t = {t['score']:.3f}, F {t['f']:.2f}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("score threshold", fontsize=8)
    if names:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    curves_png = _png_bytes(fig)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name in names:
        c = curves[name]
        (line,) = ax.plot(c["recall"], c["precision"], label=name)
        if name in chosen:
            ax.plot([chosen[name]["recall"]], [chosen[name]["precision"]], "o", color=line.get_color())
    ax.set_xlabel("recall (IoU 0.5)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall per class (dot: chosen threshold)")
    if names:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    pr_png = _png_bytes(fig)
    plt.close(fig)
    return curves_png, pr_png


def draw_verdicts(image: np.ndarray, coco: Any, image_id: int, results: Sequence[dict], tide: Any,
                  display_thr: float) -> tuple[Any, str]:
    """(picture, caption) of one image: ground truth and detections coloured by TIDE's verdict;
    detections below ``display_thr`` are not drawn (counted in the caption)."""
    from .visualize import add_title, draw_detections

    names = {c: str(coco.cats[c].get("name", c)) for c in coco.cats}
    boxes, texts, colours = [], [], []
    for a in coco.imgToAnns.get(image_id, []):
        if a.get("iscrowd", 0):
            continue
        x, y, w, h = a["bbox"]
        missed = tide.gt_kind.get(a["id"]) == "missed"
        boxes.append([x, y, x + w, y + h])
        texts.append(f"missed: {names[a['category_id']]}" if missed else "")
        colours.append(MISSED_COLOUR if missed else GT_COLOUR)
    dets = sorted((r for r in results if r["image_id"] == image_id and r["_index"] in tide.det_kind),
                  key=lambda r: r["score"])
    hidden = 0
    for r in dets:
        kind = tide.det_kind[r["_index"]]
        if r["score"] < display_thr:
            hidden += kind != "tp"
            continue
        x, y, w, h = r["bbox"]
        boxes.append([x, y, x + w, y + h])
        label = f"{names[r['category_id']]} {r['score']:.2f}"
        texts.append(label if kind == "tp" else f"{kind}: {label}")
        colours.append(TP_COLOUR if kind == "tp" else FP_COLOUR)
    n_err = tide.errors_per_image.get(image_id, 0)
    counts: dict[str, int] = {}
    for r in dets:
        k = tide.det_kind[r["_index"]]
        if k != "tp":
            counts[k] = counts.get(k, 0) + 1
    missed = sum(1 for a in coco.imgToAnns.get(image_id, []) if tide.gt_kind.get(a["id"]) == "missed")
    if missed:
        counts["missed"] = missed
    caption = f"{coco.imgs[image_id]['file_name']}: {n_err} errors " + (
        "(" + ", ".join(f"{v} {k}" for k, v in counts.items()) + ")" if counts else "")
    if hidden:
        caption += f"; {hidden} below {display_thr:g} not drawn"
    pic = draw_detections(image, np.asarray(boxes, np.float32).reshape(-1, 4), [0] * len(boxes), [""],
                          texts=texts, colours=colours)
    return add_title(pic, caption), caption


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if np.isfinite(v) else "-"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(out_dir: Path, analysis: dict, extras: dict, coco: Any, results: Sequence[dict],
                 image_dir: Optional[Path], worst: int = 8, display_thr: float = 0.3) -> Path:
    """Writes ``out_dir/report.html`` (plus ``plots/*.png`` and ``worst/*.png``); returns its path."""
    from ..data.images import load_rgb_image
    from ..diagnostics.errors import ERROR_TYPES

    plt = _matplotlib()
    out_dir = Path(out_dir)
    parts = ["<h1>swin-maskrcnn analyze</h1>",
             f"<p>{html.escape(str(analysis.get('inputs', {}).get('ann', '')))}: {len(coco.imgs)} images, "
             f"{len(results)} detections.</p>"]
    types = [t for t in ("bbox", "segm") if t in analysis]
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "tide_AP50")
    parts.append("<h2>COCO AP</h2>" + _table(["type", *keys], [[t, *(analysis[t].get(k, float("nan")) for k in keys)]
                                                                 for t in types]))
    classes = list(analysis[types[0]]["per_class_AP"]) if types else []
    if classes:
        parts.append("<h3>per class</h3>" + _table(
            ["class", *(f"{t} AP" for t in types)],
            [[c, *(float(analysis[t]["per_class_AP"].get(c, float("nan")) or float("nan")) for t in types)]
             for c in classes]))
    parts.append("<h2>Errors (TIDE)</h2>" + _table(
        ["type", *ERROR_TYPES], [[f"{t} count", *(analysis[t]["errors"][e] for e in ERROR_TYPES)] for t in types]
        + [[f"{t} dAP", *(analysis[t]["dAP"][e] for e in ERROR_TYPES)] for t in types]))
    parts.append(_img_tag(_error_chart(plt, analysis), "error breakdown", out_dir / "plots" / "errors.png"))
    parts.append("<h2>Confusion matrix</h2>" + _img_tag(_confusion_chart(plt, analysis["confusion"]),
                                                          "confusion matrix", out_dir / "plots" / "confusion.png"))
    thr = analysis["thresholds"]
    parts.append(f"<h2>Per-class thresholds (F{thr['beta']:g})</h2>" + _table(
        ["class", "score", "precision", "recall", "F"],
        [[n, v["score"], v["precision"], v["recall"], v["f"]] for n, v in thr["per_class"].items()]))
    curves_png, pr_png = _curve_charts(plt, extras["curves"], thr["per_class"], thr["beta"])
    parts.append(_img_tag(curves_png, "precision, recall and F against the score", out_dir / "plots" / "curves.png"))
    parts.append(_img_tag(pr_png, "precision-recall curves", out_dir / "plots" / "pr.png"))
    parts.append(f"<h2>Worst images (most errors; detections >= {display_thr:g} drawn)</h2>")
    if image_dir is None:
        parts.append("<p>No --images given: no drawings.</p>")
    else:
        from .visualize import save_png

        tide = extras["tide"]["bbox"]
        for image_id in extras["ranked"][:worst]:
            if tide.errors_per_image.get(image_id, 0) == 0:
                break
            path = image_dir / coco.imgs[image_id]["file_name"]
            pic, caption = draw_verdicts(load_rgb_image(path), coco, image_id, results, tide, display_thr)
            png = save_png(pic, out_dir / "worst" / f"{image_id:06d}.png")
            b64 = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{b64}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("<p>Green: true positive; red: false positive with its error type; orange: missed ground "
                     "truth; white: other ground truth.</p>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right} img{max-width:100%}"
             "figure{display:inline-block;margin:.5em;vertical-align:top} figcaption{font-size:90%}")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>swin-maskrcnn analyze</title>'
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    out = out_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    log.info("report written to %s", out)
    return out
