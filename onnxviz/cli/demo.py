"""demo: every visualization on the bundled sample model and images."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from ..checkgrad import check_gradients, format_rows
from ..graph.analysis import gradcam_candidates
from ..images import deprocess
from ..inspection import describe, format_table
from ..io import atomic_write, ensure_out_dir, safe_name, save_figure, save_json, save_npy, save_png
from ..methods.cam import grad_cam
from ..methods.features import activations, filters
from ..render import activations_figure, filters_figure, heatmap_figure
from ..render.tiles import rank_channels
from ..report import report
from ..runtime import DEVICES
from ..session import open_session
from ..targets import Target, class_scores, objective
from .common import handle_errors
from .options import out_option
from .report import echo_progress

SAMPLE = "shapes_cnn.onnx"
DENSE = "shapes_seg.onnx"  # the sample's features with its head applied per pixel (scripts/build_dense_model.py)


def bundled_models_dir() -> Path:
    """The sample model folder: the source checkout's models/, else the installed share/onnxviz/models."""
    for folder in (Path(__file__).resolve().parents[2] / "models", Path.cwd() / "models",
                   Path(sys.prefix) / "share" / "onnxviz" / "models"):
        if (folder / SAMPLE).is_file():
            return folder
    raise click.ClickException("the bundled sample model was not found; reinstall onnxviz or pass --model")


@click.command()
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Model to demo (default: the bundled shapes CNN).")
@out_option("demo", default="onnxviz-demo")  # the folder the README names
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@handle_errors
def demo(model_path, out, device):
    """Run every visualization on the bundled sample model and its images; write them to a folder,
    with the audit report (report.html) of the model on them.

    \b
    Example:
      onnxviz demo --out onnxviz-demo
    """
    bundled = model_path is None
    folder = bundled_models_dir() if bundled else Path(model_path).parent
    model_path = model_path or str(folder / SAMPLE)
    images = sorted(p for p in (folder / "images").glob("*.png")) if (folder / "images").is_dir() else []
    out = ensure_out_dir(out)
    session = open_session(model_path, device=device)
    model = session.model
    click.echo(f"model {model_path} on {model.runtime.describe()}")
    timings = {}

    start = time.perf_counter()
    info = describe(model, size=session.pre.size)  # as `onnxviz inspect` does: the sidecar's size
    with atomic_write(out / "inspect.txt", "w") as f:
        f.write(format_table(info) + "\n")
    save_json(info, out / "inspect.json")
    timings["inspect"] = time.perf_counter() - start

    start = time.perf_counter()
    f = filters(model)
    save_figure(filters_figure(f.weights, f"first convolution {f.layer}"), out / "filters.png")
    save_npy(f.weights, out / "filters.npy")
    timings["filters"] = time.perf_counter() - start

    layer = gradcam_candidates(model.proto, model.input.name, model.input.layout, shapes=model.shapes_at())[0]
    if images:
        start = time.perf_counter()
        x, originals, _ = session.batch([str(p) for p in images])
        shown = deprocess(x, model.input, session.pre)
        acts = activations(model, x, layer)
        probs = model.run(x)[model.outputs[0]]
        for i, path in enumerate(images):
            sub = ensure_out_dir(out / safe_name(path.stem, "image"))
            chosen = rank_channels(acts.values[i])[:16]
            label = session.label(int(probs[i].argmax()))
            fig = activations_figure(shown[i], acts.values[i], chosen, f"{layer} — predicted {label}")
            save_figure(fig, sub / "activations.png")
            save_npy(acts.values[i], sub / "activations.npy")
        timings["activations"] = time.perf_counter() - start

        for method, seconds in method_folders(model, x, images, shown, session, out).items():
            timings[method] = seconds

        start = time.perf_counter()
        rows = check_gradients(model, x[:1], layers=[layer])
        with atomic_write(out / "check-grad.txt", "w") as fh:
            fh.write(format_rows(rows) + "\n")
        timings["check-grad"] = time.perf_counter() - start

    if bundled and images and (folder / DENSE).is_file():
        start = time.perf_counter()
        dense_demo(str(folder / DENSE), images, out / "dense", device)
        timings["dense"] = time.perf_counter() - start

    dataset = sample_dataset(out / "dataset", model.input.size) if bundled else None
    if dataset is not None:
        timings.update(dataset_folders(model, session, dataset, images, layer, out))

    start = time.perf_counter()
    page = out / "report.html"
    report(model, [str(p) for p in images], page, dataset=dataset, labels=session.labels, pre=session.pre,
           progress=echo_progress)
    timings["report"] = time.perf_counter() - start

    save_json({"model": model_path, "images": [str(p) for p in images], "timings_s": timings},
              out / "demo.json")
    click.echo(f"wrote the demo to {out.resolve()}/ "
               f"(inspect.txt, filters.png, per-image activations, cam/, saliency/, occlusion/, classvis/, "
               f"tsne/, neighbors/, patches/, check-grad.txt, dense/, report.html)")
    click.echo(f"report: {page.resolve()} (open it in a browser)")


def dense_demo(model_path: str, images, out: Path, device: str = "auto") -> dict:
    """Grad-CAM on a dense (segmentation-style) model: each pixel's predicted class, and one class
    inside the pixels predicted as that class (a mask target, pytorch-grad-cam's
    SemanticSegmentationTarget). Writes <image>/gradcam_predicted.png and gradcam_mask.png, and
    results.json saying what each map explains."""
    session = open_session(model_path, device=device)
    model = session.model
    x, _, _ = session.batch([str(p) for p in images])
    shown = deprocess(x, model.input, session.pre)
    obj = objective(model)
    scores = model.activations(x, [obj.tensor])[obj.tensor]  # (N, classes, H, W) pre-softmax
    predicted = scores.argmax(axis=obj.class_axis)
    classes = class_scores(obj, scores).argmax(axis=1)  # the class with the largest summed score
    everywhere = grad_cam(model, x)  # dense outputs default to each pixel's predicted class
    click.echo(f"dense model {Path(model_path).name}: Grad-CAM at {everywhere.layer} "
               f"({everywhere.explains['target']})")
    entries = []
    for i, path in enumerate(images):
        sub = ensure_out_dir(out / Path(path).stem)
        k = int(classes[i])
        mask = predicted[i] == k
        inside = grad_cam(model, x[i:i + 1], target=Target(k, mask=mask))
        title = f"Grad-CAM @ {everywhere.layer}"
        save_figure(heatmap_figure(shown[i], everywhere.map[i], title, label="each pixel's predicted class"),
                    sub / "gradcam_predicted.png")
        save_figure(heatmap_figure(shown[i], inside.map[0], title,
                                   label=f"{session.label(k)} inside its {int(mask.sum())} predicted pixels"),
                    sub / "gradcam_mask.png")
        entries.append({"image": str(path), "class": k, "label": session.label(k), "pixels": int(mask.sum()),
                        "maps": {"gradcam_predicted.png": everywhere.explains, "gradcam_mask.png": inside.explains}})
    summary = {"model": model_path, "layer": everywhere.layer, "images": entries}
    save_json(summary, out / "results.json")
    return summary


def method_folders(model, x, images, shown, session, out: Path) -> dict:
    """A folder per method with one PNG per image (the map over the image as the model saw it):
    cam/<method>/, saliency/<method>/, occlusion/, and classvis/ (one PNG per predicted class).
    Returns seconds per method family."""
    from ..methods.cam import METHODS as CAMS
    from ..methods.occlusion import occlusion
    from ..methods.saliency import METHODS as SALIENCIES, saliency

    timings = {}

    def save_all(result, folder: Path):
        ensure_out_dir(folder)
        for i, path in enumerate(images):
            result.save(folder / f"{path.stem}.png", image=shown[i], index=i)

    start = time.perf_counter()
    for name, fn in CAMS.items():
        save_all(fn(model, x), out / "cam" / name)
    timings["cam"] = time.perf_counter() - start
    start = time.perf_counter()
    for name in SALIENCIES:
        save_all(saliency(model, x, method=name), out / "saliency" / name)
    timings["saliency"] = time.perf_counter() - start
    start = time.perf_counter()
    h, w = model.input.hw(x)
    save_all(occlusion(model, x, window=max(2, min(h, w) // 4), stride=max(1, min(h, w) // 8)), out / "occlusion")
    timings["occlusion"] = time.perf_counter() - start
    try:  # optional, as in the report
        from ..methods.classvis import class_visualization
    except ImportError:
        return timings
    start = time.perf_counter()
    classes = list(dict.fromkeys(int(k) for k in model.run(x)[model.outputs[0]].argmax(axis=1)))
    vis = class_visualization(model, target=classes, pre=session.pre, size=(h, w))
    folder = ensure_out_dir(out / "classvis")
    for k, image in zip(vis.target, vis.image):
        save_png(image, folder / f"{safe_name(session.label(int(k)), 'class')}.png")
    timings["classvis"] = time.perf_counter() - start
    return timings


def dataset_folders(model, session, dataset: Path, images, layer: str, out: Path) -> dict:
    """What `onnxviz tsne`, `neighbors` and `patches` write, on the sample dataset, each in its folder:
    tsne/ (the map coloured by class, its thumbnails, the CSV), neighbors/ (one strip per demo image)
    and patches/ (the overview and one grid per channel, at the Grad-CAM layer). Seconds per folder."""
    from ..datasets import scan_folder
    from ..methods.embed import embed, fixed_size
    from ..methods.neighbors import nearest_neighbors
    from ..methods.patches import top_patches
    from ..methods.projection import projection, save_csv
    from ..render.dataset import neighbors_figure, patches_grid, patches_overview, scatter_figure, thumbnail_map
    from .dataset import read_rgb

    timings = {}
    data = scan_folder(dataset)
    start = time.perf_counter()
    emb = embed(model, data, None, fixed_size(model.input, session.pre), batch_size=32, workers=2)
    proj = projection(emb, "tsne", seed=0)
    folder = ensure_out_dir(out / "tsne")
    save_figure(scatter_figure(proj), folder / "tsne.png")
    save_png(thumbnail_map(proj, seed=0)[0], folder / "tsne_thumbnails.png")
    save_csv(proj, folder / "tsne.csv")
    timings["tsne"] = time.perf_counter() - start

    start = time.perf_counter()
    folder = ensure_out_dir(out / "neighbors")
    for path in images:
        found = nearest_neighbors(model, emb, path, k=6)
        fig = neighbors_figure(found, [read_rgb(n.path) for n in found.neighbors], read_rgb(path))
        save_figure(fig, folder / f"{path.stem}.png")
    timings["neighbors"] = time.perf_counter() - start

    start = time.perf_counter()
    folder = ensure_out_dir(out / "patches")
    result = top_patches(model, data, layer, n_channels=6, top=8, pre=session.pre, batch_size=32, workers=2)
    save_png(patches_overview(result), folder / "patches.png")
    for cp in result.channels:
        save_png(patches_grid(cp), folder / f"channel_{cp.channel}.png")
    timings["patches"] = time.perf_counter() - start
    return timings


def sample_dataset(folder: Path, size, per_class: int = 10):
    """A small labelled folder of the shapes the sample model was trained on, for the report's dataset
    section; None when onnxviz.synthetic is not available."""
    try:
        from ..synthetic import CLASSES, make_shapes, save_folder
    except ImportError:
        return None
    save_folder(make_shapes(per_class * len(CLASSES), size=(size or (64, 64))[0], seed=4242), folder)
    return folder


COMMANDS = (demo,)
