"""Sanity checks for maps (Adebayo et al., 2018): does the map change when the model does?

* Model-parameter randomization (cascading): re-initialize the weighted layers one by one, from
  the output back, and compare each new map with the original. A map that stays similar with
  every layer randomized shows the image, not the model.
* Random logit: the map for a random other class against the map for the predicted one.

The randomized weights are fed to the graphs as inputs: onnxruntime lets a graph input override
an initializer of the same name, so every step runs in the SAME sessions as the first (no graph
is rebuilt, no session created per layer), and the model itself is never modified.

>>> s = onnxviz.sanity_check(model, x, method="gradcam")
>>> s.layers[0], s.spearman.shape        # the classifier first; (layers, images)
>>> s.verdict()
'passes the randomization test'
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import OnnxvizError
from ..targets import TargetLike, class_scores, objective
from .results import Attribution, Heatmap
from .perturb import image_rng

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ORDERS = ("top-down", "bottom-up")
PASS_BELOW = 0.5
TOP_FRACTION = 0.1

Method = Union[str, Callable]


@dataclass(frozen=True)
class WeightedLayer:
    """A node with constant weights: its name, op, and the initializers randomized with it."""

    name: str
    op_type: str
    weight: str
    bias: Optional[str] = None


@dataclass(frozen=True)
class Similarity:
    """Per-image similarity of maps to the original ones: rank correlation (signed and of |map|),
    SSIM of the [0, 1] maps, and the fraction of the original top pixels still on top."""

    spearman: np.ndarray
    spearman_abs: np.ndarray
    ssim: np.ndarray
    topk: np.ndarray


@dataclass(frozen=True)
class SanityResult:
    """The cascading randomization test for one method.

    ``layers`` (L,) in randomization order; ``spearman``, ``spearman_abs``, ``ssim``, ``topk``
    (L, N): similarity to the original map after randomizing ``layers[0..i]``; ``target`` the
    class explained per image (fixed across steps); ``maps`` (L, N, H, W) the randomized maps.
    """

    method: str
    layers: list
    spearman: np.ndarray
    spearman_abs: np.ndarray
    ssim: np.ndarray
    topk: np.ndarray
    target: np.ndarray
    original: np.ndarray
    maps: np.ndarray
    order: str = "top-down"

    @property
    def final(self) -> float:
        """Mean rank correlation of |map| with every layer randomized (the verdict's number)."""
        return float(np.mean(self.spearman_abs[-1])) if len(self.layers) else float("nan")

    def passes(self, threshold: float = PASS_BELOW) -> bool:
        return self.final < threshold

    def verdict(self, threshold: float = PASS_BELOW) -> str:
        if self.passes(threshold):
            return "passes the randomization test"
        return (f"does not depend on the model's weights (similarity stays above {threshold:g} "
                "with all layers randomized)")


# ---------------------------------------------------------------------------- layers and weights


def weighted_layers(proto: onnx.ModelProto) -> list:
    """Conv, ConvTranspose, Gemm and MatMul nodes with an initializer weight, in graph order.

    Each initializer belongs to its first user only (a shared weight is randomized once).
    """
    inits = {i.name for i in proto.graph.initializer}
    seen, out = set(), []
    for k, node in enumerate(proto.graph.node):
        if node.op_type not in WEIGHTED:
            continue
        ins = list(node.input)
        if node.op_type == "MatMul":
            weight = next((n for n in ins if n in inits), None)
            bias = None
        else:
            weight = ins[1] if len(ins) > 1 and ins[1] in inits else None
            bias = ins[2] if len(ins) > 2 and ins[2] in inits else None
        if weight is None or weight in seen:
            continue
        seen.add(weight)
        if bias in seen:
            bias = None
        if bias:
            seen.add(bias)
        out.append(WeightedLayer(node.name or node.output[0], node.op_type, weight, bias))
    return out


def randomized_weights(proto: onnx.ModelProto, layers: list, seed: int = 0) -> list:
    """For each layer in order, new values for its weight (and bias): normal, mean 0, the original's std."""
    values = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    rng = np.random.default_rng(seed)
    out = []
    for layer in layers:
        new = {}
        for name in (layer.weight, layer.bias):
            if name is None:
                continue
            w = values[name]
            new[name] = (rng.standard_normal(w.shape) * float(np.std(w, dtype=np.float64))).astype(w.dtype)
        out.append(new)
    return out


class WeightFeeds:
    """A stand-in for a Runtime: every graph it runs takes the initializers ``values`` names as inputs.

    Each graph is rewritten once per model (the initializers listed as graph inputs too) and gets
    one session, kept like the model's other sessions; ``values`` is fed with every run, so
    changing it re-weights the model without a new session.
    """

    def __init__(self, model, values: dict):
        self.runtime = model.runtime
        self.model = model
        self.values = dict(values)
        self.names = tuple(sorted(self.values))
        self.tag = hashlib.sha1("\x00".join(self.names).encode()).hexdigest()[:12]

    def __getattr__(self, name):
        return getattr(self.runtime, name)

    def rewritten(self, proto: onnx.ModelProto, key) -> tuple:
        """(graph with the weights as inputs, the names it takes), built once per graph and weight set."""
        return self.model.derived(("weights-as-inputs", self.tag, key if key is not None else id(proto)),
                                  lambda: _weights_as_inputs(proto, self.names))

    def run(self, model, feeds, outputs=None, batch_size=None, progress=False, key=None, desc="running",
            fixed_shapes=False):
        graph, names = self.rewritten(model, key)
        if key is not None:
            key = f"weights-as-inputs:{self.tag}:{key}"
        weights = {n: self.values[n] for n in names}
        n = _batch_len(feeds)
        # chunk here, not in Runtime.run: it would also slice a weight whose first dim equals the batch
        if not batch_size or n is None or n <= batch_size:
            return self.runtime.run(graph, {**feeds, **weights}, outputs, None, progress, key, desc, fixed_shapes)
        parts = [self.runtime.run(graph, {**{k: v[s:s + batch_size] if _batched(v, n) else v
                                              for k, v in feeds.items()}, **weights}, outputs, None, False, key, desc,
                                    fixed_shapes)
                 for s in range(0, n, batch_size)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _weights_as_inputs(proto: onnx.ModelProto, names) -> tuple:
    """A copy of ``proto`` whose initializers in ``names`` are also graph inputs (overridable)."""
    wanted = set(names)
    inputs = {i.name for i in proto.graph.input}
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    taken = []
    for init in out.graph.initializer:
        if init.name in wanted:
            taken.append(init.name)
            if init.name not in inputs:
                out.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return out, taken


def _batched(v, n: int) -> bool:
    return isinstance(v, np.ndarray) and v.ndim > 0 and v.shape[0] == n


def _batch_len(feeds) -> Optional[int]:
    lens = {v.shape[0] for v in feeds.values() if isinstance(v, np.ndarray) and v.ndim > 0}
    return max(lens) if lens else None


def reweighted(model, values: dict):
    """A view of ``model`` whose every run feeds ``values`` (initializer name -> array) as weights.

    The view shares the model's derived graphs; its sessions are keyed apart from the model's own.
    The names are fixed here; change the values with ``view.runtime.values.update(...)``.
    Methods that read weights from the graph (CAM) see the originals.
    """
    view = copy.copy(model)
    view.runtime = WeightFeeds(model, values)
    return view


# ---------------------------------------------------------------------------- methods and similarity


def method_function(method: Method) -> tuple[str, Callable]:
    """(name, fn(model, x, target) -> Heatmap | Attribution) for a method name or a callable."""
    if callable(method):
        return getattr(method, "__name__", "custom"), method
    from .cam import METHODS as CAM
    from .occlusion import occlusion
    from .saliency import METHODS as SALIENCY, saliency

    if method == "cam":
        # CAM reads its classifier weights from the graph, so weights fed at run time never reach it
        raise OnnxvizError("the randomization test cannot re-weight CAM (it reads the classifier's weights "
                           "from the graph); use gradcam, which equals CAM up to a constant on GAP+FC heads")
    if method in CAM:
        return method, lambda m, x, t: CAM[method](m, x, target=t)
    if method in SALIENCY:
        return method, lambda m, x, t: saliency(m, x, target=t, method=method)
    if method == "occlusion":
        return method, lambda m, x, t: occlusion(m, x, target=t)
    known = ", ".join([*CAM, *SALIENCY, "occlusion"])
    raise OnnxvizError(f"unknown method {method!r}: choose from {known}")


def map_views(result, spec) -> tuple[np.ndarray, np.ndarray]:
    """(signed, absolute) (N, H, W) maps of a result: input-space attributions are summed over
    channels for the signed view; CAM maps are non-negative, so both views are the map."""
    if isinstance(result, Attribution):
        return result.raw.astype(np.float64).sum(axis=spec.channel_axis), result.map.astype(np.float64)
    if isinstance(result, Heatmap):
        m = result.map.astype(np.float64)
        return m, m
    raise OnnxvizError(f"a method must return a Heatmap or an Attribution, not {type(result).__name__}")


@dataclass(frozen=True)
class Ranked:
    """(N, P) maps prepared once: ``ranks`` with ties averaged, ``top`` the mask of the top pixels."""

    ranks: np.ndarray
    top: np.ndarray


def ranked(maps: np.ndarray, fraction: float = TOP_FRACTION) -> Ranked:
    """Average ranks (the order inside a run of ties does not matter, so a plain sort does) and the top mask."""
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    n, p = flat.shape
    order = np.argsort(flat, axis=1)
    s = np.take_along_axis(flat, order, axis=1)
    idx = np.broadcast_to(np.arange(p), (n, p))
    first = np.ones((n, p), bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    last = np.ones((n, p), bool)
    last[:, :-1] = first[:, 1:]
    start = np.maximum.accumulate(np.where(first, idx, 0), axis=1)
    stop = np.minimum.accumulate(np.where(last, idx, p)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((n, p))
    np.put_along_axis(ranks, order, (start + stop) / 2, axis=1)
    return Ranked(ranks, top_mask(flat, fraction))


def top_mask(flat: np.ndarray, fraction: float) -> np.ndarray:
    """(N, P) the k = fraction·P largest values per row; ties at the cut go to the first in raster order."""
    n, p = flat.shape
    k = max(1, int(round(fraction * p)))
    cut = np.partition(flat, p - k, axis=1)[:, p - k, None]
    above = flat > cut
    at = flat == cut
    room = k - above.sum(axis=1, keepdims=True)
    return above | (at & (np.cumsum(at, axis=1) <= room))


def spearman(a, b) -> np.ndarray:
    """(N,) Spearman rank correlation of each pair of maps (average ranks on ties); 0 when either
    map is constant (a constant map carries no ranking to agree with). Maps or :class:`Ranked`."""
    ra = (a if isinstance(a, Ranked) else ranked(a)).ranks
    rb = (b if isinstance(b, Ranked) else ranked(b)).ranks
    ra = ra - ra.mean(axis=1, keepdims=True)
    rb = rb - rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    num = (ra * rb).sum(axis=1)
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7, data_range: float = 1.0) -> np.ndarray:
    """(N,) mean structural similarity (Wang et al., 2004) of (N, H, W) maps in [0, 1]: a uniform
    window of 7 pixels, K1 = 0.01, K2 = 0.03, sample covariances (scikit-image's defaults)."""
    from scipy.ndimage import uniform_filter

    a, b = a.astype(np.float64), b.astype(np.float64)
    win = min(window, *a.shape[1:])
    size = (1, win, win)
    cov = win * win / (win * win - 1) if win > 1 else 1.0
    mu_a, mu_b = uniform_filter(a, size), uniform_filter(b, size)
    va = cov * (uniform_filter(a * a, size) - mu_a * mu_a)
    vb = cov * (uniform_filter(b * b, size) - mu_b * mu_b)
    vab = cov * (uniform_filter(a * b, size) - mu_a * mu_b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * vab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    pad = (win - 1) // 2  # skimage crops the border where the window leaves the image
    h, w = a.shape[1:]
    return s[:, pad:h - pad or None, pad:w - pad or None].mean(axis=(1, 2))


def top_overlap(a, b, fraction: float = TOP_FRACTION) -> np.ndarray:
    """(N,) fraction of a's top ``fraction`` pixels that are also among b's (ties: first in raster order)."""
    ta = a.top if isinstance(a, Ranked) else top_mask(np.asarray(a, np.float64).reshape(len(a), -1), fraction)
    tb = b.top if isinstance(b, Ranked) else top_mask(np.asarray(b, np.float64).reshape(len(b), -1), fraction)
    return (ta & tb).sum(axis=1) / ta.sum(axis=1)


@dataclass(frozen=True)
class Views:
    """A result's maps ready for comparison: signed and absolute rankings, the |map| in [0, 1]."""

    signed: Ranked
    absolute: Ranked
    unit: np.ndarray


def views(result, spec) -> Views:
    signed, absolute = map_views(result, spec)
    a = ranked(absolute)
    return Views(a if signed is absolute else ranked(signed), a, _unit(absolute))


def compare(a: Views, b: Views) -> Similarity:
    return Similarity(spearman(a.signed, b.signed), spearman(a.absolute, b.absolute), ssim(a.unit, b.unit),
                      top_overlap(a.absolute, b.absolute))


def similarity(original, other, spec) -> Similarity:
    """How similar two results' maps are, image by image."""
    return compare(views(original, spec), views(other, spec))


def _unit(maps: np.ndarray) -> np.ndarray:
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    return np.divide(maps - lo, span, out=np.zeros_like(maps), where=span > 0)


# ---------------------------------------------------------------------------- the tests


def sanity_check(model, x: np.ndarray, method: Method = "gradcam", target: TargetLike = None,
                 order: str = "top-down", seed: int = 0, *, original=None, progress: bool = False) -> SanityResult:
    """Cascading model-parameter randomization (Adebayo et al., 2018) of ``method``'s maps.

    For each weighted layer (Conv, ConvTranspose, Gemm, MatMul with an initializer) from the
    output back (``order="bottom-up"``: from the input on), its weight and bias are replaced,
    cumulatively, by normal noise of mean 0 and the original's standard deviation (``seed``),
    and the map is recomputed for the same target. ``method``: a name ("gradcam", "vanilla",
    "guided", …) or ``fn(model, x, target) -> Heatmap | Attribution``; ``original``: its result
    on ``x`` when already computed.

    >>> s = onnxviz.sanity_check(model, x, method="guided")
    >>> s.spearman_abs[-1].mean(), s.verdict()
    """
    if order not in ORDERS:
        raise OnnxvizError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    name, fn = method_function(method)
    x = model.check_input(x)
    layers = weighted_layers(model.proto)
    if not layers:
        raise OnnxvizError("the model has no Conv, ConvTranspose, Gemm or MatMul with constant weights to randomize")
    if order == "top-down":
        layers = layers[::-1]
    first = original if original is not None else fn(model, x, target)
    chosen = np.asarray(first.target, np.int64)
    draws = randomized_weights(model.proto, layers, seed)
    names = {n for d in draws for n in d}
    view = reweighted(model, {i.name: numpy_helper.to_array(i) for i in model.proto.graph.initializer
                              if i.name in names})
    steps = _progress(range(len(layers)), progress, f"randomizing ({name})")
    sims, maps = [], []
    reference = views(first, model.input)
    for i in steps:
        view.runtime.values.update(draws[i])
        result = fn(view, x, chosen)
        sims.append(compare(reference, views(result, model.input)))
        maps.append(result.map)
    stack = {f: np.stack([getattr(s, f) for s in sims]) for f in ("spearman", "spearman_abs", "ssim", "topk")}
    return SanityResult(name, [layer.name for layer in layers], target=chosen, original=first.map,
                        maps=np.stack(maps), order=order, **stack)


def random_logit_test(model, x: np.ndarray, method: Method = "gradcam", seed: int = 0,
                      original=None) -> tuple[Similarity, np.ndarray, np.ndarray]:
    """The map for a random class other than the predicted one, against the predicted class's map.

    Returns (similarity per image, predicted classes, random classes). A class-sensitive
    method gives low similarity.
    """
    name, fn = method_function(method)
    x = model.check_input(x)
    first = original if original is not None else fn(model, x, None)
    predicted = np.asarray(first.target, np.int64)
    obj = objective(model)
    n_classes = class_scores(obj, model.activations(x[:1], [obj.tensor])[obj.tensor]).shape[1]
    if n_classes < 2:
        raise OnnxvizError("the random-logit test needs a model with at least two classes")
    # drawn per image from its own values: the same class whichever images share its batch
    images = model.input.to_nchw(x)  # an NHWC twin draws the same classes
    shift = np.array([image_rng(seed, image).integers(1, n_classes) for image in images], np.int64)
    other = (predicted + shift) % n_classes
    return similarity(first, fn(model, x, other), model.input), predicted, other


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)
