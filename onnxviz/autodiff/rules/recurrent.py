"""Backward rules for LSTM, GRU and RNN (the recurrent layers of CTC text recognizers).

The op keeps its gates and cell states to itself, so the rule recomputes them from what it
can see: every gate's pre-activation at once from X and the hidden states the op outputs
(Y, requested from the forward node when the model did not use it), then the cell states
step by step, then the backward recurrence step by step in the opposite order:

    dH_t = dY_t + dH carried from the step after;  dC_t = dC carried + dH_t · o · (1 - tanh²C_t)
    dpre = [dC·c·i(1-i), dH·tanh(C_t)·o(1-o), dC·C_prev·f(1-f), dC·i·(1-c²)]   (ONNX gate order i, o, f, c)
    dC carried = dC_t · f;  dH carried = dpre · R;  dX = dpre · W  (all steps in one MatMul)

The steps are unrolled, so the sequence length must be known when the graph is built (it is
at a fixed input size: a recognizer's T follows its input width). Both directions, batch-
first layout, biases and initial states are covered; weights get no gradient. Peepholes,
``clip``, ``input_forget``, non-default activations and ragged ``sequence_lens`` are refused
with the node's name (finite differences still work).

GRU has no cell state: with every step's previous hidden state read from Y, all gates come
at once, and only the backward recurrence is unrolled (both ``linear_before_reset`` forms).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from onnx import helper

from ...errors import OnnxvizError
from ...graph.emitter import Emitter
from ..ruleset import Node

DEFAULT_ACTIVATIONS = ("sigmoid", "tanh", "tanh")


def lstm(e: Emitter, node: Node, dys):
    return _recurrent(e, node, dys, _lstm_direction, DEFAULT_ACTIVATIONS)


def gru(e: Emitter, node: Node, dys):
    return _recurrent(e, node, dys, _gru_direction, DEFAULT_ACTIVATIONS[:2])


def rnn(e: Emitter, node: Node, dys):
    return _recurrent(e, node, dys, _rnn_direction, DEFAULT_ACTIVATIONS[1:2])


def _recurrent(e: Emitter, node: Node, dys, direction_rule, activations):
    dys = list(dys) + [None] * (3 - len(dys))
    x = node.inputs[0]
    layout = node.attr("layout", 0)
    steps = _checked_steps(e, node, layout, activations)
    directions = ["forward", "reverse"] if node.attr("direction", "forward") == "bidirectional" \
        else [node.attr("direction", "forward")]
    hidden = _hidden_size(e, node)
    y = e.add_output(node.proto, 0)
    # everything below in layout 0: X [T, B, I], Y [T, D, B, H], states [D, B, H]
    xs = _to_layout0(e, x, layout, [1, 0, 2])
    ys = _to_layout0(e, y, layout, [1, 2, 0, 3])
    dy = _to_layout0(e, dys[0], layout, [1, 2, 0, 3])
    dyh = _to_layout0(e, dys[1], layout, [1, 0, 2])
    dyc = _to_layout0(e, dys[2], layout, [1, 0, 2])
    h0 = _to_layout0(e, node.input(5), layout, [1, 0, 2])
    c0 = _to_layout0(e, node.input(6), layout, [1, 0, 2])
    dxs, dh0s, dc0s = [], [], []
    for k, direction in enumerate(directions):
        pick = lambda t, axis=0: None if t is None else e.op("Gather", t, e.const(np.array(k, np.int64)), axis=axis)  # noqa: E731
        dx, dh0, dc0 = direction_rule(e, node, k, direction == "reverse", steps, hidden, xs, pick(ys, 1),
                                  pick(dy, 1), _step_shaped(e, pick(dyh)), _step_shaped(e, pick(dyc)),
                                  _step_shaped(e, pick(h0)), _step_shaped(e, pick(c0)))
        dxs.append(dx)
        dh0s.append(dh0)
        dc0s.append(dc0)
    dx = dxs[0] if len(dxs) == 1 else e.op("Sum", *dxs)
    grads: list = [None] * len(node.inputs)
    if node.needs[0]:
        grads[0] = dx if layout == 0 else e.op("Transpose", dx, perm=[1, 0, 2])
    for i, parts in ((5, dh0s), (6, dc0s)):
        if len(node.needs) > i and node.needs[i] and parts[0] is not None:
            stacked = parts[0] if len(parts) == 1 else e.op("Concat", *parts, axis=0)  # [D, B, H]
            grads[i] = stacked if layout == 0 else e.op("Transpose", stacked, perm=[1, 0, 2])
    return grads


def _setup(e: Emitter, node: Node, k: int, reverse: bool, steps: int, hseq: str, h0: Optional[str]):
    """(W [G·H, I], R [G·H, H] of direction k, a zero state [1, B, H], the hidden state each step
    starts from in time order [T, B, H])."""
    index = e.const(np.array(k, np.int64))
    w = e.op("Gather", node.inputs[1], index, axis=0)
    r = e.op("Gather", node.inputs[2], index, axis=0)
    zero_state = e.op("ConstantOfShape", e.op("Shape", _slice(e, hseq, 0, 1)),
                      value=helper.make_tensor("zero", e.elem_type(node.inputs[0]), [1], [0]))
    h0 = h0 if h0 is not None else zero_state
    if steps == 1:
        previous = h0
    elif reverse:
        previous = e.op("Concat", _slice(e, hseq, 1, steps), h0, axis=0)
    else:
        previous = e.op("Concat", h0, _slice(e, hseq, 0, steps - 1), axis=0)
    return w, r, zero_state, previous


def _bias(e: Emitter, node: Node, k: int, start: int, stop: int) -> Optional[str]:
    """B[k][start:stop] (None without B)."""
    bias = node.input(3)
    if bias is None:
        return None
    return _slice(e, e.op("Gather", bias, e.const(np.array(k, np.int64)), axis=0), start, stop)


def _lstm_direction(e: Emitter, node: Node, k: int, reverse: bool, steps: int, hidden: int, xs: str, hseq: str,
                    dy: Optional[str], dyh: Optional[str], dyc: Optional[str], h0: Optional[str], c0: Optional[str]):
    """dX [T, B, I], dH0 and dC0 ([1, B, H]) for direction ``k`` of an LSTM."""
    w, r, zero_state, previous = _setup(e, node, k, reverse, steps, hseq, h0)
    pre = e.op("Add", e.op("MatMul", xs, e.op("Transpose", w, perm=[1, 0])),
               e.op("MatMul", previous, e.op("Transpose", r, perm=[1, 0])))
    if node.input(3) is not None:
        pre = e.op("Add", pre, e.op("Add", _bias(e, node, k, 0, 4 * hidden), _bias(e, node, k, 4 * hidden, 8 * hidden)))
    gate = lambda j: _slice(e, pre, j * hidden, (j + 1) * hidden, axis=2)  # noqa: E731
    i_all, o_all, f_all = (e.op("Sigmoid", gate(j)) for j in range(3))
    c_all = e.op("Tanh", gate(3))
    order = _order(steps, reverse)
    at = lambda t_all, t: _slice(e, t_all, t, t + 1)  # noqa: E731
    one = e.scalar(1, like=node.inputs[0])
    gates = {t: (at(i_all, t), at(o_all, t), at(f_all, t), at(c_all, t)) for t in order}  # sliced once
    cells, before = {}, {}
    state = c0
    for t in order:
        i_t, _, f_t, c_t = gates[t]
        fresh = e.op("Mul", i_t, c_t)
        before[t] = state
        state = fresh if state is None else e.op("Add", e.op("Mul", f_t, state), fresh)
        cells[t] = state
    dh_carry = dyh
    dc_carry = dyc
    dpres = {}
    for t in reversed(order):
        i_t, o_t, f_t, c_t = gates[t]
        dh = _incoming(e, dy, t, dh_carry, zero_state)
        tanh_c = e.op("Tanh", cells[t])
        dc = _plus(e, dc_carry, e.op("Mul", e.op("Mul", dh, o_t), _tanh_slope(e, tanh_c, one)))
        d_i = e.op("Mul", e.op("Mul", dc, c_t), _sigmoid_slope(e, i_t, one))
        d_o = e.op("Mul", e.op("Mul", dh, tanh_c), _sigmoid_slope(e, o_t, one))
        d_f = zero_state if before[t] is None else e.op("Mul", e.op("Mul", dc, before[t]), _sigmoid_slope(e, f_t, one))
        d_c = e.op("Mul", e.op("Mul", dc, i_t), _tanh_slope(e, c_t, one))
        dpres[t] = e.op("Concat", d_i, d_o, d_f, d_c, axis=2)  # [1, B, 4H]
        dc_carry = e.op("Mul", dc, f_t)
        dh_carry = e.op("MatMul", dpres[t], r)
    return _input_gradient(e, dpres, w), dh_carry, dc_carry


def _gru_direction(e: Emitter, node: Node, k: int, reverse: bool, steps: int, hidden: int, xs: str, hseq: str,
                   dy: Optional[str], dyh: Optional[str], dyc: Optional[str], h0: Optional[str], c0: Optional[str]):
    """dX [T, B, I], dH0 ([1, B, H]) and None for direction ``k`` of a GRU (gate order z, r, h):

    z, r = σ(X·W + H_prev·R + b);  h~ = tanh(X·W_h + (r ⊙ H_prev)·R_h + b_h)  (or, with
    linear_before_reset, X·W_h + r ⊙ (H_prev·R_h + Rb_h) + Wb_h);  H = (1 - z) ⊙ h~ + z ⊙ H_prev.
    """
    w, r, zero_state, previous = _setup(e, node, k, reverse, steps, hseq, h0)
    part = lambda t, j, stop=None: _slice(e, t, j * hidden, (stop or j + 1) * hidden, axis=0)  # noqa: E731
    w_zr, w_h, r_zr, r_h = part(w, 0, 2), part(w, 2), part(r, 0, 2), part(r, 2)
    t_ = lambda m: e.op("Transpose", m, perm=[1, 0])  # noqa: E731
    pre_zr = e.op("Add", e.op("MatMul", xs, t_(w_zr)), e.op("MatMul", previous, t_(r_zr)))
    if node.input(3) is not None:
        pre_zr = e.op("Add", pre_zr, e.op("Add", _bias(e, node, k, 0, 2 * hidden), _bias(e, node, k, 3 * hidden, 5 * hidden)))
    z_all = e.op("Sigmoid", _slice(e, pre_zr, 0, hidden, axis=2))
    r_all = e.op("Sigmoid", _slice(e, pre_zr, hidden, 2 * hidden, axis=2))
    wb_h = _bias(e, node, k, 2 * hidden, 3 * hidden)
    rb_h = _bias(e, node, k, 5 * hidden, 6 * hidden)
    linear_before_reset = bool(node.attr("linear_before_reset", 0))
    x_h = e.op("MatMul", xs, t_(w_h))
    if linear_before_reset:
        recurrent_h = _plus(e, e.op("MatMul", previous, t_(r_h)), rb_h)  # [T, B, H], r multiplies it
        pre_h = e.op("Add", x_h, e.op("Mul", r_all, recurrent_h))
    else:
        pre_h = e.op("Add", x_h, e.op("MatMul", e.op("Mul", r_all, previous), t_(r_h)))
        pre_h = _plus(e, pre_h, rb_h)
    pre_h = _plus(e, pre_h, wb_h)
    h_all = e.op("Tanh", pre_h)
    at = lambda t_all, t: _slice(e, t_all, t, t + 1)  # noqa: E731
    one = e.scalar(1, like=node.inputs[0])
    dh_carry = dyh
    dpres = {}
    for t in reversed(_order(steps, reverse)):
        z_t, r_t, h_t, prev_t = at(z_all, t), at(r_all, t), at(h_all, t), at(previous, t)
        dh = _incoming(e, dy, t, dh_carry, zero_state)
        d_pre_h = e.op("Mul", e.op("Mul", dh, e.op("Sub", one, z_t)), _tanh_slope(e, h_t, one))
        d_pre_z = e.op("Mul", e.op("Mul", dh, e.op("Sub", prev_t, h_t)), _sigmoid_slope(e, z_t, one))
        d_prev = e.op("Mul", dh, z_t)
        if linear_before_reset:
            d_r = e.op("Mul", d_pre_h, at(recurrent_h, t))
            d_prev = e.op("Add", d_prev, e.op("MatMul", e.op("Mul", d_pre_h, r_t), r_h))
        else:
            d_reset = e.op("MatMul", d_pre_h, r_h)  # d(r ⊙ H_prev)
            d_r = e.op("Mul", d_reset, prev_t)
            d_prev = e.op("Add", d_prev, e.op("Mul", d_reset, r_t))
        d_pre_r = e.op("Mul", d_r, _sigmoid_slope(e, r_t, one))
        d_zr = e.op("Concat", d_pre_z, d_pre_r, axis=2)
        dpres[t] = e.op("Concat", d_zr, d_pre_h, axis=2)  # [1, B, 3H]
        dh_carry = e.op("Add", d_prev, e.op("MatMul", d_zr, r_zr))
    return _input_gradient(e, dpres, w), dh_carry, None


def _rnn_direction(e: Emitter, node: Node, k: int, reverse: bool, steps: int, hidden: int, xs: str, hseq: str,
                   dy: Optional[str], dyh: Optional[str], dyc: Optional[str], h0: Optional[str], c0: Optional[str]):
    """dX [T, B, I], dH0 ([1, B, H]) and None for direction ``k`` of a plain RNN:
    H = tanh(X·W + H_prev·R + b), so dpre = dH ⊙ (1 - H²) with H read from Y itself."""
    w, r, zero_state, _ = _setup(e, node, k, reverse, steps, hseq, h0)
    one = e.scalar(1, like=node.inputs[0])
    dh_carry = dyh
    dpres = {}
    for t in reversed(_order(steps, reverse)):
        dh = _incoming(e, dy, t, dh_carry, zero_state)
        dpres[t] = e.op("Mul", dh, _tanh_slope(e, _slice(e, hseq, t, t + 1), one))
        dh_carry = e.op("MatMul", dpres[t], r)
    return _input_gradient(e, dpres, w), dh_carry, None


def _order(steps: int, reverse: bool) -> list:
    """The time steps in the order the direction processes them."""
    return list(range(steps - 1, -1, -1)) if reverse else list(range(steps))


def _incoming(e: Emitter, dy: Optional[str], t: int, carry: Optional[str], zero: str) -> str:
    """dH_t: the output's gradient at step t plus what the step after carried back (zero if neither)."""
    dh = _plus(e, None if dy is None else _slice(e, dy, t, t + 1), carry)
    return dh if dh is not None else zero


def _input_gradient(e: Emitter, dpres: dict, w: str) -> str:
    """dX [T, B, I] = the steps' pre-activation gradients, in time order, times W (one MatMul)."""
    steps = len(dpres)
    dpre = dpres[0] if steps == 1 else e.op("Concat", *[dpres[t] for t in range(steps)], axis=0)
    return e.op("MatMul", dpre, w)


def _sigmoid_slope(e: Emitter, s: str, one: str) -> str:
    """σ' from σ's value: s (1 - s)."""
    return e.op("Mul", s, e.op("Sub", one, s))


def _tanh_slope(e: Emitter, t: str, one: str) -> str:
    """tanh' from tanh's value: 1 - t²."""
    return e.op("Sub", one, e.op("Mul", t, t))


def _plus(e: Emitter, a: Optional[str], b: Optional[str]) -> Optional[str]:
    if a is None or b is None:
        return a if b is None else b
    return e.op("Add", a, b)


def _slice(e: Emitter, t: str, start: int, stop: int, axis: int = 0) -> str:
    return e.op("Slice", t, e.ints([start]), e.ints([stop]), e.ints([axis]))


def _step_shaped(e: Emitter, t: Optional[str]) -> Optional[str]:
    """[B, H] -> [1, B, H]: the shape of one step's slice."""
    return None if t is None else e.unsqueeze(t, [0])


def _to_layout0(e: Emitter, t: Optional[str], layout: int, perm: list) -> Optional[str]:
    return t if t is None or layout == 0 else e.op("Transpose", t, perm=perm)


def _hidden_size(e: Emitter, node: Node) -> int:
    hidden = node.attr("hidden_size")
    if hidden is None:
        rs = e.shape(node.inputs[2])
        hidden = rs[2] if rs is not None and isinstance(rs[2], int) else None
    if hidden is None:
        raise OnnxvizError(f"{node.op} node {node.name!r}: its hidden size is unknown (no hidden_size, R's shape not "
                           "inferred); its gradient needs it")
    return int(hidden)


def _checked_steps(e: Emitter, node: Node, layout: int, defaults: tuple) -> int:
    """The sequence length; refuses what the rule does not cover, naming the node and the fallback."""
    where = f"{node.op} node {node.name!r}"
    fallback = "use finite differences (--grad fd on cam and saliency, grad='fd' in the API)"
    peepholes = node.input(7) if node.op == "LSTM" else None
    if peepholes is not None:
        value = e.value(peepholes)
        if value is None or np.any(value):
            raise OnnxvizError(f"{where} has peephole weights (input P): onnxviz has no gradient rule for them; "
                               f"{fallback}")
    if node.attr("clip") is not None:
        raise OnnxvizError(f"{where} clips its cell input (clip={node.attr('clip')}): no gradient rule; {fallback}")
    if node.attr("input_forget", 0):
        raise OnnxvizError(f"{where} couples its input and forget gates (input_forget=1): no gradient rule; "
                           f"{fallback}")
    activations = node.attr("activations")
    if activations is not None:
        names = tuple(a.lower() for a in activations)
        n = len(defaults)
        if any(names[j:j + n] != defaults for j in range(0, len(names), n)):
            raise OnnxvizError(f"{where} uses activations {list(activations)}: only the default "
                               f"{', '.join(a.capitalize() for a in defaults)} have a gradient rule; {fallback}")
    shape = e.shape(node.inputs[0])
    steps = shape[1 if layout else 0] if shape is not None and len(shape) == 3 else None
    if not isinstance(steps, int):
        raise OnnxvizError(f"{where}: its gradient is unrolled over the sequence, whose length is not known when "
                           "the graph is built; give the model a fixed input size (or " + fallback + ")")
    lengths = node.input(4)
    if lengths is not None:
        value = e.value(lengths)
        if value is None or np.any(np.asarray(value) != steps):
            raise OnnxvizError(f"{where} takes per-sequence lengths (sequence_lens): its gradient rule covers "
                               f"full-length sequences only; {fallback}")
    return steps


RULES = {"LSTM": lstm, "GRU": gru, "RNN": rnn}
