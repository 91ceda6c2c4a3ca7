"""Loading, normalizing and running models; every bad model gets a clear error."""
import os

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from builders import light_params, save, tiny_cnn
from onnxviz.errors import ModelError, OnnxvizError
from onnxviz.model import load


@pytest.mark.parametrize("path", light_params())
def test_light_models_load_convert_and_run(path):
    model = load(path, device="cpu")
    assert model.opset >= 16 and model.original_opset == 9
    assert "converted model gives the same outputs as the original" in model.notes
    assert model.input.layout == "NCHW" and model.input.channels == 3 and model.input.size == (224, 224)
    # weights behind ConstantOfShape are folded into initializers
    assert not any(n.op_type == "ConstantOfShape" for n in model.proto.graph.node)
    x = np.random.default_rng(0).standard_normal(model.input.shape(2)).astype(np.float32)
    out = model.run(x)
    assert all(v.shape[0] == 2 for v in out.values())
    conv = next(l for l in model.layers if l.op == "Conv")
    acts = model.activations(x, [conv.name])
    assert acts[conv.name].ndim == 4 and acts[conv.name].shape[0] == 2


def test_converted_outputs_match_original_graph(tmp_path):
    """The converted model's outputs equal the original's (checked independently of load's own check)."""
    import onnxruntime as ort

    original = tiny_cnn(opset=11)
    path = save(original, tmp_path / "m.onnx")
    model = load(path, device="cpu")
    assert model.opset == 17
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    ref = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    np.testing.assert_allclose(model.run(x)["prob"], ref, rtol=1e-5, atol=1e-6)


def test_channels_last_model_is_detected_as_nhwc(tmp_path):
    model = load(save(tiny_cnn(layout="NHWC"), tmp_path / "nhwc.onnx"), device="cpu")
    assert model.input.layout == "NHWC" and model.input.channels == 3 and model.input.size == (16, 16)
    assert model.input.shape(2) == (2, 16, 16, 3)


def test_dynamic_sizes_stay_dynamic(tmp_path):
    model = load(save(tiny_cnn(dynamic=True), tmp_path / "dyn.onnx"), device="cpu")
    assert model.input.height is None and model.input.width is None
    for size in (16, 24):
        out = model.run(np.zeros((1, 3, size, size), np.float32))
        assert out["prob"].shape == (1, 4)


def test_layout_and_size_overrides(tmp_path):
    model = load(save(tiny_cnn(dynamic=True), tmp_path / "dyn.onnx"), device="cpu", height=20, width=24)
    assert model.input.size == (20, 24)


def test_initializers_listed_as_inputs_are_moved_out(tmp_path):
    m = tiny_cnn()
    for init in m.graph.initializer:
        m.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    m.ir_version = 3
    model = load(save(m, tmp_path / "ir3.onnx"), device="cpu")
    assert [i.name for i in model.proto.graph.input] == ["image"]


def test_missing_file():
    with pytest.raises(ModelError, match="no such file"):
        load("/nonexistent/model.onnx")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        load(str(p))


def test_not_onnx(tmp_path):
    p = tmp_path / "notes.onnx"
    p.write_text("this is a text file, not a protobuf\n" * 20)
    with pytest.raises(ModelError, match="not an ONNX model"):
        load(str(p))


def test_truncated(tmp_path):
    data = tiny_cnn().SerializeToString()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated"):
        load(str(p))


def test_folder_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="folder"):
        load(str(tmp_path))


def test_no_image_input(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mlp",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match="no image-like input.*x float\\[N, 4\\]"):
        load(save(m, tmp_path / "mlp.onnx"))


def test_unknown_custom_domain(tmp_path):
    m = tiny_cnn()
    m.graph.node[1].domain = "com.example.private"
    m.graph.node[1].op_type = "FancyRelu"
    m.opset_import.append(helper.make_opsetid("com.example.private", 1))
    with pytest.raises(ModelError, match="FancyRelu.*com.example.private"):
        load(save(m, tmp_path / "custom.onnx"))


def test_external_data_model(tmp_path):
    m = tiny_cnn()
    path = str(tmp_path / "ext.onnx")
    onnx.save(m, path, save_as_external_data=True, location="ext.bin", size_threshold=0)
    model = load(path, device="cpu")
    assert model.run(np.zeros((1, 3, 16, 16), np.float32))["prob"].shape == (1, 4)
    os.remove(tmp_path / "ext.bin")
    with pytest.raises(ModelError, match="external"):
        load(path)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((3, 16, 16), np.float32), "add a batch axis"),
    (np.zeros((1, 1, 16, 16), np.float32), "expected 3 channels"),
    (np.zeros((1, 3, 15, 16), np.float32), "expected 16x16"),
    (np.full((1, 3, 16, 16), np.nan, np.float32), "NaN"),
])
def test_wrong_inputs_are_refused(tmp_path, bad, message):
    model = load(save(tiny_cnn(), tmp_path / "m.onnx"), device="cpu")
    with pytest.raises(OnnxvizError, match=message):
        model.run(bad)


def test_upsample_converted_to_resize_keeps_asymmetric_semantics(tmp_path):
    """version_converter drops Upsample's asymmetric coordinates; load must restore them."""
    import onnxruntime as ort

    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    w = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Upsample", ["image", "scales"], ["up"], mode="linear"),
             helper.make_node("Conv", ["up", "w"], ["y"])]
    g = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [scales, w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)])
    m.ir_version = 4
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    model = load(save(m, tmp_path / "up.onnx"), device="cpu")
    assert model.opset == 17
    np.testing.assert_allclose(model.run(x)["y"], ref, rtol=1e-6)


def test_batch_one_export_gets_a_dynamic_batch(tmp_path):
    """Exported with batch 1 and a Reshape to [1, -1]: onnxviz frees the batch and checks it."""
    m = tiny_cnn(opset=11)
    flat = next(n for n in m.graph.node if n.op_type == "Flatten")
    flat.op_type = "Reshape"
    flat.input.append("shape")
    del flat.attribute[:]
    m.graph.initializer.append(numpy_helper.from_array(np.array([1, -1], np.int64), "shape"))
    for vi in (m.graph.input[0], m.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    m.ir_version = 3  # old exporters: IR 3, where initializers must also be inputs
    for init in m.graph.initializer:
        m.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    model = load(save(m, tmp_path / "b1.onnx"), device="cpu")
    assert model.input.batch is None and model.opset == 17
    assert any("batch dimension dynamic" in n for n in model.notes)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    both = model.run(x)["prob"]
    singles = np.concatenate([model.run(x[i:i + 1])["prob"] for i in range(3)])
    np.testing.assert_allclose(both, singles, rtol=1e-5, atol=1e-7)


def test_derived_graphs_are_built_once_and_run_on_their_own_session(tmp_path):
    """Model.derived keeps one value per key; each derived graph gets one session, named after its
    key, and run_graph refuses a graph the model did not derive (its session could be stale)."""
    from onnxviz.graph.surgery import expose

    model = load(save(tiny_cnn(), tmp_path / "tiny.onnx"), device="cpu")
    builds = []

    def build():
        builds.append(1)
        return expose(model.proto, ["relu1"], keep_outputs=False)

    graph = model.derived(("mine", "relu1"), build)
    assert model.derived(("mine", "relu1"), build) is graph and len(builds) == 1
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    keys = []
    real = model.runtime.run
    model.runtime.run = lambda *a, **k: keys.append(k["key"]) or real(*a, **k)
    got = model.run_graph(graph, model.feeds(x), outputs=["relu1"])["relu1"]
    np.testing.assert_array_equal(got, model.activations(x, ["relu1"])["relu1"])
    assert keys[0] == "mine|relu1" and keys[1].startswith("expose:")
    with pytest.raises(OnnxvizError, match="Model.derived"):
        model.run_graph(expose(model.proto, ["relu1"], keep_outputs=False), model.feeds(x))
    model.forget()  # frees the derived graphs; a graph of the old store no longer runs
    with pytest.raises(OnnxvizError, match="Model.derived"):
        model.run_graph(graph, model.feeds(x))
    assert model.derived(("mine", "relu1"), build) is not graph and len(builds) == 2
    np.testing.assert_array_equal(model.run(x)["prob"], real(model.proto, model.feeds(x))["prob"])


def test_fixed_shape_sessions_are_specialized_per_chunk_size(tmp_path):
    """A derived graph marked fixed_shapes runs each chunk on a session whose symbolic dims are
    set to that chunk's sizes (a batch of 3 in chunks of 2: sizes 2 and 1), keeps at most
    SHAPE_VARIANTS of them, and gives the same numbers as the dynamic session."""
    from onnxviz.graph.surgery import expose
    from onnxviz.runtime import SHAPE_VARIANTS

    model = load(save(tiny_cnn(), tmp_path / "tiny.onnx"), device="cpu")
    graph = model.derived(("fixed", "relu1"), lambda: expose(model.proto, ["relu1"], keep_outputs=False),
                          fixed_shapes=True)
    created = []
    real = model.runtime._create
    model.runtime._create = lambda m, early=False, sizes=(), planned=True: (
        m is graph and created.append(dict(sizes))) or real(m, early, sizes, planned)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    got = model.run_graph(graph, model.feeds(x), outputs=["relu1"], batch_size=2)["relu1"]
    np.testing.assert_allclose(got, model.activations(x, ["relu1"])["relu1"], rtol=1e-6, atol=1e-6)
    batch = model.proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert [c[batch] for c in created] == [2, 1]
    model.run_graph(graph, model.feeds(x), outputs=["relu1"], batch_size=2)
    assert len(created) == 2  # both sizes cached
    model.run_graph(graph, model.feeds(x[:1].repeat(5, axis=0)), outputs=["relu1"])
    assert [c[batch] for c in created] == [2, 1, 5]
    assert len(model.runtime._sessions["fixed|relu1"]) == SHAPE_VARIANTS


@pytest.mark.parametrize("attr, value", [("value_float", 0.5), ("value_floats", [0.5, 2.0, 1.0])])
def test_constant_number_attributes_fold_as_float32(tmp_path, attr, value):
    """Constant(value_float[s]) is a float32 tensor by the operator's definition; folded as
    float64 (numpy's default) it made every such model fail to load with a Mul type error."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Constant", [], ["c"], **{attr: value}),
             helper.make_node("Reshape", ["c", "shp"], ["c4"]),
             helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["z", "c4"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["y"])]
    shape = [1, 3, 1, 1] if attr == "value_floats" else [1]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.array(shape, np.int64), "shp"),
         numpy_helper.from_array(rng.random((3, 3, 3, 3), np.float32), "w"),
         numpy_helper.from_array(rng.random((3, 4), np.float32), "fw")])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "c.onnx")
    model = load(path, device="cpu")
    x = rng.random((2, 3, 16, 16), np.float32)
    assert model.run(x)["y"].dtype == np.float32
    from onnxviz.graph.view import constant_values
    assert constant_values(onnx.load(path).graph)["c"].dtype == np.float32


def _weighty_model(listed: bool) -> onnx.ModelProto:
    """Conv weights over the size the light inference strips, an int64 Reshape target (a value
    inference must read), a small float bias it keeps; ``listed``: weights also in graph.input (IR 3)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 3, 5, 5)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((8, 16, 3, 3)).astype(np.float64).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[2, 2, 2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2]),
             helper.make_node("Reshape", ["c2", "shape"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 12, 12])]
    if listed:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("listed", [False, True])
def test_shape_inference_without_weights_equals_onnx_own(listed):
    from onnxviz.loading import WEIGHT_ELEMENTS, _without_weights, infer_shapes

    model = _weighty_model(listed)
    light, stripped = _without_weights(model)
    assert stripped == (set() if listed else {"w1", "w2"})  # listed weights are inputs already: left alone
    assert all(int(np.prod(t.dims)) < WEIGHT_ELEMENTS for t in light.graph.initializer) or listed
    before = model.SerializeToString()
    ours = infer_shapes(model)
    assert model.SerializeToString() == before  # the argument is not modified
    assert ours.SerializeToString() == onnx.shape_inference.infer_shapes(model, data_prop=True).SerializeToString()
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in ours.graph.value_info}
    assert shapes["c2"] == ["N", 8, 5, 5] and shapes["r1"] == ["N", 16, 12, 12]


def test_failed_shape_inference_returns_the_model_with_its_weights(monkeypatch):
    from onnxviz.loading import infer_shapes

    model = _weighty_model(False)

    def fail(*args, **kwargs):
        raise RuntimeError("inference broke")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", fail)
    assert infer_shapes(model).SerializeToString() == model.SerializeToString()
    edited = infer_shapes(model, edit=lambda m: m.graph.input[0].type.tensor_type.shape.dim[2].CopyFrom(
        onnx.TensorShapeProto.Dimension(dim_value=20)))
    assert edited.graph.input[0].type.tensor_type.shape.dim[2].dim_value == 20
    assert [numpy_helper.to_array(t).tobytes() for t in edited.graph.initializer] == \
        [numpy_helper.to_array(t).tobytes() for t in model.graph.initializer]
    assert model.graph.input[0].type.tensor_type.shape.dim[2].dim_value == 12  # the argument untouched


def test_gradient_graph_reads_only_the_constants_its_rules_ask_for(monkeypatch):
    """Building a gradient graph must not copy every weight into numpy (ConstantValues is lazy),
    and pruning must not rebuild the initializer list (it copied every kept weight)."""
    import onnxviz.graph.view as view
    from onnxviz.autodiff import gradient_graph, ruleset
    from onnxviz.graph.surgery import prune

    read = []
    real = view.numpy_helper.to_array
    monkeypatch.setattr(view.numpy_helper, "to_array", lambda t, *a: read.append(t.name) or real(t, *a))
    model = onnx.shape_inference.infer_shapes(_weighty_model(False))
    gm = gradient_graph(model, "y", ["x"], ruleset("standard"))
    assert "w1" not in read and "w2" not in read
    graph = gm.proto.graph
    assert {t.name for t in graph.initializer} >= {"w1", "w2"}

    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    del pruned.graph.output[:]
    pruned.graph.output.append(helper.make_tensor_value_info("r1", onnx.TensorProto.FLOAT, None))
    kept = prune(pruned)
    assert [t.name for t in kept.graph.initializer] == ["w1", "b1"]  # w2 and shape dropped, order kept


def test_graphs_over_protobufs_limit_run_from_external_data(monkeypatch):
    """Over 2 GB a graph cannot be serialized: the runtime saves it with external weights and
    loads that (the limit lowered here so a small model takes the path); same outputs."""
    import onnxviz.runtime as runtime

    model = _weighty_model(False)
    x = np.random.default_rng(1).standard_normal((2, 3, 12, 12)).astype(np.float32)
    plain = runtime.Runtime("cpu", threads=1).run(model, {"x": x})["y"]
    monkeypatch.setattr(runtime, "_TWO_GB", 1000)
    assert runtime._serialized(model) is None
    big = runtime.Runtime("cpu", threads=1)
    np.testing.assert_array_equal(big.run(model, {"x": x})["y"], plain)
