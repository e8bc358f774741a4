"""An edited or foreign planforge.json is refused in one line when the model is opened, on every backend."""

import json
import shutil

import pytest

from planforge.errors import CompiledModelError
from planforge.runtime import open_backend


@pytest.fixture
def compiled(tiny_model, tmp_path):
    target = tmp_path / "compiled"
    shutil.copytree(tiny_model("llama")[1], target)
    return target


def _edit(compiled, edit):
    manifest = json.loads((compiled / "planforge.json").read_text())
    (compiled / "planforge.json").write_text(json.dumps(edit(manifest)))


@pytest.mark.parametrize("content, match", [
    ("[1, 2]", "is not a planforge manifest"),
    ('"text"', "is not a planforge manifest"),
    ('{"dims": 3}', "is not a planforge manifest"),
    (b"\xff\xfe", "corrupt .*utf-8"),
])
def test_a_manifest_that_is_not_one(compiled, content, match):
    path = compiled / "planforge.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CompiledModelError, match=match):
        open_backend(compiled)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("field, value, match", [
    ("num_layers", 1, "gives 1 layers of 2 KV heads x 16; the graph's cache inputs are 2 of 2 x 16"),
    ("head_dim", 8, "gives 2 layers of 2 KV heads x 8"),
    ("num_kv_heads", 3, "num_heads 4 is not a multiple of dims.num_kv_heads 3"),
    ("vocab_size", "320", "dims.vocab_size is '320'; it must be a positive integer"),
])
def test_edited_dims_are_refused(compiled, backend, field, value, match):
    _edit(compiled, lambda m: {**m, "dims": {**m["dims"], field: value}})
    with pytest.raises(CompiledModelError, match=match):
        open_backend(compiled, backend)


def test_an_io_contract_that_is_not_the_graphs(compiled):
    _edit(compiled, lambda m: {**m, "io": {**m["io"], "inputs": m["io"]["inputs"][:-1]}})
    with pytest.raises(CompiledModelError, match="does not describe its model.onnx"):
        open_backend(compiled)
