"""`export.int4.*`: the INT4 recipe is validated at load and is what the export's INT4 conversion writes."""
import numpy as np
import onnx
import pytest
import torch
import yaml

from lofi_lora.core.config import load_config
from lofi_lora.core.errors import ConfigError
from lofi_lora.export import onnx_export as ox
from lofi_lora.export import ort as ortx
from lofi_lora.export import parity, quantize
from lofi_lora.core.params import REPO_ROOT
from helpers.config import real_config

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, in_channels=24, audio_acoustic_hidden_dim=8, patch_size=2, sliding_window=16)


def _params() -> dict:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("key,value,message", [
    ("method", "gptq", "`export.int4.method` = 'gptq': must be one of default, rtn, hqq, k_quant"),
    ("block_size", 256, "`export.int4.block_size` = 256: must be a number in [16, 128]"),
    ("accuracy_level", 5, "`export.int4.accuracy_level` = 5: must be a number in [0, 4]"),
    ("keep_dtype", "bf16", "`export.int4.keep_dtype` = 'bf16': must be one of fp32, fp16"),
    ("group_size", 32, "`export.int4.group_size` is not a parameter"),
])
def test_bad_int4_recipe_names_the_key(key, value, message):
    params = _params()
    params["export"]["int4"][key] = value
    with pytest.raises(ConfigError) as e:
        load_config(params)
    assert message in str(e.value)


@pytest.mark.parametrize("change,message", [
    (dict(block_size=48), "`export.int4.block_size` = 48: MatMulNBits takes a power of two"),
    (dict(method="hqq", symmetric=True), "`export.int4.symmetric` = true: method hqq is asymmetric only"),
])
def test_recipe_combinations_the_quantizer_would_change_are_refused(tmp_path, change, message):
    q4 = dict(real_config(tmp_path).export.int4, **change)
    with pytest.raises(ConfigError, match=message):
        quantize.check_int4_recipe(q4)


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory):
    """A tiny AceStepTransformer1DModel exported to FP32 ONNX, with its PyTorch output on one input."""
    from diffusers import AceStepTransformer1DModel

    torch.manual_seed(0)
    model = AceStepTransformer1DModel(**TINY).eval()
    dims = ox.denoiser_dims(model)
    case = ox.denoiser_inputs(dims, 2, 24, 16, seed=3)
    path = tmp_path_factory.mktemp("int4") / "fp32" / "denoiser.onnx"
    ox.export_denoiser(model, path, 20, ox.denoiser_inputs(dims, 2, 16, 8, seed=1))
    return {"path": path, "case": case, "ref": ox.run_torch(model, case), "patch": dims["patch_size"]}


def _int4_nodes(path):
    proto = onnx.load(str(path))
    return proto, [n for n in proto.graph.node if n.op_type == "MatMulNBits"]


def test_int4_conversion_writes_the_configured_recipe(tiny_fp32, tmp_path):
    """The function the export stage calls for INT4, with the real config's section changed as a user would."""
    cfg = real_config(tmp_path)
    q4 = dict(cfg.export.int4, method="hqq", block_size=16, symmetric=False, accuracy_level=4, keep_dtype="fp16",
              exclude_modules=["condition_embedder"])
    dst = tmp_path / "int4" / "denoiser.onnx"
    quantize.to_int4_recipe(tiny_fp32["path"], dst, q4)
    proto, nodes = _int4_nodes(dst)
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    assert nodes and all(a["block_size"] == 16 and a["accuracy_level"] == 4 for a in attrs)
    assert all(len(n.input) >= 4 and n.input[3] for n in nodes), "asymmetric: every node has zero points"
    excluded = quantize.nodes_in_modules(onnx.load(str(tiny_fp32["path"]), load_external_data=False),
                                         ["condition_embedder"])
    assert excluded and set(excluded) <= {n.name for n in proto.graph.node if n.op_type in ("MatMul", "Gemm")}
    fp16 = {t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    casts = [n for n in proto.graph.node if n.op_type == "Cast" and n.input[0] in fp16]
    assert casts, "weights left unquantized are stored fp16 and cast back"
    got = ortx.run_denoiser(ortx.session(dst, 2), tiny_fp32["case"], tiny_fp32["patch"])
    figs = parity.compare(tiny_fp32["ref"], got)
    assert np.isfinite(got).all() and figs["rel_l2"] < 0.1, figs


def test_default_recipe_is_the_configured_default(tiny_fp32, tmp_path):
    q4 = real_config(tmp_path).export.int4
    dst = tmp_path / "int4" / "denoiser.onnx"
    quantize.to_int4_recipe(tiny_fp32["path"], dst, q4)
    _, nodes = _int4_nodes(dst)
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    assert nodes and all(a["block_size"] == q4.block_size for a in attrs)
    assert all((len(n.input) >= 4 and bool(n.input[3])) == (not q4.symmetric) for n in nodes)
    assert all(a.get("accuracy_level", 0) == (q4.accuracy_level or 0) for a in attrs)
