"""Class visualization and activation investigation: the input a network scores highest.

Class visualization (Simonyan et al., 2014) finds ``argmax_I  S_c(I) − λ‖I‖²₂`` by gradient
ascent, ``S_c`` the pre-softmax logit of class c (optionally minus the mean of the other
logits) and ``I`` the image centred on the preprocessing mean. With a channel's mean
activation as the objective, the same ascent shows what one channel of a mid layer responds
to (Erhan et al., 2009; Olah et al., "Feature Visualization", 2017).

Every step is one onnxruntime run of a gradient graph (built once per input size and cached)
whose seed selects the objective, plus numpy:

1. the image ``p`` (pixel fractions in [0, 1], NCHW, the model's channel order) comes from its
   parameterization (plain pixels, or lucid's decorrelated Fourier spectrum);
2. a random warp (jitter roll, zoom, rotation) is applied, the batch is normalized into the
   model's input space and run; the input gradient is mapped back through the normalization
   and the warp's exact adjoint (see :mod:`.transforms`);
3. the objective's gradient is scaled to unit RMS per image, and the regularizer gradients are
   subtracted: ``2λ·I`` (L2) and ``τ·∇TV`` (squared total variation). Normalizing first makes
   λ and τ relative to the objective's gradient, so the same defaults work for models whose
   logits differ in scale by orders of magnitude; at a stationary point this is the seed
   objective ``S − λ'‖I‖²`` with ``λ' = λ·RMS(∇S)``;
4. Adam takes a step; pixels are clipped to [0, 1] (pixel values 0–255, which the
   normalization maps to per-channel bounds of the model's input) and blurred every few steps.

>>> vis = onnxviz.class_visualization(model, target=[0, 1, 2], pre=pre, steps=200)
>>> vis.probability          # softmax probability of each target on its final image
>>> vis = onnxviz.channel_visualization(model, layer="relu_2", channel=5, pre=pre)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ..autodiff import REDIRECTED, STANDARD, gradient_graph
from ..errors import OnnxvizError, OptionError
from ..gradients import check_differentiable
from ..images import Preprocess, deprocess
from ..targets import class_scores, objective
from .layers import layer_axes
from .parameterization import PARAMETERIZATIONS, Fourier, Pixels
from .transforms import blur, random_warp, tv_gradient

Indices = Union[int, Sequence[int], np.ndarray]


@dataclass(frozen=True)
class Ascent:
    """How the ascent runs; every default below. Peers' choices (lucid/lucent, tf-keras-vis,
    Yosinski et al. 2015), scaled to the image, and checked on models they were not tuned on.

    * ``steps=256`` Adam steps with ``lr=0.05`` (pixel fractions: at most ~13 grey levels per
      step; lucid's rate), ``betas=(0.9, 0.999)``.
    * ``l2=1.0``: λ of ``λ‖I‖²₂``, relative to the unit-RMS objective gradient: a pixel whose
      gradient is g × the RMS settles near ``|I| ≈ g / (2λ)``, so pixels the objective does not
      care about fade to the mean colour.
    * ``tv=0.05``: weight of the squared total variation, same units.
    * ``blur_every=8``, ``blur_sigma=0.5`` pixels: a periodic Gaussian blur against pixel-level
      noise (Yosinski et al., 2015); without it the sample model's triangle drifts towards ring
      dots. 0 turns it off. Pixel parameterization only.
    * ``jitter=0.05`` of each side (11 px at 224, 3 px at 64; lucid uses 8–16 px at 224),
      ``zoom=(0.95, 1.05)``, ``rotate=5`` degrees either way: one random warp per step,
      shared by the batch; ``jitter=0, zoom=None, rotate=0`` turns them off.
    * ``param="pixel"``, or ``"fourier"`` for lucid's decorrelated spectrum (``fourier_decay=1``).
    * ``init_std=0.05``: the start is the preprocessing mean (mid-grey when it is 0) plus
      Gaussian noise of this std in pixel fractions, clipped: low-contrast noise, as lucid's.
    * ``snapshots=8``: images kept over the steps (the start and the final image included).
    """

    steps: int = 256
    lr: float = 0.05
    betas: tuple = (0.9, 0.999)
    l2: float = 1.0
    tv: float = 0.05
    blur_every: int = 8
    blur_sigma: float = 0.5
    jitter: float = 0.05
    zoom: Optional[tuple] = (0.95, 1.05)
    rotate: float = 5.0
    param: str = "pixel"
    fourier_decay: float = 1.0
    init_std: float = 0.05
    snapshots: int = 8

    def __post_init__(self):
        if self.steps < 0:
            raise OnnxvizError(f"steps must be >= 0, not {self.steps}")
        if self.lr <= 0:
            raise OnnxvizError(f"lr must be positive, not {self.lr}")
        if min(self.l2, self.tv, self.jitter, self.rotate, self.init_std, self.blur_sigma) < 0:
            raise OnnxvizError("l2, tv, jitter, rotate, blur_sigma and init_std must be >= 0")
        if self.jitter >= 0.5:
            raise OnnxvizError(f"jitter is a fraction of the image side; {self.jitter} is too large")
        if self.zoom is not None:
            if len(self.zoom) != 2 or not 0 < self.zoom[0] <= self.zoom[1]:
                raise OnnxvizError(f"zoom must be (low, high) with 0 < low <= high, not {self.zoom}")
            object.__setattr__(self, "zoom", (float(self.zoom[0]), float(self.zoom[1])))
        if self.param not in PARAMETERIZATIONS:
            raise OnnxvizError(f"param must be one of {', '.join(PARAMETERIZATIONS)}, not {self.param!r}")
        if self.blur_every < 0 or self.snapshots < 0:
            raise OnnxvizError("blur_every and snapshots must be >= 0")

    @classmethod
    def of(cls, settings: Optional["Ascent"] = None, **options) -> "Ascent":
        """``settings`` (default: the defaults) with ``options`` replaced; unknown names are an error."""
        base = settings or cls()
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise OptionError(f"unknown option(s) {', '.join(unknown)}; choose from {', '.join(sorted(names))}")
        return dataclasses.replace(base, **options)


@dataclass(frozen=True)
class Visualization:
    """Images found by gradient ascent, one per row (``batch`` starts per target).

    ``x``: the final model input, in the model's layout and dtype (feed it to ``Model.run``);
    ``image``: it as uint8 RGB (N, H, W, 3), normalization and layout undone;
    ``target``: class (``kind="class"``) or channel (``kind="channel"``) per row;
    ``score``: the objective on ``x`` by a plain forward run: the target's logit (minus the mean
    of the others with ``subtract_others``) or the channel's mean activation; ``start_score``:
    the same on the starting noise; ``probability``: the target's softmax probability on ``x``
    (class objective only); ``norm``: ‖I‖₂, the image centred on the preprocessing mean, in
    pixel fractions; ``history``: (steps, N) the objective at each step (on that step's warped
    image) and ``norm_history`` the norm of the image it was computed from;
    ``snapshots``: (S, N, H, W, 3) uint8 images after ``snapshot_steps`` steps.
    """

    x: np.ndarray
    image: np.ndarray
    target: np.ndarray
    score: np.ndarray
    start_score: np.ndarray
    norm: np.ndarray
    history: np.ndarray
    norm_history: np.ndarray
    snapshots: np.ndarray
    snapshot_steps: np.ndarray
    kind: str
    tensor: str
    layer: Optional[str] = None
    probability: Optional[np.ndarray] = None
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)


def class_visualization(model, target: Indices, *, batch: int = 1, seed: int = 0,
                        pre: Optional[Preprocess] = None, size: Optional[tuple] = None,
                        output: Optional[str] = None, subtract_others: bool = False,
                        progress: bool = False, settings: Optional[Ascent] = None,
                        **options) -> Visualization:
    """The image each ``target`` class scores highest: ascent on its pre-softmax logit − λ‖I‖²₂.

    ``target``: a class index or several (one batch runs them all); ``batch`` starts per target
    from different noise (``seed``). ``pre``: the model's preprocessing (default ImageNet), which
    fixes the valid input range and how the image is shown. ``subtract_others``: maximize the
    logit minus the mean of the other logits. ``options`` override :class:`Ascent`'s defaults
    (``steps``, ``lr``, ``l2``, ``tv``, ``jitter``, ``param``...).

    >>> vis = onnxviz.class_visualization(model, target=3, batch=2, steps=128, pre=pre)
    >>> onnxviz.load(...).run(vis.x)  # the target's probability is vis.probability
    """
    ascent = Ascent.of(settings, **options)
    obj = objective(model, output, "logit")
    targets = _indices(target, "target")
    rows = np.repeat(targets, _count(batch))

    def make_seed(shape):
        k = shape[obj.class_axis]
        if isinstance(k, int) and (rows >= k).any():
            raise OnnxvizError(f"target {int(rows.max())} is out of range: {obj.tensor!r} has {k} classes")
        weights = (np.arange(k)[None, :] == rows[:, None]).astype(np.float64)
        if subtract_others and k > 1:
            weights -= (1.0 - weights) / (k - 1)
        return _seed(shape, obj.class_axis, weights, mean=False)

    result = _ascend(model, obj.tensor, make_seed, rows, pre, size, ascent, seed, progress)
    logits = model.activations(result.x, [obj.tensor])[obj.tensor]
    scores = class_scores(obj, logits.astype(np.float64))
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    probability = (e / e.sum(axis=1, keepdims=True))[np.arange(len(rows)), rows]
    settings_ = {**result.settings, "batch": batch, "output": obj.output, "subtract_others": subtract_others}
    return dataclasses.replace(result, kind="class", probability=probability.astype(np.float32),
                               settings=settings_)


def channel_visualization(model, layer: str, channel: Indices, *, batch: int = 1, seed: int = 0,
                          pre: Optional[Preprocess] = None, size: Optional[tuple] = None,
                          progress: bool = False, settings: Optional[Ascent] = None,
                          **options) -> Visualization:
    """The image that maximizes the mean activation of ``channel`` of tensor ``layer``.

    4-D layers may be channels-first or channels-last (the channel axis is traced from the
    input); 2-D layers (N, units) take a unit index. Other arguments as for
    :func:`class_visualization`.

    >>> vis = onnxviz.channel_visualization(model, "relu_2", [0, 5], pre=pre)
    >>> vis.score / vis.start_score   # how far each channel was driven above the noise
    """
    ascent = Ascent.of(settings, **options)
    if not model.has_tensor(layer) or layer == model.input.name:
        raise OnnxvizError(f"no layer tensor named {layer!r}; `onnxviz inspect` lists them")
    shape = model.tensor_shape(layer)
    if shape is not None and len(shape) == 2:
        axis = 1
    elif shape is not None and len(shape) == 4:
        axis = layer_axes(model, layer)[0]
    else:
        raise OnnxvizError(f"layer {layer!r} has shape {shape}: expected (N, C, h, w), (N, h, w, C) or (N, C)")
    rows = np.repeat(_indices(channel, "channel"), _count(batch))

    def make_seed(shape_):
        k = shape_[axis]
        if (rows >= k).any():
            raise OnnxvizError(f"channel {int(rows.max())} is out of range: {layer!r} has {k} channels")
        weights = (np.arange(k)[None, :] == rows[:, None]).astype(np.float64)
        return _seed(shape_, axis, weights, mean=True)

    result = _ascend(model, layer, make_seed, rows, pre, size, ascent, seed, progress)
    return dataclasses.replace(result, kind="channel", layer=layer, settings={**result.settings, "batch": batch})


# ---------------------------------------------------------------------------- the ascent


def _indices(value: Indices, what: str) -> np.ndarray:
    a = np.atleast_1d(np.asarray(value))
    if a.size == 0 or a.ndim != 1 or a.dtype.kind not in "iu":
        raise OnnxvizError(f"{what} must be an index or a list of indices, not {value!r}")
    if (a < 0).any():
        raise OnnxvizError(f"{what} indices must be >= 0, got {a.tolist()}")
    return a.astype(np.int64)


def _count(batch: int) -> int:
    if int(batch) < 1:
        raise OnnxvizError(f"batch (starts per target) must be at least 1, not {batch}")
    return int(batch)


def _seed(shape: tuple, axis: int, weights: np.ndarray, mean: bool) -> np.ndarray:
    """(N, ...) seed: ``weights`` (N, K) along ``axis``, the same at every position of the other axes
    (divided by their count for a mean)."""
    view = [len(weights)] + [1] * (len(shape) - 1)
    view[axis] = shape[axis]
    seed = np.broadcast_to(weights.reshape(view), shape)
    if mean:
        seed = seed / (np.prod(shape[1:]) / shape[axis])
    return np.ascontiguousarray(seed, dtype=np.float32)


def _valued(seed: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Σ seed · y per row: the objective's value."""
    return np.einsum("ni,ni->n", seed.reshape(len(seed), -1), y.reshape(len(y), -1).astype(np.float32))


REDIRECT_STEPS = 16  # steps on the redirected rules after an image's gradient came out all zero


def gradient_model(model, height: int, width: int, tensor: str, rules=STANDARD):
    """The gradient graph of ``seed · tensor`` with respect to the input, cached per size and rule set."""
    def build():
        proto = model.specialized(height, width)
        check_differentiable(proto)
        return gradient_graph(proto, tensor, [model.input.name], rules, extra_outputs=[tensor])

    return model.derived(("classvis", height, width, tensor, rules.name, id(rules)), build, fixed_shapes=True)


def _size(model, pre: Preprocess, size) -> tuple[int, int]:
    spec = model.input
    if size is not None:
        h, w = (size, size) if np.isscalar(size) else tuple(size)
    else:
        h, w = spec.height or (pre.size and pre.size[0]), spec.width or (pre.size and pre.size[1])
    if not h or not w:
        raise OnnxvizError(f"model input {spec.name!r} has a dynamic size: give size=(height, width) (--size)")
    if (spec.height and h != spec.height) or (spec.width and w != spec.width):
        raise OnnxvizError(f"size {h}x{w} does not fit the model's fixed input {spec.height}x{spec.width}")
    return int(h), int(w)


class _Space:
    """Between pixel fractions p (NCHW, [0, 1]) and the model's normalized input."""

    def __init__(self, model, pre: Preprocess):
        spec = model.input
        dtype = np.dtype(spec.dtype)
        if dtype.kind != "f":
            raise OnnxvizError(f"model input {spec.name!r} takes {dtype} values; gradient ascent needs a "
                               "floating-point input")
        if spec.channels not in (1, 3):
            raise OnnxvizError(f"model input {spec.name!r} has {spec.channels} channels; images have 1 or 3")
        mean, std = pre.stats(spec.channels)
        self.spec, self.dtype, self.pre = spec, dtype, pre
        self.mean = (np.asarray(mean, np.float32) / 255).reshape(1, -1, 1, 1)
        self.std = (np.asarray(std, np.float32) / 255).reshape(1, -1, 1, 1)
        self._scale, self._offset = 1 / self.std, -self.mean / self.std  # x = (p − mean) / std
        # I of λ‖I‖²: the image centred on the dataset mean; presets that subtract nothing centre on grey
        self.center = self.mean if np.any(mean) else np.full_like(self.mean, 0.5)

    def to_input(self, p: np.ndarray) -> np.ndarray:
        x = p * self._scale
        x += self._offset
        return np.ascontiguousarray(self.spec.from_nchw(x), dtype=self.dtype)

    def gradient(self, gx: np.ndarray) -> np.ndarray:
        """d/dp from d/dx (x = (p − mean)/std)."""
        return self.spec.to_nchw(gx) / self.std

    def show(self, p: np.ndarray) -> np.ndarray:
        return deprocess(self.spec.from_nchw((p - self.mean) / self.std), self.spec, self.pre)


class _Adam:
    """Adam (Kingma & Ba, 2015) ascending in place, bias corrections folded into the step size."""

    def __init__(self, params: np.ndarray, lr: float, betas: tuple, eps: float = 1e-8):
        self.m, self.v = np.zeros_like(params), np.zeros_like(params)
        self.lr, (self.b1, self.b2), self.eps, self.t = lr, betas, eps, 0

    def ascend(self, params: np.ndarray, g: np.ndarray) -> None:
        self.t += 1
        self.m *= self.b1
        self.m += (1 - self.b1) * g
        self.v *= self.b2
        self.v += (1 - self.b2) * (g * g)
        c1, c2 = 1 - self.b1 ** self.t, np.sqrt(1 - self.b2 ** self.t)
        denom = np.sqrt(self.v)
        denom += self.eps * c2  # = (sqrt(v̂) + eps) · c2
        params += (self.lr * c2 / c1) * self.m / denom


def _ascend(model, tensor: str, make_seed: Callable, rows: np.ndarray, pre: Optional[Preprocess], size,
            ascent: Ascent, seed: int, progress: bool) -> Visualization:
    pre = pre or Preprocess()
    space = _Space(model, pre)
    h, w = _size(model, pre, size)
    n, c = len(rows), model.input.channels
    rng = np.random.default_rng(seed)
    if ascent.param == "fourier":
        param = Fourier((n, c, h, w), rng, decay=ascent.fourier_decay, bgr=bool(pre.bgr and c == 3))
    else:
        noise = rng.standard_normal((n, c, h, w)) * ascent.init_std
        param = Pixels(np.clip(space.center + noise, 0.0, 1.0).astype(np.float32))

    p = param.image()
    y0 = model.activations(space.to_input(p), [tensor])[tensor]
    seed_ = make_seed(y0.shape)
    start_score = _valued(seed_, y0)
    chunk = model._chunk(None)
    redirect = 0

    snap_at = set(np.unique(np.linspace(0, ascent.steps, ascent.snapshots).round().astype(int)).tolist()) \
        if ascent.snapshots else set()
    snap_steps, snaps = [], []
    history = np.zeros((ascent.steps, n), np.float32)
    norms = np.zeros((ascent.steps, n), np.float32)
    adam = _Adam(param.params, ascent.lr, ascent.betas)
    warps = ascent.jitter > 0 or ascent.rotate > 0 or (ascent.zoom is not None and ascent.zoom != (1.0, 1.0))
    steps = range(ascent.steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        steps = bar = tqdm(steps, desc=f"gradient ascent on {tensor}", leave=False, unit="step", mininterval=0.5)

    for t in steps:
        if t in snap_at:
            snap_steps.append(t)
            snaps.append(space.show(p))
        warp = random_warp(rng, (h, w), ascent.jitter, ascent.zoom, ascent.rotate) if warps else None
        seen = warp.apply(p) if warp is not None else p
        rules = REDIRECTED if redirect else STANDARD
        gm = gradient_model(model, h, w, tensor, rules)
        grad_name = gm.grads[model.input.name]
        values = model.run_graph(gm.proto, {model.input.name: space.to_input(seen), gm.seed: seed_},
                                 outputs=[tensor, grad_name], batch_size=chunk)
        y, gx = values[tensor], values[grad_name]
        history[t] = _valued(seed_, y)
        centred = p - space.center
        norms[t] = np.sqrt(np.einsum("nchw,nchw->n", centred, centred))
        g = space.gradient(gx)
        if warp is not None:
            g = warp.adjoint(g)
        rms = np.sqrt(np.einsum("nchw,nchw->n", g, g) / g[0].size).reshape(-1, 1, 1, 1)
        g *= np.divide(1.0, rms, out=np.zeros_like(rms), where=rms > 0)
        redirect = REDIRECT_STEPS if not redirect and (rms == 0).any() else max(redirect - 1, 0)
        if ascent.l2:
            g -= (2.0 * ascent.l2) * centred
        if ascent.tv:
            g -= ascent.tv * tv_gradient(p)
        adam.ascend(param.params, param.backward(g))
        param.project()
        if isinstance(param, Pixels) and ascent.blur_every and ascent.blur_sigma and (t + 1) % ascent.blur_every == 0:
            param.params = blur(param.params, ascent.blur_sigma)
        p = param.image()
        if bar is not None:
            bar.set_postfix(score=f"{float(history[t].mean()):.3g}", refresh=False)
    if ascent.steps in snap_at:
        snap_steps.append(ascent.steps)
        snaps.append(space.show(p))

    x = space.to_input(p)
    final = _valued(seed_, model.activations(x, [tensor])[tensor])
    norm = np.sqrt(((p - space.center) ** 2).sum(axis=(1, 2, 3)))
    empty = np.zeros((0, n, h, w, 3), np.uint8)
    return Visualization(
        x=x, image=space.show(p), target=rows, score=final, start_score=start_score,
        norm=norm.astype(np.float32), history=history, norm_history=norms,
        snapshots=np.stack(snaps) if snaps else empty, snapshot_steps=np.array(snap_steps, np.int64),
        kind="", tensor=tensor, settings={**dataclasses.asdict(ascent), "seed": seed},
    )
