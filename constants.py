"""Names shared by the exporter, the graph passes and the runtime.

Graph passes match structure, never these names; they exist so that the I/O
contract (ORT-GenAI convention) and the file layout are spelled in one place.
"""

OPSET = 23
IR_VERSION = 10
FORMAT_VERSION = 1

MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
MANIFEST_FILE = "planforge.json"

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
LOGITS = "logits"


def past_key(layer: int) -> str:
    return f"past_key_values.{layer}.key"


def past_value(layer: int) -> str:
    return f"past_key_values.{layer}.value"


def present_key(layer: int) -> str:
    return f"present.{layer}.key"


def present_value(layer: int) -> str:
    return f"present.{layer}.value"


def linear_weight(module: str) -> str:
    """Initializer of a linear layer's weight, stored as [in_features, out_features]."""
    return f"{module}.weight"


def linear_bias(module: str) -> str:
    return f"{module}.bias"


# The lowered graph's cache contract (``build --target torch``, docs/onnx_contract.md): preallocated
# buffers updated in place, and the number of valid entries of each sequence before the step.
LOWERED_IO_VERSION = 2
PAST_LENGTHS = "past_lengths"


def cache_key(layer: int) -> str:
    return f"kv_cache.{layer}.key"


def cache_value(layer: int) -> str:
    return f"kv_cache.{layer}.value"


def cache_key_out(layer: int) -> str:
    return f"kv_cache_out.{layer}.key"


def cache_value_out(layer: int) -> str:
    return f"kv_cache_out.{layer}.value"
