"""Broken and hostile ONNX models for tests/test_hostile_inputs.py, built in code (no binary fixtures)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from builders import tiny_cnn


def _model(nodes, inputs, outputs, inits=(), opset=17, check=True) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model)
    return model


def image_input(shape=("N", 3, 8, 8), dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info("image", dtype, list(shape))


def conv_head(shape=("N", 3, 8, 8), classes=4, extra=(), weight=None, dtype=TensorProto.FLOAT, opset=17):
    """Conv → Relu → GAP → Flatten → Gemm, with ``extra`` nodes spliced between Relu and GAP (on 'relu')."""
    rng = np.random.default_rng(0)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    w = rng.standard_normal((4, shape[1], 3, 3)) * 0.5 if weight is None else weight
    inits = [numpy_helper.from_array(np.asarray(w, np_dtype), "w"),
             numpy_helper.from_array((rng.standard_normal((4, classes)) * 0.5).astype(np_dtype), "fc")]
    last = "relu"
    nodes = [helper.make_node("Conv", ["image", "w"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["conv"], ["relu"], name="relu")]
    for node in extra:
        nodes.append(node)
        last = node.output[0]
    nodes += [helper.make_node("GlobalAveragePool", [last], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
              helper.make_node("MatMul", ["flat", "fc"], ["logits"], name="fc")]
    return _model(nodes, [image_input(shape, dtype)], [helper.make_tensor_value_info("logits", dtype, ["N", classes])],
                  inits, opset=opset, check=False)


def with_weight(value: float) -> onnx.ModelProto:
    """The conv weight holds one NaN or Inf."""
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)) * 0.5
    w[1, 0, 0, 0] = value
    return conv_head(weight=w)


def if_model() -> onnx.ModelProto:
    then = helper.make_graph([helper.make_node("Identity", ["relu"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["relu"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    cond = helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True), "c"))
    branch = helper.make_node("If", ["cond"], ["branch"], then_branch=then, else_branch=other, name="choose")
    return conv_head(extra=[cond, branch])


def loop_model() -> onnx.ModelProto:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Relu", ["acc_in"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None)])
    trip = helper.make_node("Constant", [], ["trip"], value=numpy_helper.from_array(np.array(2, np.int64), "t"))
    cond = helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True), "c"))
    loop = helper.make_node("Loop", ["trip", "cond", "relu"], ["looped"], body=body, name="repeat")
    return conv_head(extra=[trip, cond, loop])


def cyclic_model() -> onnx.ModelProto:
    """relu → Add(relu, back) → back = Relu(added): a cycle no topological order can run."""
    a = helper.make_node("Add", ["relu", "back"], ["added"], name="add_cycle")
    b = helper.make_node("Relu", ["added"], ["back"], name="relu_cycle")
    return conv_head(extra=[a, b])


def qdq_model() -> onnx.ModelProto:
    """Quantize → Dequantize around the activation: what int8 QDQ exports look like."""
    scale = helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array(0.05, np.float32), "s"))
    zero = helper.make_node("Constant", [], ["z"], value=numpy_helper.from_array(np.array(0, np.int8), "z"))
    q = helper.make_node("QuantizeLinear", ["relu", "s", "z"], ["q"], name="quant")
    dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dequant")
    return conv_head(extra=[scale, zero, q, dq])


def unsupported_op_model() -> onnx.ModelProto:
    """Sin has no backward rule: the gradient path hits it."""
    return conv_head(extra=[helper.make_node("Sin", ["relu"], ["sin"], name="wave")])


def fp16_model() -> onnx.ModelProto:
    m = tiny_cnn(size=16)
    from onnx import numpy_helper as nh

    inits = [nh.from_array(nh.to_array(t).astype(np.float16), t.name) for t in m.graph.initializer]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    for vi in [*m.graph.input, *m.graph.output]:
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    return m


def constant_of_shape_bomb(side=30000) -> onnx.ModelProto:
    """974 bytes that fold to side² floats (3.6 GB at 30000) before anything runs."""
    shape = numpy_helper.from_array(np.array([side, side], np.int64), "bomb_shape")
    fill = helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"], name="bomb",
                            value=numpy_helper.from_array(np.array([0.0], np.float32), "v"))
    reduce = helper.make_node("ReduceSum", ["bomb"], ["bomb_sum"], keepdims=0, name="bomb_sum")
    add = helper.make_node("Add", ["relu", "bomb_sum"], ["shifted"], name="shift")
    m = conv_head(extra=[fill, reduce, add])
    m.graph.initializer.append(shape)
    return m
