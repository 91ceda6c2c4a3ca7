"""Whole-model gradient checks against the float64 referee (onnxviz.checkgrad).

Input gradients and last-conv (first Grad-CAM candidate) gradients of the nine
onnx/backend/test/data/light models, with random weights, agree with float64 central
differences along random directions; so do a channels-last, a PRelu and a dynamic-size
model. Guided backprop and deconvnet run on every light model. Known-wrong backward rules
(MaxUnpool for MaxPool, the kernel-area divisor for AveragePool, ``output_shape`` on the
Conv adjoint) fail the same check.

Agreement is measured per direction v as |<g, v> - fd| / max(|fd|, |<g, v>|, ||g||):
for v ~ N(0, I), <g, v> has spread ||g||, so this is the error relative to the typical
directional derivative. It differs from checkgrad's own ``error`` only for directions
nearly orthogonal to g, where float32 rounding of the analytic side, not the rules,
dominates the relative error. Wrong rules give errors of 1e-2 to 1e1 on this scale.

The light models run at 224x224 through onnx.reference (a few seconds per evaluation of
the larger ones): the six slowest are marked ``slow``; ``-m "not slow"`` keeps the file
to about a minute and a half on two cores.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxviz
from builders import LIGHT_MODELS, randomized, save, tiny_cnn
from onnxviz.autodiff import DECONVNET, GUIDED, STANDARD
from onnxviz.checkgrad import check_gradients, format_rows
from onnxviz.graph.analysis import gradcam_candidates
from onnxviz.graph.double import Reference
from onnxviz.graph.surgery import expose

TOL = 1e-3
# Input gradients of deep random-weight networks: a ReLU unit whose pre-activation lies within
# float32 rounding of 0 has a different mask in the float32 graph than in the float64 referee.
# Bisection on Inception-v2 found every rule exact layer by layer (<1e-6) and one such unit of
# 25,088 in block 4a moving the input's directional derivative by ~1%; wrong rules give 1e-1+
# (test_known_wrong_rules_fail_the_check).
DEEP_INPUT_TOL = 3e-2
LIGHT = {os.path.basename(p)[len("light_"):-len(".onnx")]: p for p in LIGHT_MODELS}
# Pixels ~N(0, SCALE^2), so that checkgrad's steps (1e-6, 1e-7) are 1e-7 and 1e-8 of the signal:
# a ReLU network at 224x224 has millions of units, and larger relative steps move enough of them
# across their kink for central differences to miss by 1e-2 along most directions (ResNet-50).
SCALE = 10.0
# No jitter: it is for quantized images' exact ties; Gaussian pixels have none. And a jittered
# point can put two float32 values of a max-pool window within rounding of each other, where
# onnxruntime's argmax and the float64 referee's differ: Inception-v2 then misses by 1e-2 in
# every direction (one flipped window of 50176 at its last pool), without a rule being wrong.
JITTER = 0.0
SLOW = {"bvlc_alexnet", "vgg19", "zfnet512", "densenet121", "inception_v1", "inception_v2"}


def light_params():
    return [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else [], id=name) for name in sorted(LIGHT)]


# ---------------------------------------------------------------------------- helpers


def keep_signal(model: onnx.ModelProto, seed: int = 1) -> onnx.ModelProto:
    """Redraw BatchNorm scales so that the input stays visible in the logits, in place.

    ``builders.randomized`` draws BN scales ~0.1 N(0, 1) and [C,1,1] constants He-scaled: each
    BN then shrinks the signal tenfold against fixed shifts, and the logits stop depending on
    the input (Inception-v2's input gradient is ~1e-12; checkgrad's steps of 1e-7 resolve
    derivatives down to ~1e-4 of the score only). Here BN scales are ~U(0.2, 0.6), which
    keeps residual sums (ResNet, ShuffleNet) from doubling per block; where a per-channel
    Mul and Add follow the BN (Inception-v2, DenseNet: plain chains, nothing to add the
    signal back) the BN and the Mul scales are ~U(0.5, 1.5) and the Add's shifts ~0.1 N(0, 1).
    """
    rng = np.random.default_rng(seed)
    index = {t.name: k for k, t in enumerate(model.graph.initializer)}
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def redraw(name, draw):
        if name in index:
            a = numpy_helper.to_array(model.graph.initializer[index[name]])
            if a.dtype == np.float32 and a.size > 1 and sum(d > 1 for d in a.shape) == 1:
                model.graph.initializer[index[name]].CopyFrom(numpy_helper.from_array(
                    draw(a.shape).astype(np.float32), name))

    def unit(shape):
        return rng.uniform(0.5, 1.5, shape)

    def shift(shape):
        return rng.standard_normal(shape) * 0.1

    for bn in [n for n in model.graph.node if n.op_type == "BatchNormalization"]:
        muls = [n for n in consumers.get(bn.output[0], []) if n.op_type == "Mul"]
        redraw(bn.input[1], unit if muls else (lambda shape: rng.uniform(0.2, 0.6, shape)))
        for mul in muls:
            for name in mul.input:
                redraw(name, unit)
            for add in consumers.get(mul.output[0], []):
                if add.op_type == "Add":
                    for name in add.input:
                        redraw(name, shift)
    return model


def light_model_proto(name: str) -> onnx.ModelProto:
    """A light model with random weights that keep the input visible in the logits."""
    return keep_signal(randomized(onnx.load(LIGHT[name])))


def directional_errors(rows, grads) -> list:
    """(row, error relative to max(|fd|, |analytic|, ||g||)) for each conclusive row (not "kink")."""
    out = []
    for r in rows:
        if r.status == "kink":
            continue
        norm = float(np.linalg.norm(np.asarray(grads[r.tensor], np.float64)))
        out.append((r, abs(r.analytic - r.numeric) / max(abs(r.numeric), abs(r.analytic), norm, 1e-30)))
    return out


def assert_gradients_agree(model, x, layers, directions=2, rules=None, label="", input_tol=TOL,
                           input_may_be_inconclusive=False):
    """One gradient call for the input and ``layers``; check_gradients' conclusive rows all agree to TOL.

    A "kink" row (every direction tried straddled a non-differentiable point) is inconclusive;
    each tensor needs a conclusive row with a non-zero derivative, else the referee saw nothing.
    """
    checked = model if rules is None else WithRules(model, rules)
    wrt = ["input", *layers]
    g = checked.gradients(x, wrt=wrt)
    assert g["input"].shape == x.shape
    for name in wrt:
        assert np.isfinite(g[name]).all(), f"{label}: non-finite gradient for {name}"
        assert np.abs(g[name]).max() > 0, f"{label}: zero gradient for {name}"
    rows = check_gradients(checked, x, layers=layers, directions=directions, tolerance=TOL, jitter=JITTER)
    assert len(rows) == directions * len(wrt)
    report = f"{label}\n{format_rows(rows)}"
    errors = directional_errors(rows, g)
    for name in wrt:
        if name == "input" and input_may_be_inconclusive:
            continue
        assert any(r.tensor == name and r.numeric != 0 for r, _ in errors), f"referee inconclusive for {name}\n{report}"
    worst = max((e for r, e in errors if r.tensor != "input"), default=0.0)
    assert worst <= TOL, f"gradient error {worst:.3g} > {TOL}\n{report}"
    worst_input = max((e for r, e in errors if r.tensor == "input"), default=0.0)
    assert worst_input <= input_tol, f"input gradient error {worst_input:.3g} > {input_tol}\n{report}"
    return rows, max(worst, worst_input)


class WithRules:
    """A Model whose gradients come from another rule set (check_gradients takes the model only)."""

    def __init__(self, model, rules):
        self._model, self._rules = model, rules

    def __getattr__(self, name):
        return getattr(self._model, name)

    def gradients(self, *args, **kwargs):
        return self._model.gradients(*args, rules=self._rules, **kwargs)


def worst_error(model, x, layers, rules, directions=2) -> float:
    """The largest directional error of ``rules``' gradients (no assertion)."""
    checked = WithRules(model, rules)
    g = checked.gradients(x, wrt=["input", *layers])
    rows = check_gradients(checked, x, layers=layers, directions=directions, tolerance=TOL, jitter=JITTER)
    errors = [e for _, e in directional_errors(rows, g)]
    return max(errors) if errors else float("nan")


@pytest.fixture(scope="module", params=light_params())
def light(request, tmp_path_factory, device):
    """(name, loaded Model with random weights); pytest runs every test of one model before
    loading the next, and drops it then (VGG-19's gradient graphs and sessions take gigabytes)."""
    name = request.param
    path = save(light_model_proto(name), tmp_path_factory.mktemp("light") / f"{name}.onnx")
    yield name, onnxviz.load(path, device=device)


def image(model, seed=11, height=None, width=None, batch=1, scale=1.0):
    """N(0, scale^2) pixels in the model's layout.

    Not seed 0: check_gradients draws its directions from default_rng(0), and a direction equal
    to x measures <g, x>, the score itself for a nearly homogeneous network (a 60-sigma outlier).
    """
    spec = model.input
    shape = spec.shape(batch, height or spec.height, width or spec.width)
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def branch_flips(model, x) -> int:
    """Max-pool windows and ReLUs that take a different branch in float32 (onnxruntime) than in float64.

    The analytic side differentiates the float32 network, the referee the float64 one; where
    two values of a pool window lie within float32 rounding of each other, or a ReLU input
    within rounding of 0, the two pick different branches and their gradients differ by up
    to 1e-2 (Inception-v1 and v2 at 224x224: a few windows of 1e5 per pool), however right the
    rules are. Windows tied exactly in float64 (dead ReLUs under the pool) do not count.
    """
    pools = [n for n in model.proto.graph.node if n.op_type == "MaxPool"]
    relus = [n for n in model.proto.graph.node if n.op_type == "Relu"]
    names = list(dict.fromkeys([n.input[0] for n in pools + relus]))
    h, w = model.input.hw(x)
    exposed = expose(model.specialized(h, w), names, keep_outputs=False)
    # a throwaway runtime: model.activations would keep this session (gigabytes for VGG-19)
    f32 = onnxviz.Runtime(model.runtime.device, model.runtime.threads).run(exposed, {model.input.name: x})
    f64 = Reference(exposed)({model.input.name: x})
    flips = sum(int(((f32[n.input[0]] > 0) != (f64[n.input[0]] > 0)).sum()) for n in relus)
    for node in pools:
        a = {att.name: helper.get_attribute_value(att) for att in node.attribute}
        if a.get("ceil_mode") or any(d != 1 for d in a.get("dilations", [1])) or a.get("auto_pad", b"NOTSET") != b"NOTSET":
            continue  # not among the light models' pools
        k = list(a["kernel_shape"])
        windows32, _ = _windows(f32[node.input[0]].astype(np.float64), k, a.get("strides", [1] * len(k)), a.get("pads"))
        windows64, gap = _windows(f64[node.input[0]], k, a.get("strides", [1] * len(k)), a.get("pads"))
        flips += int(((windows32.argmax(-1) != windows64.argmax(-1)) & (gap > 0)).sum())
    return flips


def _windows(t, kernel, strides, pads):
    """(windows [N, C, Ho, Wo, kh*kw], gap between the two largest values) of a 2-D max pool."""
    pads = list(pads or [0] * 4)
    padded = np.pad(t, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])], constant_values=-np.inf)
    ho = (padded.shape[2] - kernel[0]) // strides[0] + 1
    wo = (padded.shape[3] - kernel[1]) // strides[1] + 1
    win = np.stack([padded[:, :, i:i + strides[0] * ho:strides[0], j:j + strides[1] * wo:strides[1]]
                    for i in range(kernel[0]) for j in range(kernel[1])], -1)
    top = np.sort(win, -1)[..., -2:]
    return win, top[..., 1] - top[..., 0]


def generic_image(model, seed=11, scale=SCALE, tries=4):
    """The first of ``tries`` seeded images where float32 and float64 take the same branches."""
    for k in range(tries):
        x = image(model, seed=seed + k, scale=scale)
        if branch_flips(model, x) == 0:
            return x
    pytest.fail(f"every one of {tries} images puts a max-pool window or ReLU within float32 rounding of a tie")


def last_conv(model) -> str:
    return gradcam_candidates(model.proto, model.input.name, model.input.layout)[0]


# ---------------------------------------------------------------------------- light models


def test_light_model_gradients_agree_with_finite_differences(light):
    """Input gradients and last-conv gradients of the nine light models, weights randomized, agree with FD."""
    name, model = light
    x = generic_image(model)
    # Deep random-weight networks: see DEEP_INPUT_TOL; VGG-19's 224x224 input rows can all
    # straddle kinks (inconclusive), its last-conv rows must still agree to TOL.
    assert_gradients_agree(model, x, [last_conv(model)], label=name, input_tol=DEEP_INPUT_TOL,
                           input_may_be_inconclusive=True)


def test_guided_and_deconvnet_run_on_light_models(light):
    name, model = light
    x = image(model, seed=3, scale=SCALE)
    layer = last_conv(model)
    wrt = ["input", layer]
    standard = model.gradients(x, wrt=wrt)
    acts = model.activations(x, [layer])[layer]
    for rules in (GUIDED, DECONVNET):
        g = model.gradients(x, wrt=wrt, rules=rules)
        assert g["input"].shape == x.shape and g[layer].shape == acts.shape, rules.name
        assert np.isfinite(g["input"]).all() and np.abs(g["input"]).max() > 0, rules.name
        np.testing.assert_array_equal(g.target, standard.target)
        np.testing.assert_allclose(g.score, standard.score, rtol=1e-6)
        diff = np.abs(g["input"] - standard["input"]).max() / np.abs(standard["input"]).max()
        assert diff > 1e-2, f"{rules.name} input gradient equals the standard one on {name} (rel. diff {diff:.2g})"


# ---------------------------------------------------------------------------- small models


@pytest.fixture
def tiny(tmp_path, device):
    def load(**kwargs):
        return onnxviz.load(save(tiny_cnn(**kwargs), tmp_path / "tiny.onnx"), device=device)
    return load


@pytest.mark.parametrize("kwargs", [dict(layout="NHWC"), dict(prelu=True), dict(softmax=False)],
                         ids=["channels_last", "prelu", "no_softmax"])
def test_small_models_agree(kwargs, tiny):
    model = tiny(**kwargs)
    assert model.input.layout == kwargs.get("layout", "NCHW")
    x = image(model, batch=2)
    assert_gradients_agree(model, x, [last_conv(model)], label=str(kwargs))


@pytest.mark.parametrize("size", [(16, 16), (23, 20)])
def test_dynamic_size_model_agrees_at_two_sizes(size, tiny):
    model = tiny(dynamic=True)
    assert model.input.height is None and model.input.width is None
    x = image(model, height=size[0], width=size[1])
    assert_gradients_agree(model, x, [last_conv(model)], label=f"dynamic {size}")


# ---------------------------------------------------------------------------- known-wrong rules

OVERLAP = """
<ir_version: 8, opset_import: ["" : 17]>
overlap (float[N, 3, 32, 32] image) => (float[N, 5] logits) {
    c1 = Conv <kernel_shape = [3, 3], strides = [2, 2], pads = [0, 0, 1, 1]> (image, w1, b1)
    r1 = Relu (c1)
    p1 = MaxPool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]> (r1)
    c2 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (p1, w2, b2)
    p2 = AveragePool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]> (c2)
    r2 = Relu (p2)
    gap = GlobalAveragePool (r2)
    flat = Flatten (gap)
    logits = Gemm (flat, fc, fc_b)
}
"""


def overlap_model(path) -> str:
    """Overlapping 3x3/2 pools, a count_include_pad=0 AveragePool, and a Conv padded at the end only."""
    model = onnx.parser.parse_model(OVERLAP)
    rng = np.random.default_rng(0)
    weights = {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (8, 8, 3, 3), "b2": (8,), "fc": (8, 5), "fc_b": (5,)}
    for name, shape in weights.items():
        scale = np.sqrt(2 / np.prod(shape[1:])) if len(shape) == 4 else 0.3
        model.graph.initializer.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
    onnx.checker.check_model(model, full_check=True)
    return save(model, path)


def _attrs(e, node):
    k = list(node.attr("kernel_shape"))
    return k, list(node.attr("strides", [1] * len(k))), list(node.attr("pads", [0] * 2 * len(k)))


def max_pool_unpool(e, node, dys):
    """WRONG: MaxUnpool overwrites where overlapping windows share a maximum; the sum is needed."""
    x = node.inputs[0]
    k, s, p = _attrs(e, node)
    indices = e.add_output(node.proto, 1)
    return [e.op("MaxUnpool", dys[0], indices, e.shape_of(x), kernel_shape=k, strides=s, pads=p)]


def average_pool_area(e, node, dys):
    """WRONG for count_include_pad=0: divides by the kernel area at the padded borders too."""
    x, y = node.inputs[0], node.outputs[0]
    k, s, p = _attrs(e, node)
    c, h, w = e.shape(x)[1:]  # static but for the batch
    ho, wo = e.shape(y)[2:]
    extra = [h + p[0] + p[2] - k[0] - (ho - 1) * s[0], w + p[1] + p[3] - k[1] - (wo - 1) * s[1]]
    g = e.op("Div", dys[0], e.scalar(float(np.prod(k)), like=x))
    ones = e.const(np.ones((c, 1, *k), e.dtype(x)))
    return [e.op("ConvTranspose", g, ones, group=c, strides=s, pads=p, output_padding=extra)]


def conv_output_shape(e, node, dys):
    """WRONG for pads that are not split the way ConvTranspose's output_shape splits them."""
    x, w = node.inputs[:2]
    k = list(e.shape(w)[2:])
    out = [e.op("ConvTranspose", dys[0], w, strides=list(node.attr("strides", [1] * len(k))),
                dilations=list(node.attr("dilations", [1] * len(k))), group=node.attr("group", 1),
                output_shape=list(e.shape(x)[2:]))]
    return out + [None] * (len(node.inputs) - 1)


WRONG = {
    "MaxPool-MaxUnpool": STANDARD.replace("maxunpool", MaxPool=max_pool_unpool),
    "AveragePool-kernel-area": STANDARD.replace("avgpool-area", AveragePool=average_pool_area),
    "Conv-output_shape": STANDARD.replace("conv-output-shape", Conv=conv_output_shape),
}


@pytest.fixture(scope="module")
def overlap(tmp_path_factory, device):
    return onnxviz.load(overlap_model(tmp_path_factory.mktemp("overlap") / "overlap.onnx"), device=device)


def test_standard_rules_pass_on_the_overlap_model(overlap):
    assert_gradients_agree(overlap, image(overlap, batch=2), ["r2"], label="overlap")


@pytest.mark.parametrize("variant", sorted(WRONG))
def test_known_wrong_rules_fail_the_check(variant, overlap):
    x = image(overlap, batch=2)
    g = WithRules(overlap, WRONG[variant]).gradients(x, wrt=["input"])
    assert g["input"].shape == x.shape  # the wrong rule runs; only its values are wrong
    err = worst_error(overlap, x, ["r2"], WRONG[variant])
    assert err > 10 * TOL, f"{variant}: the whole-model check did not catch it (error {err:.3g})"


@pytest.mark.slow
def test_maxunpool_fails_on_squeezenet(tmp_path, device):
    """Squeezenet's 3x3/2 max pools overlap: the MaxUnpool backward is caught on a real model too."""
    model = onnxviz.load(save(light_model_proto("squeezenet"), tmp_path / "squeezenet.onnx"), device=device)
    err = worst_error(model, image(model, scale=SCALE), [], WRONG["MaxPool-MaxUnpool"])
    assert err > 10 * TOL, f"error {err:.3g}"
