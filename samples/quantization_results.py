"""The quantization results table (docs/quantization.md) on the shipped reference model.

    python samples/quantization_results.py

Exports the model (fp32, fp16), quantizes the fp16 export with every scheme of
`planforge optimize`, and prints a markdown table: held-out perplexity on the
first --max-tokens tokens of heldout.txt (disjoint 256-token windows), its
change against FP16, multiple-choice accuracy, and model file size. Calibration
uses the last quarter of heldout.txt, which the perplexity never scores.

Every quantized row stores the token-embedding table (tied to the LM head on the
reference model) as `planforge optimize` does by default, with the scheme's weight
bits, except the rows marked "float embedding", which keep it as QUIK does.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from planforge.evaluation.api import evaluate
from planforge.exporter.api import ExportOptions, export
from planforge.graph_passes.api import OptimizeOptions, optimize
from planforge.graph_passes.schemes import QuantOptions
from planforge.manifest import Manifest, model_file_bytes

ROOT = Path(__file__).resolve().parents[1]

# (label, QuantOptions, --embedding; None = the default: the scheme's weight bits)
ROWS = [
    ("W8A8 RTN", QuantOptions("w8a8"), None),
    ("W4A16 g128 RTN", QuantOptions("w4a16"), None),
    ("W4A16 g128 GPTQ", QuantOptions("w4a16", weight_method="gptq"), None),
    ("W4A4 no outliers, RTN", QuantOptions("w4a4", outliers="0", int8_layers=()), None),
    ("W4A4 no outliers, GPTQ", QuantOptions("w4a4", outliers="0", int8_layers=(), weight_method="gptq"), None),
    ("W4A4 no outliers, INT8 down_proj, GPTQ", QuantOptions("w4a4", outliers="0", weight_method="gptq"), None),
    ("W4A4 3% outliers, INT8 down_proj, RTN", QuantOptions("w4a4", outliers="0.03"), None),
    ("W4A4 1% outliers, INT8 down_proj, GPTQ", QuantOptions("w4a4", outliers="0.01", weight_method="gptq"), None),
    ("W4A4 3% outliers, INT8 down_proj, GPTQ", QuantOptions("w4a4", outliers="0.03", weight_method="gptq"), None),
    ("W4A4 6% outliers, INT8 down_proj, GPTQ", QuantOptions("w4a4", outliers="0.06", weight_method="gptq"), None),
    ("W4A4 3% outliers, 4-bit down_proj, GPTQ", QuantOptions("w4a4", outliers="0.03", int8_layers=(),
                                                             weight_method="gptq"), None),
    ("W4A4 3% outliers, INT8 down_proj, GPTQ, float embedding",
     QuantOptions("w4a4", outliers="0.03", weight_method="gptq"), "float"),
    ("W4A4 1% outliers, INT8 down_proj, GPTQ, float embedding",
     QuantOptions("w4a4", outliers="0.01", weight_method="gptq"), "float"),
]


def linear_bytes(directory: Path) -> int:
    """Bytes of the decoder linears' tensors (weights, scales, outlier weights); not embeddings or norms."""
    import onnx

    linears = {lin["module"] for lin in json.loads((directory / "planforge.json").read_text())["linears"]
               if lin["layer"] is not None}
    model = onnx.load(str(directory / "model.onnx"), load_external_data=False)
    return sum(len(t.raw_data) for t in model.graph.initializer
               if any(t.name.startswith(m + ".") or t.name.startswith(m + "/") for m in linears))


def embedding_of(directory: Path) -> str:
    """How the token table is stored: the quantize_embedding pass's storage, else the export dtype."""
    manifest = Manifest.load(directory)
    for entry in manifest.passes:
        if entry["name"] == "quantize_embedding":
            return entry["settings"]["storage"].upper()
    return manifest.dtype.upper()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "samples" / "reference_model")
    parser.add_argument("--text", type=Path, help="Held-out text. Default: MODEL/heldout.txt.")
    parser.add_argument("--accuracy", type=Path, help="Accuracy set. Default: MODEL/accuracy.jsonl.")
    parser.add_argument("--max-tokens", type=int, default=16384, help="Held-out tokens scored for perplexity.")
    parser.add_argument("--accuracy-items", type=int, default=300, help="Accuracy items scored (from the start).")
    parser.add_argument("--calib-samples", type=int, default=64, help="Calibration windows of 256 tokens.")
    parser.add_argument("--rows", type=int, default=len(ROWS), help="Run only the first N quantized rows.")
    parser.add_argument("--out", type=Path, help="Keep the models here. Default: a temporary directory.")
    args = parser.parse_args()
    text_path, acc_path = args.text or args.model / "heldout.txt", args.accuracy or args.model / "accuracy.jsonl"
    with tempfile.TemporaryDirectory() as scratch:
        work = args.out or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        text = text_path.read_text()
        calib = work / "calib.txt"
        calib.write_text(text[3 * len(text) // 4:])
        accuracy = work / "accuracy.jsonl"
        accuracy.write_text("".join(acc_path.read_text().splitlines(True)[:args.accuracy_items]))
        models = [("FP32", export(str(args.model), work / "fp32", ExportOptions(dtype="fp32", force=True)) and work / "fp32"),
                  ("FP16", export(str(args.model), work / "fp16", ExportOptions(dtype="fp16", force=True)) and work / "fp16")]
        for i, (label, quant, embedding) in enumerate(ROWS[:args.rows]):
            out = work / f"q{i}"
            optimize(work / "fp16", out, OptimizeOptions(quant=quant, embedding=embedding, calib=calib,  # the QDQ form
                                                         calib_samples=args.calib_samples, target="portable",
                                                         force=True))
            models.append((label, out))
        rows, fp16 = [], None
        for label, directory in models:
            result = evaluate(directory, text_path, accuracy, max_tokens=args.max_tokens)
            fp16 = result["ppl"] if label == "FP16" else fp16
            rows.append((label, result, model_file_bytes(directory), linear_bytes(directory), embedding_of(directory)))
            print(json.dumps({**result, "label": label}), flush=True)
    base, base_linears = rows[1][2], rows[1][3]  # FP16
    print(f"\n| model | embedding | perplexity ({rows[0][1]['tokens']} tokens) | vs FP16 "
          f"| accuracy ({rows[0][1]['accuracy_items']}) | model.onnx MB | size vs FP16 | linears vs FP16 |")
    print("|---|---|---|---|---|---|---|---|")
    for label, result, size, lin, embedding in rows:
        print(f"| {label} | {embedding} | {result['ppl']:.3f} | {100 * (result['ppl'] / fp16 - 1):+.1f}% | "
              f"{100 * result['accuracy']:.1f}% | {size / 1e6:.2f} | {size / base:.3f}x | {lin / base_linears:.3f}x |")


if __name__ == "__main__":
    main()
