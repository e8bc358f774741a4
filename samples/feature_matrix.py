"""Which downstream features each exported family takes: contextual sparsity and streaming, portable and
lowered for the torch backend (`build --target torch`), on the test suite's tiny random configs.

    python samples/feature_matrix.py [--families llama gemma ...]

Per family and feature: the portable pass (refused with its error, or applied), then the plugin lowering
(refused, or applied with --allow-partial where a part stays standard ops) and the lowered model's max
|Δ logits| against the portable one on ONNX Runtime over a prefill of 6 and 10 decode steps (the
streaming cache of 2 sinks + 6 wraps). Prints a markdown table last.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sparsity_support import make_predictor  # noqa: E402  (the tests' random predictor)
from support import save_random_model  # noqa: E402  (the tests' tiny configs)

from planforge.errors import PlanforgeError  # noqa: E402
from planforge.exporter.api import ExportOptions, export  # noqa: E402
from planforge.graph_passes.api import OptimizeOptions, optimize  # noqa: E402
from planforge.graph_passes.contextual_sparsity import SparsityOptions  # noqa: E402
from planforge.graph_passes.streaming_attention import StreamingOptions  # noqa: E402
from planforge.manifest import Manifest  # noqa: E402
from planforge.runtime import open_backend  # noqa: E402

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "granite", "smollm3", "gemma", "gemma2", "gemma3", "phi3", "opt",
            "opt350m", "seed_oss", "gpt2")


def run_steps(directory: Path, decode: int = 10) -> np.ndarray:
    backend = open_backend(directory)
    ids = np.random.default_rng(0).integers(1, 300, (1, 6 + decode))
    logits, cache = backend.forward(ids[:, :6], np.ones((1, 6), np.int64), np.arange(6)[None], backend.empty_cache(1))
    out = [logits]
    for t in range(decode):  # the mask covers what the cache holds
        logits, cache = backend.forward(ids[:, 6 + t:7 + t], np.ones((1, cache.length + 1), np.int64),
                                        np.array([[6 + t]]), cache)
        out.append(logits)
    return np.concatenate(out, axis=1)


def refusal(error: PlanforgeError) -> str:
    return f"refused ({type(error).__name__}: {str(error).split(': ', 2)[-1][:90]})"


def feature(root: Path, name: str, options: OptimizeOptions) -> tuple[str, str]:
    portable = root / name
    try:
        optimize(root / "onnx", portable, options)
    except PlanforgeError as error:
        return refusal(error), "-"
    for partial in (False, True):
        lowered = root / f"{name}_torch_{partial}"
        try:
            optimize(portable, lowered, OptimizeOptions(target="torch", allow_partial=partial))
        except PlanforgeError as error:
            if partial:
                return "applied", refusal(error)
            first = refusal(error)
            continue
        diff = float(np.abs(run_steps(lowered) - run_steps(portable)).max())
        ops = len(Manifest.load(lowered).plugin_ops)
        how = "lowered" if not partial else f"partial ({ops} op types); without --allow-partial {first}"
        return "applied", f"{how}, max |Δ| {diff:.1e}"
    return "applied", "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            root = Path(tmp) / family
            export(str(save_random_model(family, root / "hf")), root / "onnx", ExportOptions(dtype="fp32"))
            make_predictor(Manifest.load(root / "onnx").dims, root / "predictor.safetensors")
            sparse = feature(root, "sparse", OptimizeOptions(
                sparsity=SparsityOptions(0.5, 0.5, root / "predictor.safetensors"), target="portable"))
            stream = feature(root, "stream", OptimizeOptions(streaming=StreamingOptions(2, 6), target="portable"))
            rows.append((family, *sparse, *stream))
            print(family, rows[-1][1:], flush=True)
    print("\n| family | sparsity (portable) | sparsity lowered | streaming (portable) | streaming lowered |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
