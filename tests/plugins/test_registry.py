"""The plugin registry: the version-bump rule, ONNX registration, and shape inference checked against
what each op's torch implementation actually returns."""

import dataclasses
import hashlib

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from planforge.errors import PluginVersionError
from planforge.plugins._schema import AttrSpec
from planforge.plugins.registry import (
    check_op_versions,
    opset_version,
    plugin_op,
    plugin_ops,
    register_onnx_schemas,
)

# (version, signature hash). A changed hash with the same version means a graph built against the old
# signature would silently mean something else: bump the op's version, then record the new pair here.
SIGNATURES = {
    "planforge::FusedAttentionPrefill": (2, "00534829f712285c"),
    "planforge::FusedAttentionDecode": (2, "d241ebbca8453f84"),
    "planforge::KVCacheUpdate": (2, "2da6d7de59d97d71"),
    "planforge::SparseHeadsAttention": (3, "9c54962eb9440448"),
    "planforge::SparseHeadsQProj": (1, "cbe72314d8f46ac0"),
    "planforge::SparseHeadsAttend": (1, "e65e9fb1b679aad0"),
    "planforge::SparseHeadsOProj": (1, "df2655e5578fa5bc"),
    "planforge::SparseMLP": (2, "c1396448f87715fa"),
    "planforge::SparseMLPGateUp": (1, "7f6de8c05769fb09"),
    "planforge::SparseMLPDown": (1, "9c4eabc73f29dbff"),
    "planforge::QuikQuantize": (2, "9ef108676e664f96"),
    "planforge::QuikMatMul": (2, "93cd38ffd4ff951d"),
}


def _signature_hash(schema) -> str:
    return hashlib.sha256(schema.signature().encode()).hexdigest()[:16]


def _version_bump_problems(schemas) -> list[str]:
    problems = []
    for schema in schemas:
        version, recorded = SIGNATURES.get(schema.qualified_name, (None, None))
        if version is None:
            problems.append(f"{schema.qualified_name} is not recorded in SIGNATURES")
        elif _signature_hash(schema) != recorded:
            verb = "bump its version, then record" if schema.version == version else "record"
            problems.append(f"{schema.qualified_name} v{schema.version} changed its signature: {verb} "
                            f"({schema.version}, {_signature_hash(schema)!r})")
    return problems


def test_every_signature_change_bumps_the_version():
    assert _version_bump_problems([op.schema for op in plugin_ops().values()]) == []
    assert set(SIGNATURES) == set(plugin_ops())


def test_the_version_rule_catches_a_new_attribute():
    schema = plugin_op("KVCacheUpdate").schema
    changed = dataclasses.replace(schema, attributes=schema.attributes + (AttrSpec("window", "int", 0),))
    assert _version_bump_problems([changed]) == [
        f"planforge::KVCacheUpdate v2 changed its signature: bump its version, then record (2, {_signature_hash(changed)!r})"]


def test_op_versions_of_a_lowered_model_are_checked():
    check_op_versions({"planforge::KVCacheUpdate": 2})
    with pytest.raises(PluginVersionError, match="version 1; this planforge has version 2"):
        check_op_versions({"planforge::KVCacheUpdate": 1})
    with pytest.raises(PluginVersionError, match="no such op"):
        check_op_versions({"planforge::Nonexistent": 1})
    with pytest.raises(PluginVersionError, match="planforge::Nonexistent, which this planforge does not have"):
        plugin_op("Nonexistent")


def _example_inputs():
    """Per op: its inputs as torch tensors (valid for the reference), and its attributes."""
    g = torch.Generator().manual_seed(0)
    f = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    i32 = lambda *values: torch.tensor(values, dtype=torch.int32)  # noqa: E731
    B, Hq, Hkv, S, C, D, d, F, M, K, N, Ko = 2, 4, 2, 3, 16, 8, 32, 24, 5, 40, 12, 8
    codes = lambda rows, cols: torch.randint(-8, 8, (rows, cols), generator=g, dtype=torch.int8)  # noqa: E731
    return {
        "FusedAttentionPrefill": ([f(B, Hq, S, D), f(B, Hkv, S + 2, D), f(B, Hkv, S + 2, D)], {"window": 2}),
        "FusedAttentionDecode": ([f(B, Hq, D), f(B, Hkv, C, D), f(B, Hkv, C, D), i32(3, 7)], {}),
        "KVCacheUpdate": ([torch.zeros(B, Hkv, C, D), torch.zeros(B, Hkv, C, D), f(B, Hkv, S, D), f(B, Hkv, S, D),
                           i32(0, 4), None, None], {"rolling": 1, "sinks": 2}),
        "SparseHeadsAttention": ([f(B, d), f(Hq * D, d), f(Hq * D, d), f(B, Hkv, C, D), f(B, Hkv, C, D), i32(2, 5),
                                  torch.tensor([[1, 2], [3, 0]], dtype=torch.int32), f(Hq * D), f(B, D // 2),
                                  f(B, D // 2)], {"scale": 0.5}),
        "SparseHeadsQProj": ([f(B, d), f(Hq * D, d), torch.tensor([[1, 2], [3, 0]], dtype=torch.int32), f(Hq * D),
                              f(B, D // 2), f(B, D // 2)], {"head_dim": D}),
        "SparseHeadsAttend": ([f(B, 2, D), f(B, Hkv, C, D), f(B, Hkv, C, D), i32(2, 5),
                               torch.tensor([[1, 2], [3, 0]], dtype=torch.int32)], {"group": Hq // Hkv}),
        "SparseHeadsOProj": ([f(B, 2, D), f(Hq * D, d), torch.tensor([[1, 2], [3, 0]], dtype=torch.int32)], {}),
        "SparseMLP": ([f(B, d), f(F, d), f(F, d), f(F, d), torch.tensor([[0, 5], [7, 3]], dtype=torch.int32)], {}),
        "SparseMLPGateUp": ([f(B, d), f(F, d), f(F, d), torch.tensor([[0, 5, 1], [7, 3, 2]], dtype=torch.int32)], {}),
        "SparseMLPDown": ([f(B, 3), f(F, d), torch.tensor([[0, 5, 1], [7, 3, 2]], dtype=torch.int32)], {}),
        "QuikQuantize": ([f(M, K), torch.randperm(K, generator=g).to(torch.int32)], {"n_outliers": Ko, "bits": 4}),
        "QuikMatMul": ([codes(M, (K - Ko) // 2), f(M).abs(), f(M), f(M, Ko), codes(N, (K - Ko) // 2), f(N).abs(), f(N),
                        f(N, Ko)], {"bits": 4}),
    }


def _single_node_model(op_type, inputs, attributes):
    """A model with one planforge node; inputs as graph inputs with symbolic batch where it is the batch."""
    schema = plugin_op(op_type).schema
    names, infos = [], []
    for spec, value in zip(schema.inputs, inputs):
        if value is None:
            names.append("")
            continue
        names.append(spec.name)
        elem = helper.np_dtype_to_tensor_dtype(value.numpy().dtype)
        infos.append(helper.make_tensor_value_info(spec.name, elem, list(value.shape)))
    node = helper.make_node(op_type, names, [o.name for o in schema.outputs], domain="planforge",
                            plugin_namespace="planforge", plugin_version=str(schema.version), **attributes)
    graph = helper.make_graph([node], op_type, infos, [onnx.ValueInfoProto(name=o.name) for o in schema.outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23),
                                                   helper.make_opsetid("planforge", opset_version())])


@pytest.mark.parametrize("op_type", [key.split("::")[1] for key in SIGNATURES])
def test_shape_inference_matches_the_torch_op(op_type):
    register_onnx_schemas()
    inputs, attributes = _example_inputs()[op_type]
    model = _single_node_model(op_type, inputs, attributes)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True)
    onnx.checker.check_model(inferred, full_check=True)  # the outputs now have types: a checkable graph
    outputs = plugin_op(op_type).run([t.clone() if t is not None else None for t in inputs], attributes)
    assert len(inferred.graph.output) == len(outputs)
    for info, value in zip(inferred.graph.output, outputs):
        dims = [d.dim_value for d in info.type.tensor_type.shape.dim]
        assert dims == list(value.shape), (info.name, dims, tuple(value.shape))
        assert info.type.tensor_type.elem_type == helper.np_dtype_to_tensor_dtype(value.numpy().dtype), info.name


def test_aliased_outputs_are_the_updated_inputs():
    inputs, attributes = _example_inputs()["KVCacheUpdate"]
    k_out, v_out = plugin_op("KVCacheUpdate").run(inputs, attributes)
    assert k_out is inputs[0] and v_out is inputs[1] and k_out.abs().sum() > 0


def test_checker_refuses_a_wrong_dtype():
    register_onnx_schemas()
    inputs, attributes = _example_inputs()["FusedAttentionDecode"]
    model = _single_node_model("FusedAttentionDecode", inputs, attributes)
    model.graph.input[3].type.tensor_type.elem_type = TensorProto.FLOAT  # seq_lens must be int32
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True)
