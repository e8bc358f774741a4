"""planforge's runners inside ``polygraphy run`` (the ``polygraphy.run.plugins`` entry point).

Polygraphy cannot compare a graph with custom ops against ONNX Runtime: ONNX Runtime
has no kernel for them, and a TensorRT build needs their plugins (TensorRT#4256,
#4487). These runners step a planforge model through prefill and teacher-forced
decode on any planforge backend (``compare/runners.py``), so one command compares
the lowered graph on the torch backend with ONNX Runtime on the portable graph it
was built from::

    polygraphy run LOWERED/model.onnx --pf-torch --pf-onnxrt \\
        --val-range input_ids:[0,300] --atol 1e-4 --rtol 0 --check-error-stat max

``--atol``, ``--rtol``, ``--check-error-stat``, ``--save-outputs`` and the rest of
Polygraphy's comparison options apply as usual. The model path names a compiled
model directory's ``model.onnx`` (or the directory). ``--pf-onnxrt`` runs the
portable model the lowered one was built from (``planforge.json`` records it), or
``--pf-reference DIR``.
"""

from __future__ import annotations

from pathlib import Path

from polygraphy.tools.args import ModelArgs
from polygraphy.tools.args.base import BaseArgs, BaseRunnerArgs
from polygraphy.tools.script import make_invocable


def model_directory(path: str) -> str:
    """The compiled model directory of ``polygraphy run``'s model argument (its model.onnx, or itself)."""
    p = Path(path)
    return str(p.parent if p.is_file() else p)


def reference_directory(model_dir: str) -> str:
    """The portable model a lowered one was built from, as its manifest records; else the model itself."""
    from planforge.manifest import Manifest

    return Manifest.load(Path(model_dir)).source.get("portable_model", model_dir)


class PlanforgeArgs(BaseArgs):
    """planforge runners: how they feed the model (shared by every planforge runner)."""

    def add_parser_args_impl(self):
        self.group.add_argument("--pf-decode-steps", type=int, default=4, dest="pf_decode_steps",
                                help="Tokens fed one at a time through the KV cache after the prefill; each step's "
                                     "logits is an output (decode_K_logits).")
        self.group.add_argument("--pf-prompt-len", type=int, default=8, dest="pf_prompt_len",
                                help="Prefill tokens; input_ids is (1, prompt + decode steps).")
        self.group.add_argument("--pf-device", choices=("cpu", "cuda"), default="cpu", dest="pf_device",
                                help="Device the planforge runners use.")
        self.group.add_argument("--pf-reference", default=None, dest="pf_reference",
                                help="Portable model directory --pf-onnxrt runs. Default: the one the model was built "
                                     "from (planforge.json), else the model itself.")

    def parse_impl(self, args):
        self.decode_steps, self.prompt_len = args.pf_decode_steps, args.pf_prompt_len
        self.device, self.reference = args.pf_device, args.pf_reference

    def add_runner(self, script, model_dir_expr: str, backend: str) -> None:
        script.add_import(imports=["BackendRunner"], frm="planforge.compare.runners")
        script.add_runner(make_invocable("BackendRunner", model_dir_expr, decode_steps=self.decode_steps,
                                         backend=backend, device=self.device, prompt_len=self.prompt_len))


class _PlanforgeRunnerArgs(BaseRunnerArgs):
    backend = ""
    label = ""

    def get_name_opt_impl(self):
        return self.label, f"pf-{self.opt}"

    def model_dir(self) -> str:
        return model_directory(self.arg_groups[ModelArgs].path)

    def add_to_script_impl(self, script):
        self.arg_groups[PlanforgeArgs].add_runner(script, self.model_dir(), self.backend)


class TorchRunnerArgs(_PlanforgeRunnerArgs):
    """planforge torch backend: the model (lowered or portable) run node by node with torch."""

    backend, label, opt = "torch", "planforge's torch backend (plugin ops via torch.ops.planforge)", "torch"


class OnnxrtReferenceRunnerArgs(_PlanforgeRunnerArgs):
    """planforge on ONNX Runtime: the portable graph the lowered model came from (or --pf-reference)."""

    backend, label, opt = "onnxruntime", "ONNX Runtime on planforge's portable graph", "onnxrt"

    def model_dir(self) -> str:
        given = self.arg_groups[PlanforgeArgs].reference
        return given or reference_directory(super().model_dir())


def export_argument_groups():
    """The entry point Polygraphy calls: planforge's argument groups for ``polygraphy run``."""
    return [PlanforgeArgs(), TorchRunnerArgs(), OnnxrtReferenceRunnerArgs()]
