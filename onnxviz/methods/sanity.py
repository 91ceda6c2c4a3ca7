"""Sanity checks for maps (Adebayo et al., 2018): does the map change when the model does?

* Model-parameter randomization (cascading): re-initialize the weighted layers one by one, from
  the output back, and compare each new map with the original. A map that stays similar with
  every layer randomized shows the image, not the model.
* Random logit: the map for a random other class against the map for the predicted one.

Each step's weights reach the graphs without rebuilding the model per layer: the steps are split
among sessions (:func:`session_plan`), and a session serving steps i..j is built on a copy
of each graph whose layers randomized up to step i hold their random values as constants and
whose layers randomized at steps i+1..j are graph inputs (onnxruntime lets a graph input override
an initializer of the same name), fed the original or the random values step by step. Constant
weights keep onnxruntime's constant-weight paths (prepacked NCHWc convolutions, Conv+BatchNorm
fusion), which fed weights lose. Each such session holds a copy of the weights, so a model whose
sessions would hold more than :data:`SESSION_BYTES` gets four sessions that feed every layer
randomized so far instead. The sessions are kept with the model for the next call with the same
seed and order (those of an earlier call are freed); the model itself is never modified.

Maps are compared at the method's own resolution by default (``resolution="native"``): a CAM
map is its layer-resolution ``raw`` map (a 7x7 grid on a 224x224 ImageNet CNN), not the
upsampled ``map``. The upsampling and min-max scaling are one fixed function applied alike to
both maps: they add no information about the model, multiply the pixels compared ~1000x, and
SSIM's 7-pixel window on a 32x-upsampled map compares near-constant patches. Spearman's rho
is the same for ``raw`` and for its scaled version; SSIM and the top-k overlap use ``raw``
scaled to [0, 1]. Input-space attributions and input-resolution occlusion are already at the
input's resolution and compare the same either way. ``resolution="input"`` compares the
upsampled maps, as Quantus-style comparisons of displayed maps do.

>>> s = onnxviz.sanity_check(model, x, method="gradcam")
>>> s.layers[0], s.spearman.shape        # the classifier first; (layers, images)
>>> s.verdict()
'passes the randomization test'
"""
from __future__ import annotations

import copy
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import OnnxvizError, OptionError
from ..targets import TargetLike, class_scores, objective
from .results import Attribution, Heatmap
from .perturb import image_rng

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ORDERS = ("top-down", "bottom-up")
PASS_BELOW = 0.5
TOP_FRACTION = 0.1
SIMILARITIES = ("spearman", "spearman_abs", "ssim", "topk")
RESOLUTIONS = ("native", "input")
BATCH_PIXELS = 1 << 16  # map pixels compared at once: a step at 224x224 or a few small ones per batch
# Fed weights run slower than constant ones (onnxruntime prepacks and re-lays-out only constant
# weights, and fuses Conv+BatchNormalization only then: all fed, a Grad-CAM run took 1.5x as
# long on SqueezeNet; each fed layer cost a step 1-2 ms on the light models, 40% of a step on
# the sample model), so the steps are split among sessions, each feeding only the layers
# randomized after its first step (earlier draws baked in as constants, later layers original).
# More sessions feed fewer layers per step but each costs a session to create (34-72 ms on
# SqueezeNet/ShuffleNet, 1-2 runs of the method) and a copy of the weights. Measured
# (scripts/bench_metrics.py, Grad-CAM, CPU time over L runs, warm / first call): SqueezeNet
# (L=26) 4 sessions 1.12x / 1.52x, 8: 1.01 / 1.18, 13: 1.08 / 1.18, 26: 0.98 / 1.66;
# ShuffleNet (L=50) 8: 1.34 / 1.30, 13: 1.16 / 1.50, 25: 0.95 / 1.95; the sample model (L=5)
# 2: 1.40 / 2.8, 5: 1.14 / 4.6. Two steps a session (one fed layer) keeps the warm call within
# ~5% of L runs, leaving room for the comparisons of input-space maps.
# Baked sessions each hold every weight: on ResNet-50 (L=54, 100 MB of weights) five kept sessions
# took +1.9 GB and 1.3 s each to create, against +0.6 GB for four fed ones; models whose baked
# sessions would hold more than SESSION_BYTES of weights get FED_SESSIONS sessions that feed
# every layer randomized so far (smaller graphs, cheap to create, slower steps).
STEPS_PER_SESSION = 2
ALL_BAKED = 8  # up to this many layers, a session per step: a fed layer costs small models most
SESSION_BYTES = 1 << 29
FED_SESSIONS = 4
SESSIONS: Optional[int] = None  # a fixed number of sessions instead of the rule above (tests, benchmarks)
BAKE: Optional[bool] = None  # bake or feed regardless of the size (tests)

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
    class explained per image (fixed across steps); ``original`` (N, H, W) and ``maps``
    (L, N, H, W) the maps as shown (each result's ``map``: upsampled to the input and scaled to
    [0, 1]) whatever ``resolution`` the similarities were computed at ("native": a CAM's ``raw``
    layer-resolution map; "input": the shown ``map``; see the module's docstring).
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
    resolution: str = "native"

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


def randomized_weights(proto: onnx.ModelProto, layers: list, seed: int = 0, spreads: Optional[dict] = None) -> list:
    """For each layer in order, new values for its weight (and bias): normal, mean 0, the original's std.

    ``spreads``: name -> (shape, dtype, std) of the originals when already known (:func:`weight_spreads`).
    Drawn in float32 (float64 for float64 weights): half the work of float64 draws, which matters
    on large models. Same seed, same draws; they differ from the float64 draws of earlier versions.
    """
    spreads = spreads if spreads is not None else weight_spreads(proto, layers)
    rng = np.random.default_rng(seed)
    out = []
    for layer in layers:
        new = {}
        for name in (layer.weight, layer.bias):
            if name is None:
                continue
            shape, dtype, std = spreads[name]
            kind = np.float64 if dtype == np.float64 else np.float32
            value = rng.standard_normal(shape, dtype=kind)
            value *= kind(std)
            new[name] = value.astype(dtype, copy=False)
        out.append(new)
    return out


def weight_spreads(proto: onnx.ModelProto, layers: list) -> dict:
    """name -> (shape, dtype, std) of each layer's weight and bias: all the draws need of the originals."""
    return {k: _spread(v) for k, v in _layer_values(proto, layers).items()}


def original_weights(model) -> tuple:
    """(values, spreads) of the model's weighted layers' initializers, read once per model."""
    def read():
        values = _layer_values(model.proto, weighted_layers(model.proto))
        return values, {k: _spread(v) for k, v in values.items()}

    return model.derived(("sanity-weights",), read)


def _layer_values(proto: onnx.ModelProto, layers: list) -> dict:
    names = {n for layer in layers for n in (layer.weight, layer.bias) if n is not None}
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if i.name in names}


def _spread(w: np.ndarray) -> tuple:
    return w.shape, w.dtype, float(np.std(w, dtype=np.float64))


class WeightFeeds:
    """A stand-in for a Runtime: every graph it runs takes the initializers ``values`` names as
    inputs, and holds ``baked`` (initializer name -> array) as constants in place of the originals.

    Each graph is rewritten once per weight set (``tag`` names it: the same tag must mean the
    same names and baked values) and gets one session, kept with the model (see :func:`forget`);
    ``values`` is fed with every run, so changing it re-weights the model without a new session.
    """

    def __init__(self, model, values: dict, baked: Optional[dict] = None, tag: Optional[str] = None):
        self.runtime = model.runtime
        self.model = model
        self.values = dict(values)
        self.names = tuple(sorted(self.values))
        self.baked = baked or {}
        self.tag = tag or hashlib.sha1("\x00".join(self.names).encode()).hexdigest()[:12]

    def __getattr__(self, name):
        return getattr(self.runtime, name)

    def rewritten(self, proto: onnx.ModelProto, key) -> "_Rewritten":
        """The graph with the weights as inputs and ``baked`` as constants, built once per graph and weight set."""
        cache = _cache(self.model)
        name = _graph_name(self.tag, key if key is not None else id(proto))
        if name not in cache:
            graph, names = _weights_as_inputs(proto, self.names, self.baked)
            # ``proto`` is kept so that its id names no other graph while the entry lives; a graph
            # run without a key gets no session name (the runtime names it by its content)
            cache[name] = _Rewritten(graph, names, proto, name if key is not None else None)
        return cache[name]

    def run(self, model, feeds, outputs=None, batch_size=None, progress=False, key=None, desc="running",
            fixed_shapes=False):
        found = self.rewritten(model, key)
        graph, key = found.graph, found.key
        weights = {n: self.values[n] for n in found.names}
        n = _batch_len(feeds)
        # chunk here, not in Runtime.run: it would also slice a weight whose first dim equals the batch
        if not batch_size or n is None or n <= batch_size:
            return self.runtime.run(graph, {**feeds, **weights}, outputs, None, progress, key, desc, fixed_shapes)
        parts = [self.runtime.run(graph, {**{k: v[s:s + batch_size] if _batched(v, n) else v
                                              for k, v in feeds.items()}, **weights}, outputs, None, False, key, desc,
                                    fixed_shapes)
                 for s in range(0, n, batch_size)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _graph_name(tag: str, key="") -> str:
    """The cache and session name of a graph re-weighted by the weight set ``tag``; with no key,
    the prefix shared by all of that set's graphs (how :func:`stepped_sessions` keeps them)."""
    return f"weights-as-inputs:{tag}:{key}"


@dataclass(frozen=True)
class _Rewritten:
    """A re-weighted graph, the initializers it takes as inputs, the graph it was made from, its
    session's name (the same name for the same source graph and weight set, whoever builds it)."""

    graph: onnx.ModelProto
    names: list
    source: onnx.ModelProto
    key: str


def _cache(model) -> dict:
    """Session name -> rewritten graph (its session is the runtime's, by that name) and ("plan", ...)
    -> :class:`_Plan`, kept with the model."""
    return model.derived(("sanity-graphs",), dict)


def forget(model, keep=()) -> None:
    """Free the randomization test's graphs and sessions kept with ``model``, but those named in ``keep``."""
    cache = _cache(model)
    for name in [k for k in cache if k not in keep]:
        found = cache.pop(name)
        if isinstance(found, _Rewritten) and found.key is not None:
            model.runtime.forget(found.key)


def _weights_as_inputs(proto: onnx.ModelProto, names, baked: Optional[dict] = None) -> tuple:
    """A copy of ``proto`` whose initializers in ``names`` are graph inputs instead (every run
    feeds them, so the copy does not hold their values) and whose initializers in ``baked`` hold
    those values. Returns (copy, the names it takes)."""
    wanted = set(names)
    baked = baked or {}
    inputs = {i.name for i in proto.graph.input}
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits = out.graph.initializer
    taken, dropped = [], []
    for k, init in enumerate(inits):
        if init.name in baked:
            init.CopyFrom(numpy_helper.from_array(baked[init.name], init.name))
        elif init.name in wanted:
            taken.append(init.name)
            dropped.append(k)
            if init.name not in inputs:
                out.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    for k in reversed(dropped):
        del inits[k]
    return out, taken


def _batched(v, n: int) -> bool:
    return isinstance(v, np.ndarray) and v.ndim > 0 and v.shape[0] == n


def _batch_len(feeds) -> Optional[int]:
    lens = {v.shape[0] for v in feeds.values() if isinstance(v, np.ndarray) and v.ndim > 0}
    return max(lens) if lens else None


def reweighted(model, values: dict, baked: Optional[dict] = None, tag: Optional[str] = None):
    """A view of ``model`` whose every run feeds ``values`` (initializer name -> array) as weights
    and holds ``baked`` as constants (:class:`WeightFeeds`, ``tag`` naming the weight set).

    The view shares the model's derived graphs; its sessions are keyed apart from the model's own.
    The names are fixed here; change the values with ``view.runtime.values.update(...)``.
    Methods that read weights from the graph (CAM) see the originals.
    """
    view = copy.copy(model)
    view.runtime = WeightFeeds(model, values, baked, tag)
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
    raise OptionError(f"unknown method {method!r}: choose from {known}")


def map_views(result, spec, resolution: str = "native") -> tuple[np.ndarray, np.ndarray]:
    """(signed, absolute) (N, H, W) maps of a result, as compared: input-space attributions are
    summed over channels for the signed view and their shown ``map`` is the absolute one; a
    Heatmap's map is its ``raw`` map ("native") or its upsampled ``map`` ("input"), the same
    array for both views (CAM maps are non-negative, and ``map`` orders pixels as ``raw`` does)."""
    # C order: an upsampled map can be a transposed view, and every later pass runs 3-10x slower on it
    if isinstance(result, Attribution):
        return (np.ascontiguousarray(result.raw.sum(axis=spec.channel_axis, dtype=np.float64)),
                _floating(result.map))
    if isinstance(result, Heatmap):
        m = _floating(result.raw if resolution == "native" else result.map)
        return m, m
    raise OnnxvizError(f"a method must return a Heatmap or an Attribution, not {type(result).__name__}")


def _floating(m) -> np.ndarray:
    """C-ordered, at least float32 (ranks are taken on the values as computed, never rounded)."""
    m = np.asarray(m)
    return np.ascontiguousarray(m, np.result_type(m.dtype, np.float32))


def check_resolution(resolution: str) -> str:
    if resolution not in RESOLUTIONS:
        raise OptionError(f"resolution must be one of {', '.join(RESOLUTIONS)}, not {resolution!r}")
    return resolution


@dataclass(frozen=True)
class Ranked:
    """(N, P) maps prepared once: ``centered`` their ranks (ties averaged) less the row mean,
    ``norm`` its row norm (what Spearman's rho needs); ``top`` the mask of the top pixels, when asked.

    Centered ranks are multiples of 1/2: float32 holds them exactly below 2^23 pixels a map.
    """

    centered: np.ndarray
    norm: np.ndarray
    top: Optional[np.ndarray] = None


def ranked(maps: np.ndarray, fraction: float = TOP_FRACTION, top: bool = True) -> Ranked:
    """Average ranks and the top mask, from one argsort per row.

    Every value first gets its place in the sorted row; then only the runs of ties (found as
    equal neighbours in the sorted values, usually few) get their mean place. Average ranks
    always sum to P(P-1)/2, so every row's mean rank is (P-1)/2.
    """
    flat = np.asarray(maps)
    flat = flat.reshape(len(flat), -1) if flat.dtype.kind == "f" else flat.reshape(len(flat), -1).astype(np.float64)
    n, p = flat.shape
    mid = (p - 1) / 2
    order = np.argsort(flat, axis=1)
    s = np.sort(flat, axis=1)  # the same values as flat[order], and a SIMD sort is cheaper than that gather
    centered = np.empty((n, p), np.float32 if p < 1 << 23 else np.float64)
    np.put_along_axis(centered, order, (np.arange(p, dtype=np.float64) - mid)[None].astype(centered.dtype), axis=1)
    equal = s[:, 1:] == s[:, :-1]  # equal[r, j]: sorted places j and j + 1 of row r hold one value
    rows, cols = np.nonzero(equal)
    if len(rows):
        # a run of ties: consecutive True places in one row; it spans places start..stop
        begins = np.ones(len(cols), bool)
        begins[1:] = (cols[1:] != cols[:-1] + 1) | (rows[1:] != rows[:-1])
        ends = np.append(begins[1:], True)
        start, stop, row = cols[begins], cols[ends] + 1, rows[begins]
        size = stop - start + 1
        offsets = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
        places = np.repeat(start, size) + offsets
        who = np.repeat(row, size)
        centered[who, order[who, places]] = np.repeat((start + stop) / 2 - mid, size)
    norm = np.sqrt(np.einsum("np,np->n", centered, centered, dtype=np.float64))
    return Ranked(centered, norm, _top_from_sorted(flat, order, s, fraction) if top else None)


def _top_from_sorted(flat, order, s, fraction) -> np.ndarray:
    """:func:`top_mask` from a sort already made: the last k places, unless a tie straddles the cut."""
    n, p = flat.shape
    k = max(1, int(round(fraction * p)))
    if k == p or (s[:, p - k] == s[:, p - k - 1]).any():
        return top_mask(flat, fraction)
    top = np.zeros((n, p), bool)
    np.put_along_axis(top, order[:, p - k:], True, axis=1)
    return top


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
    map is constant (a constant map carries no ranking to agree with). Maps or :class:`Ranked`;
    ``a`` may hold N maps for ``b``'s k·N (k steps against one reference). Products summed in float64."""
    a = a if isinstance(a, Ranked) else ranked(a, top=False)
    b = b if isinstance(b, Ranked) else ranked(b, top=False)
    n, p = a.centered.shape
    num = np.einsum("knp,np->kn", b.centered.reshape(-1, n, p), a.centered, dtype=np.float64).ravel()
    den = np.tile(a.norm, len(num) // n) * b.norm
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7, data_range: float = 1.0) -> np.ndarray:
    """(N,) mean structural similarity (Wang et al., 2004) of (N, H, W) maps in [0, 1]: a uniform
    window of 7 pixels, K1 = 0.01, K2 = 0.03, sample covariances (scikit-image's defaults)."""
    return ssim_of(local_stats(a, window), local_stats(b, window), data_range)


@dataclass(frozen=True)
class LocalStats:
    """(N, H, W) maps with their windowed means and variances (cropped where the window leaves the
    map, as scikit-image does): what SSIM needs of each map alone."""

    maps: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    window: int


def local_stats(a: np.ndarray, window: int = 7) -> LocalStats:
    """Windowed statistics in float32: half the memory traffic of float64 (scipy sums the windows
    in double either way). E[a²] - E[a]² of [0, 1] maps then carries ~1e-7 of rounding, against
    SSIM's c2 = 9e-4; on gradient maps the mean SSIM moved by < 1e-7."""
    a = np.asarray(a, np.float32)
    win = min(window, *a.shape[1:])
    mu = window_means(a, win)
    var = window_means(a * a, win)
    var -= mu * mu
    var *= np.float32(_sample(win))
    return LocalStats(a, mu, var, win)


def _sample(win: int) -> float:
    """The sample-covariance factor n / (n - 1) of a win x win window."""
    return win * win / (win * win - 1) if win > 1 else 1.0


def window_means(a: np.ndarray, win: int) -> np.ndarray:
    """Means over win x win windows, cropped by (win - 1) // 2 where the window leaves the map (as skimage does)."""
    from scipy.ndimage import uniform_filter

    pad = (win - 1) // 2
    h, w = a.shape[1:]
    return uniform_filter(a, (1, win, win))[:, pad:h - pad or None, pad:w - pad or None]


def ssim_of(a: LocalStats, b: LocalStats, data_range: float = 1.0) -> np.ndarray:
    """:func:`ssim` from each side's :func:`local_stats`; ``a`` may hold N maps for ``b``'s k·N
    (k steps against one reference), so the reference's windows are summed once.

    In place on few buffers (the arrays are large: k·N full-size maps), in the order of
    ((2 mu_a mu_b + c1)(2 cov_ab + c2)) / ((mu_a² + mu_b² + c1)(var_a + var_b + c2)).
    """
    n = len(a.maps)
    win = a.window
    shape = (-1, n, *a.mean.shape[1:])
    prod = b.maps.reshape(-1, *a.maps.shape) * a.maps
    mu_a, va = a.mean, a.var
    mu_b, vb = b.mean.reshape(shape), b.var.reshape(shape)
    c1, c2 = np.float32((0.01 * data_range) ** 2), np.float32((0.03 * data_range) ** 2)
    num = window_means(prod.reshape(b.maps.shape), win).reshape(shape)
    mu_ab = mu_a * mu_b
    num -= mu_ab
    num *= np.float32(_sample(win))  # the covariance
    num *= 2
    num += c2
    mu_ab *= 2
    mu_ab += c1
    num *= mu_ab
    den = mu_b * mu_b
    den += mu_a ** 2
    den += c1
    spread = vb + va
    spread += c2
    den *= spread
    num /= den
    return num.mean(axis=(2, 3), dtype=np.float64).ravel()


def top_overlap(a, b, fraction: float = TOP_FRACTION) -> np.ndarray:
    """(N,) fraction of a's top ``fraction`` pixels that are also among b's (ties: first in raster order);
    ``a`` may hold N maps for ``b``'s k·N."""
    ta = a.top if isinstance(a, Ranked) else top_mask(np.asarray(a, np.float64).reshape(len(a), -1), fraction)
    tb = b.top if isinstance(b, Ranked) else top_mask(np.asarray(b, np.float64).reshape(len(b), -1), fraction)
    kept = (tb.reshape(-1, *ta.shape) & ta).sum(axis=2)
    return (kept / ta.sum(axis=1)).ravel()


@dataclass(frozen=True)
class Views:
    """Maps ready for comparison: signed and absolute rankings, the |map| in [0, 1] with its SSIM statistics."""

    signed: Ranked
    absolute: Ranked
    unit: LocalStats


def views(result, spec, resolution: str = "native") -> Views:
    signed, absolute = map_views(result, spec, resolution)
    return views_of(signed, absolute)


def views_of(signed: np.ndarray, absolute: np.ndarray) -> Views:
    """Views of (M, H, W) maps; ``signed is absolute`` ranks them once (CAM maps are non-negative)."""
    a = ranked(absolute)
    return Views(a if signed is absolute else ranked(signed, top=False), a,
                 local_stats(_unit(np.asarray(absolute, np.float64))))


def compare(a: Views, b: Views) -> Similarity:
    """Similarity of b's maps to a's, image by image; ``b`` may hold k·N maps (k steps against a's
    N), and the results then list them step by step."""
    return Similarity(spearman(a.signed, b.signed), spearman(a.absolute, b.absolute), ssim_of(a.unit, b.unit),
                      top_overlap(a.absolute, b.absolute))


def similarity(original, other, spec, resolution: str = "native") -> Similarity:
    """How similar two results' maps are, image by image, compared at ``resolution``."""
    return compare(views(original, spec, resolution), views(other, spec, resolution))


def compare_steps(reference: Views, results: list, spec, resolution: str = "native") -> list:
    """[(k, N) spearman, spearman_abs, ssim, topk] of k results against the reference, in one batch."""
    pairs = [map_views(r, spec, resolution) for r in results]
    signed = np.concatenate([p[0] for p in pairs])
    absolute = signed if all(p[0] is p[1] for p in pairs) else np.concatenate([p[1] for p in pairs])
    sim = compare(reference, views_of(signed, absolute))
    k = len(results)
    return [getattr(sim, f).reshape(k, -1) for f in SIMILARITIES]


def _unit(maps: np.ndarray) -> np.ndarray:
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    if (span > 0).all():  # the usual case, without the masked divide's slow loop
        out = maps - lo
        out /= span
        return out
    return np.divide(maps - lo, span, out=np.zeros_like(maps), where=span > 0)


# ---------------------------------------------------------------------------- the tests


def sanity_check(model, x: np.ndarray, method: Method = "gradcam", target: TargetLike = None,
                 order: str = "top-down", seed: int = 0, *, original=None, resolution: str = "native",
                 progress: bool = False) -> SanityResult:
    """Cascading model-parameter randomization (Adebayo et al., 2018) of ``method``'s maps.

    For each weighted layer (Conv, ConvTranspose, Gemm, MatMul with an initializer) from the
    output back (``order="bottom-up"``: from the input on), its weight and bias are replaced,
    cumulatively, by normal noise of mean 0 and the original's standard deviation (``seed``),
    and the map is recomputed for the same target. ``method``: a name ("gradcam", "vanilla",
    "guided", …) or ``fn(model, x, target) -> Heatmap | Attribution``; ``original``: its result
    on ``x`` when already computed. ``resolution``: "native" compares a CAM map on its layer's
    grid (``raw``), "input" the upsampled ``map`` (see the module's docstring); the result's
    ``maps`` are the shown maps either way.

    >>> s = onnxviz.sanity_check(model, x, method="guided")
    >>> s.spearman_abs[-1].mean(), s.verdict()
    """
    if order not in ORDERS:
        raise OptionError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    check_resolution(resolution)
    name, fn = method_function(method)
    x = model.check_input(x)
    layers = weighted_layers(model.proto)
    if not layers:
        raise OnnxvizError("the model has no Conv, ConvTranspose, Gemm or MatMul with constant weights to randomize")
    if order == "top-down":
        layers = layers[::-1]
    first = original if original is not None else fn(model, x, target)
    chosen = np.asarray(first.target, np.int64)
    sessions = stepped_sessions(model, layers, seed, order)
    steps = _progress(range(len(layers)), progress, f"randomizing ({name})")
    reference = views(first, model.input, resolution)
    maps, results = [], []
    if len(layers) * reference.unit.maps.size <= BATCH_PIXELS:  # small maps (a CAM's own grid): one batch at the end
        for i in steps:
            view, draw = sessions[i]
            view.runtime.values.update(draw)
            results.append(fn(view, x, chosen))
            maps.append(results[-1].map)
        parts = [compare_steps(reference, results, model.input, resolution)]
    else:
        parts = _overlapped(sessions, steps, fn, x, chosen, reference, model.input, resolution, maps)
    stack = {f: np.concatenate([p[j] for p in parts]) for j, f in enumerate(SIMILARITIES)}
    return SanityResult(name, [layer.name for layer in layers], target=chosen, original=first.map,
                        maps=np.stack(maps), order=order, resolution=resolution, **stack)


def _overlapped(sessions, steps, fn, x, chosen, reference, spec, resolution, maps) -> list:
    """Run the steps, comparing batches of their maps on a worker thread while the next steps run
    (numpy and onnxruntime release the GIL); at most two batches wait, so the results held stay
    bounded. Appends each step's shown map to ``maps``; returns the batches' similarities."""
    parts, pending = [], []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxviz-sanity") as pool:
        for i in steps:
            view, draw = sessions[i]
            view.runtime.values.update(draw)
            pending.append(fn(view, x, chosen))
            maps.append(pending[-1].map)
            if i == len(sessions) - 1 or len(pending) * maps[-1].size >= BATCH_PIXELS:
                if len(parts) >= 2:
                    parts[-2].result()
                parts.append(pool.submit(compare_steps, reference, pending, spec, resolution))
                pending = []
        return [p.result() for p in parts]


def stepped_sessions(model, layers: list, seed: int, order: str) -> list:
    """Per step i, (re-weighted view of ``model``, the values to feed it before step i's run).

    The steps are split into :func:`session_plan` runs. Baked, the view serving steps a..b
    holds the draws of layers[:a + 1] as constants and takes layers[a + 1..b]'s weights as
    inputs, fed the originals until their step comes (a session of one step feeds nothing).
    Not baked (large models), it takes every layer randomized by step b as an input. The plan
    (draws included) is kept with the model for the next call with the same seed and order;
    the graphs and sessions of an earlier call with another seed, order or split are freed.
    """
    count, bake = session_plan(model, len(layers))
    names = "|".join(layer.name for layer in layers)
    plan_key = ("plan", seed, order, count, bake, hashlib.sha1(names.encode()).hexdigest()[:12])
    cache = _cache(model)
    plan = cache.get(plan_key)
    if plan is None:
        values, spreads = original_weights(model)
        draws = randomized_weights(model.proto, layers, seed, spreads)
        steps, tags, start = [], [], 0
        for end in checkpoints(len(layers), count):
            upto = start + 1 if bake else 0  # draws[:upto] are constants in this session's graphs
            fed = {n: values[n] for d in draws[upto:end + 1] for n in d}
            baked = {n: v for d in draws[:upto] for n, v in d.items()}
            tag = hashlib.sha1(f"{seed}|{order}|{start}|{end}|{bake}|{names}".encode()).hexdigest()[:12]
            tags.append(_graph_name(tag))
            view = reweighted(model, fed, baked, tag)
            steps += [(view, d) for d in draws[start:end + 1]]
            # a session's first step: the originals (a last call left its draws), and the draws so far
            steps[start] = (view, {**fed, **{n: v for d in draws[upto:start + 1] for n, v in d.items()}})
            start = end + 1
        plan = _Plan(steps, tuple(tags))
    forget(model, keep=[k for k in cache if k == plan_key or (isinstance(k, str) and k.startswith(plan.tags))])
    cache[plan_key] = plan
    return plan.steps


@dataclass(frozen=True)
class _Plan:
    """The randomization test's steps for one seed, order and split: (view, feeds) per step, and
    the prefixes of its graphs' names in the cache."""

    steps: list
    tags: tuple


def session_plan(model, n_layers: int) -> tuple[int, bool]:
    """(sessions, baked?) for the steps: baked, one session per :data:`STEPS_PER_SESSION` steps
    (per step up to :data:`ALL_BAKED` layers) while their weights together stay within
    :data:`SESSION_BYTES`; else :data:`FED_SESSIONS` sessions feeding the layers randomized so
    far (a baked session holds a copy of every weight and takes 1-2 s to create on a
    ResNet-50). :data:`SESSIONS` and :data:`BAKE`, when set, decide instead. At most one per step."""
    wanted = n_layers if n_layers <= ALL_BAKED else -(-n_layers // STEPS_PER_SESSION)
    if SESSIONS is not None:
        wanted = SESSIONS
    bake = BAKE
    if bake is None:
        weights = sum(v.nbytes for v in original_weights(model)[0].values())
        bake = wanted * weights <= SESSION_BYTES
    if not bake and SESSIONS is None:
        wanted = FED_SESSIONS
    return max(1, min(wanted, n_layers)), bool(bake)


def random_logit_test(model, x: np.ndarray, method: Method = "gradcam", seed: int = 0,
                      original=None, resolution: str = "native") -> tuple[Similarity, np.ndarray, np.ndarray]:
    """The map for a random class other than the predicted one, against the predicted class's map.

    Returns (similarity per image at ``resolution``, as :func:`sanity_check`; predicted classes,
    random classes). A class-sensitive method gives low similarity.
    """
    check_resolution(resolution)
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
    return similarity(first, fn(model, x, other), model.input, resolution), predicted, other


def checkpoints(n_layers: int, sessions: int) -> list:
    """The last step each session serves: ``sessions`` near-equal runs of steps (fewer for few layers)."""
    m = max(1, min(sessions, n_layers))
    return [-(-n_layers * (j + 1) // m) - 1 for j in range(m)]


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)
