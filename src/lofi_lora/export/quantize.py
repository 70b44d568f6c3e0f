"""FP32 ONNX -> FP16 / INT8 (dynamic, per-channel, 7-bit weights) / INT4 (MatMulNBits), with onnxruntime's own tools.

The source is the folded FP32 export (weights are initializers, no initializer value_info). Modules listed in
`exclude_modules` (first/last projections: most of the INT4 error in research note onnx-export.md §5) stay
unquantized (FP32 weights, or FP16 ones in INT4 with `keep_dtype`); their nodes are found through the exporter's
`pkg.torch.onnx.name_scopes` node metadata.
"""
from __future__ import annotations

import ast
import contextlib
import logging
from pathlib import Path
from typing import Iterable, Sequence

from lofi_lora.core.errors import ConfigError
from lofi_lora.export.onnx_export import check_onnx, initializer_bytes, save_onnx

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_ort_logs():
    """onnxruntime's quantizers log one INFO line per node, partly on the root logger; keep warnings only."""
    names = ["", "onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _scopes(node) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                return list(ast.literal_eval(prop.value))
            except (ValueError, SyntaxError):
                return []
    return []


def nodes_in_modules(proto, modules: Iterable[str], op_types: Sequence[str] = ("MatMul", "Gemm")) -> list[str]:
    """Names of `op_types` nodes that the exporter traced inside any module named in `modules`.

    A module matches a scope equal to it or ending in `.<module>` (the export wraps the transformer).
    """
    wanted = [m for m in modules if m]
    found = []
    for node in proto.graph.node:
        if node.op_type not in op_types:
            continue
        if any(s == m or s.endswith("." + m) for s in _scopes(node) for m in wanted):
            found.append(node.name)
    return found


def _load(path: Path, weights: bool = True):
    import onnx

    return onnx.load(str(path), load_external_data=weights)


def to_fp16(src: Path, dst: Path, op_block_list: Sequence[str] = ()) -> list[Path]:
    """FP16 weights and compute, FP32 inputs/outputs; `op_block_list` op types stay FP32.

    Module exclusion is not offered here: ORT's converter (shape inference off, as dynamo graphs need) leaves
    a blocked MatMul's FP32 output feeding the FP16 bias Add, an invalid graph.

    Chains of blocked nodes otherwise pass through a Cast(fp16) -> Cast(fp32) round trip between each pair, which
    overflows exactly where blocking was meant to help; those round trips are rewired away.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    proto = _load(src)
    converted = convert_float_to_float16(
        proto, keep_io_types=True, disable_shape_infer=True,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(op_block_list),
    )
    rewired = remove_fp16_roundtrips(converted)
    deduped = dedupe_nodes(converted)
    topological_sort(converted)
    log.info("fp16: ops kept fp32: %s; %d fp16 round trips rewired, %d duplicate nodes dropped",
             ", ".join(op_block_list) or "-", rewired, deduped)
    files = save_onnx(converted, dst)
    check_onnx(dst)
    return files


def remove_fp16_roundtrips(proto) -> int:
    """Replace `Cast(to=fp32)(Cast(to=fp16)(x: fp32))` by `x` in consumers; returns how many were rewired."""
    import onnx

    fp32 = {i.name for i in proto.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    fp32 |= {v.name for v in proto.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    producer = {o: n for n in proto.graph.node for o in n.output}
    for n in proto.graph.node:  # outputs of fp32-producing casts are fp32 too
        if n.op_type == "Cast" and _cast_to(n) == onnx.TensorProto.FLOAT:
            fp32.update(n.output)
    replace: dict[str, str] = {}
    for n in proto.graph.node:
        if n.op_type != "Cast" or _cast_to(n) != onnx.TensorProto.FLOAT:
            continue
        up = producer.get(n.input[0])
        if up is not None and up.op_type == "Cast" and _cast_to(up) == onnx.TensorProto.FLOAT16 and up.input[0] in fp32:
            replace[n.output[0]] = up.input[0]
    graph_outputs = {o.name for o in proto.graph.output}
    for n in proto.graph.node:
        for i, name in enumerate(n.input):
            if name in replace:
                n.input[i] = replace[name]
    for name in replace:
        if name in graph_outputs:
            raise RuntimeError(f"fp16 round trip on graph output {name}")
    _drop_dead_nodes(proto)
    return len(replace)


def _cast_to(node) -> int | None:
    for a in node.attribute:
        if a.name == "to":
            return a.i
    return None


def dedupe_nodes(proto) -> int:
    """Drop nodes that re-define an already defined output (ORT's converter duplicates `*_cast_to_fp32` casts)."""
    seen: set[str] = set()
    keep = []
    for n in proto.graph.node:
        if any(o in seen for o in n.output if o):
            continue
        seen.update(o for o in n.output if o)
        keep.append(n)
    dropped = len(proto.graph.node) - len(keep)
    if dropped:
        del proto.graph.node[:]
        proto.graph.node.extend(keep)
    return dropped


def _drop_dead_nodes(proto) -> None:
    """Remove nodes none of whose outputs reach a graph output (order-independent: the converter appends casts)."""
    producer = {o: i for i, n in enumerate(proto.graph.node) for o in n.output if o}
    live: set[int] = set()
    stack = [producer[o.name] for o in proto.graph.output if o.name in producer]
    while stack:
        i = stack.pop()
        if i in live:
            continue
        live.add(i)
        stack.extend(producer[x] for x in proto.graph.node[i].input if x in producer)
    keep = [n for i, n in enumerate(proto.graph.node) if i in live]
    del proto.graph.node[:]
    proto.graph.node.extend(keep)


def topological_sort(proto) -> None:
    """Order nodes so each input is defined before use (the fp16 converter appends its input casts last)."""
    nodes = list(proto.graph.node)
    available = {i.name for i in proto.graph.input} | {t.name for t in proto.graph.initializer} | {""}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    waiting = [sum(1 for x in set(n.input) if x not in available and x in producer) for n in nodes]
    users: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        for x in set(n.input):
            if x not in available and x in producer:
                users.setdefault(producer[x], []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    order: list[int] = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for u in users.get(i, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    if len(order) != len(nodes):
        raise RuntimeError(f"graph has a cycle or undefined inputs ({len(nodes) - len(order)} nodes unsorted)")
    del proto.graph.node[:]
    proto.graph.node.extend(nodes[i] for i in order)


# ORT's u8 x s8 integer GEMM on x86 CPUs without VNNI (AVX2 only) sums pairs of u8*s8 products in int16 with
# saturation (vpmaddubsw): 2 * 255 * 127 overflows it. Symmetric 7-bit weights (|q| <= 64) keep every pair under
# 2 * 255 * 64 = 32640 <= 32767, so results are exact and the same on every CPU; full 8-bit weights gave rel_l2 ~0.13
# on an AVX2-only machine and ~0.004 on a VNNI one for the same model.
INT8_WEIGHT_ABS_MAX = 64


def to_int8(src: Path, dst: Path, exclude_modules: Sequence[str] = (), per_channel: bool = True) -> list[Path]:
    """Dynamic INT8 of MatMul/Gemm (int8 weights, uint8 activations quantised on the fly): the CPU-fast format.

    Weights use ORT's `reduce_range` (7-bit, see INT8_WEIGHT_ABS_MAX) so the integer GEMM cannot saturate on
    non-VNNI CPUs: parity then no longer depends on the machine the model runs on.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = _load(src, weights=False)  # graph only: node names and initializer sizes
    exclude = nodes_in_modules(proto, exclude_modules)
    big = initializer_bytes(proto) > (1 << 30)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_ort_logs():
        quantize_dynamic(
            Path(src), Path(dst), op_types_to_quantize=["MatMul", "Gemm"], per_channel=per_channel,
            reduce_range=True, weight_type=QuantType.QInt8, nodes_to_exclude=exclude, use_external_data_format=big,
        )
    log.info("int8: %d MatMul/Gemm nodes kept fp32 (%s)", len(exclude), ", ".join(exclude_modules))
    check_onnx(dst)
    return [p for p in (dst, dst.with_name(dst.name + ".data")) if p.exists()]


def int8_weight_abs_max(path: Path) -> int:
    """Largest |q| over the int8 weights that feed MatMulInteger in `path` (0 if none)."""
    import numpy as np
    from onnx import numpy_helper

    proto = _load(path)
    weights = {n.input[1] for n in proto.graph.node if n.op_type == "MatMulInteger"}
    return max((int(np.abs(numpy_helper.to_array(t).astype(np.int32)).max())
                for t in proto.graph.initializer if t.name in weights), default=0)


INT4_METHODS = ("default", "rtn", "hqq", "k_quant", "gptq")


def _int4_algo(method: str, block_size: int, symmetric: bool, accuracy_level: int | None, calibration):
    """onnxruntime's weight-only config for `method` (RTN, k_quant and GPTQ run ORT's vendored INC code)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    if method == "default":
        return mnq.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric,
                                                accuracy_level=accuracy_level)
    if method == "hqq":  # always asymmetric (scale and zero point per block)
        return mnq.HQQWeightOnlyQuantConfig(block_size=block_size)
    if method == "rtn":
        return mnq.RTNWeightOnlyQuantConfig()
    if method == "k_quant":  # asymmetric, block size from the quantizer
        return mnq.KQuantWeightOnlyQuantConfig()
    if method == "gptq":
        if calibration is None:
            raise ValueError("int4 method gptq needs a calibration data reader")
        return mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=calibration)
    raise ValueError(f"int4 method {method!r}: expected one of {', '.join(INT4_METHODS)}")


def check_int4_recipe(q4) -> None:
    """ConfigError naming the key for a combination the quantizer would reject or silently change."""
    block = int(q4["block_size"])
    if block < 16 or block & (block - 1):
        raise ConfigError(f"`export.int4.block_size` = {block}: MatMulNBits takes a power of two >= 16")
    if q4["method"] in ("hqq", "k_quant") and q4["symmetric"]:
        raise ConfigError(f"`export.int4.symmetric` = true: method {q4['method']} is asymmetric only (set it false)")


def set_accuracy_level(proto, level: int | None) -> int:
    """Set `accuracy_level` on every MatMulNBits node (RTN/HQQ/k_quant write none); returns how many."""
    import onnx

    nodes = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    for n in nodes:
        kept = [a for a in n.attribute if a.name != "accuracy_level"]
        del n.attribute[:]
        n.attribute.extend(kept)
        if level:
            n.attribute.append(onnx.helper.make_attribute("accuracy_level", int(level)))
    return len(nodes)


def float_weights_to_fp16(proto) -> int:
    """Store the FP32 weight of each MatMul/Gemm that stayed unquantized as FP16, cast back to FP32 in the graph.

    Halves what excluded and Gemm layers (the timestep embedders) add to the INT4 file; compute stays FP32.
    Returns the number of weights converted.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    users: dict[str, int] = {}
    for n in proto.graph.node:
        for x in n.input:
            users[x] = users.get(x, 0) + 1
    done = 0
    new_nodes = []
    for n in proto.graph.node:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            t = inits[n.input[1]]
            if t.data_type != onnx.TensorProto.FLOAT or users.get(t.name, 0) != 1:
                continue
            arr = numpy_helper.to_array(t)
            half = numpy_helper.from_array(arr.astype(np.float16), t.name + "_fp16")
            proto.graph.initializer.remove(t)
            proto.graph.initializer.append(half)
            new_nodes.append(onnx.helper.make_node("Cast", [half.name], [t.name], name=t.name + "_cast_fp32",
                                                   to=onnx.TensorProto.FLOAT))
            done += 1
    if new_nodes:
        nodes = new_nodes + list(proto.graph.node)
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
    return done


def to_int4_recipe(src: Path, dst: Path, q4) -> list[Path]:
    """INT4 with the `export.int4` recipe (a mapping of the config section), checked first."""
    check_int4_recipe(q4)
    return to_int4(src, dst, int(q4["block_size"]), bool(q4["symmetric"]), q4["accuracy_level"],
                   q4["exclude_modules"], method=q4["method"], keep_dtype=q4["keep_dtype"])


def to_int4(src: Path, dst: Path, block_size: int, symmetric: bool, accuracy_level: int | None = None,
            exclude_modules: Sequence[str] = (), method: str = "default", keep_dtype: str = "fp32",
            calibration=None) -> list[Path]:
    """Weight-only block INT4 (`MatMulNBits`, com.microsoft) of MatMul weights with onnxruntime's `method`.

    MatMuls in `exclude_modules` and Gemms (which MatMulNBits does not cover) stay unquantized, their weights stored
    as `keep_dtype` (fp32, or fp16 cast back to fp32 in the graph). `accuracy_level` 4 makes MatMulNBits quantize
    activations to int8 on the CPU EP (faster, a little less exact); None/0 keeps fp32 activations.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    exclude = nodes_in_modules(_load(src, weights=False), exclude_modules)
    algo = _int4_algo(method, int(block_size), bool(symmetric), accuracy_level, calibration)
    # DEFAULT/HQQ take a path and handle > 2 GB models with external data themselves; INC's RTN/k_quant/GPTQ given a
    # path leave the tensors they do not quantize as references to the source's external data, so they get the proto
    model = str(src) if method in ("default", "hqq") else _load(src)
    q = MatMulNBitsQuantizer(model, bits=4, block_size=int(block_size), is_symmetric=bool(symmetric),
                             accuracy_level=accuracy_level, nodes_to_exclude=exclude, algo_config=algo)
    with _quiet_ort_logs():
        q.process()
    out = q.model.model if hasattr(q.model, "model") else q.model
    if not any(o.domain == "com.microsoft" for o in out.opset_import):  # INC's paths do not declare MatMulNBits' domain
        import onnx

        out.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    n = set_accuracy_level(out, accuracy_level)
    halved = float_weights_to_fp16(out) if keep_dtype == "fp16" else 0
    log.info("int4: %d MatMulNBits (%s, block %d, %s, accuracy_level %s), %d nodes excluded, %d weights kept fp16",
             n, method, block_size, "symmetric" if symmetric else "asymmetric", accuracy_level, len(exclude), halved)
    files = save_onnx(out, dst)
    check_onnx(dst)
    return files
