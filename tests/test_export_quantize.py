"""FP16 conversion fixes on small hand-built graphs (no export needed): blocked chains stay FP32 end to end."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lofi_lora.export import quantize
from lofi_lora.export.onnx_export import save_onnx


def rms_graph() -> onnx.ModelProto:
    """y = x * rsqrt(mean(x^2)) @ W: RMSNorm's x^2 overflows fp16 for |x| > 256 unless Pow and ReduceMean stay FP32."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["sq"], name="pow"),
        helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], name="mean", keepdims=1),
        helper.make_node("Sqrt", ["ms"], ["rms"], name="sqrt"),
        helper.make_node("Div", ["x", "rms"], ["normed"], name="div"),
        helper.make_node("MatMul", ["normed", "w"], ["y"], name="proj"),
    ]
    graph = helper.make_graph(nodes, "rms", [x], [y], initializer=[w, two, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model)  # value_info on every tensor, as dynamo exports carry


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_blocked_chain_has_no_fp16_round_trip_and_stays_finite(tmp_path):
    src = tmp_path / "fp32.onnx"
    save_onnx(rms_graph(), src)
    x = np.full((2, 8), 400.0, np.float32)  # 400^2 = 1.6e5 > fp16 max 65504
    ref = run(rms_graph(), x)

    from onnxruntime.transformers.float16 import convert_float_to_float16

    naive = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, disable_shape_infer=True,
                                     op_block_list=["Pow", "ReduceMean"])
    quantize.topological_sort(naive)
    # the converter's Cast(fp16) between Pow and ReduceMean overflows: rms = inf, output 0
    assert not np.allclose(run(naive, x), ref, rtol=0.1, atol=0.1)

    dst = tmp_path / "fp16.onnx"
    quantize.to_fp16(src, dst, ["Pow", "ReduceMean"])
    fixed = onnx.load(str(dst))
    got = run(fixed, x)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, rtol=2e-2, atol=2e-2)
    w_type = {i.name: i.data_type for i in fixed.graph.initializer}["w"]
    assert w_type == TensorProto.FLOAT16, "weights outside the block list are fp16"


def test_topological_sort_and_dedupe():
    model = rms_graph()
    nodes = list(model.graph.node)
    dup = helper.make_node("Sqrt", ["ms"], ["rms"], name="sqrt_again")
    del model.graph.node[:]
    model.graph.node.extend(list(reversed(nodes)) + [dup])
    assert quantize.dedupe_nodes(model) == 1
    quantize.topological_sort(model)
    assert [n.name for n in model.graph.node] == ["pow", "mean", "sqrt", "div", "proj"]
    onnx.checker.check_model(model)


def test_topological_sort_rejects_cycles():
    model = rms_graph()
    model.graph.node[0].input[0] = "y"  # pow now depends on the last node: a cycle
    with pytest.raises(RuntimeError, match="unsorted"):
        quantize.topological_sort(model)


def saturating_matmul_graph(w: np.ndarray) -> onnx.ModelProto:
    """y = x @ W, the shape of every projection the INT8 export quantises."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", w.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", w.shape[1]])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")], "mm", [x], [y],
                              initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return model


def test_int8_matmul_stays_exact_where_the_integer_gemm_would_saturate(tmp_path):
    """Activations near the top of uint8 times weights near +-127 overflow the int16 pair sums of ORT's u8s8 GEMM on
    x86 CPUs without VNNI (the output then halves); 7-bit weights keep it exact on every CPU."""
    rng = np.random.default_rng(0)
    w = (rng.uniform(0.5, 1.0, (64, 8)) * np.where(np.arange(8) % 2, 1.0, -1.0)).astype(np.float32)
    x = rng.uniform(0.9, 1.0, (4, 64)).astype(np.float32)  # dynamic range [0, 1]: uint8 codes 230..255
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    save_onnx(saturating_matmul_graph(w), src)
    quantize.to_int8(src, dst)
    model = onnx.load(str(dst))
    assert "MatMulInteger" in {n.op_type for n in model.graph.node}
    assert quantize.int8_weight_abs_max(dst) <= quantize.INT8_WEIGHT_ABS_MAX
    got, ref = run(model, x), x @ w
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.01
