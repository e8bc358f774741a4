"""The planforge command: every option documented, errors as one line with exit 2, and the happy paths."""

import subprocess
import sys

import pytest
import typer.main

from planforge.cli.app import app

SUBCOMMANDS = ("export", "run", "compare", "eval", "demo")


def planforge(*args, check=False):
    proc = subprocess.run([sys.executable, "-m", "planforge.cli.app", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"planforge {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_option_has_help(name):
    command = typer.main.get_command(app).commands[name]
    assert command.help
    for param in command.params:
        assert getattr(param, "help", None), f"planforge {name}: {param.name} has no help text"


def test_help_runs():
    for name in SUBCOMMANDS:
        assert "Usage" in planforge(name, "--help", check=True).stdout


def test_export_run_compare_end_to_end(tiny_model, tmp_path):
    source, _ = tiny_model("llama")
    out = tmp_path / "compiled"
    assert "exported LlamaForCausalLM" in planforge("export", source, "-o", out, "--quiet", check=True).stdout
    run = planforge("run", out, "--prompt", "The quick brown", "--max-new-tokens", "6", check=True)
    assert run.stdout.startswith("The quick brown")
    assert "tokens/s" in run.stderr and "6 new tokens" in run.stderr
    batch = planforge("run", out, "-p", "The", "-p", "Attention with a key", "--max-new-tokens", "3", "--sample",
                      "--seed", "1", "--top-k", "5", check=True)
    assert "6 new tokens" in batch.stderr
    compare = planforge("compare", out, source, "--decode-steps", "4", check=True)
    assert "PASSED" in compare.stdout and "decode_4" in compare.stdout


def test_compare_exits_1_when_out_of_tolerance(tiny_model):
    fp32, fp16 = tiny_model("llama")[1], tiny_model("llama", "fp16")[1]
    proc = planforge("compare", fp32, fp16, "--decode-steps", "2", "--atol", "1e-7")
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout
    loose = planforge("compare", fp32, fp16, "--decode-steps", "2", "--atol", "5e-2", "--min-top1", "0.9")
    assert loose.returncode == 0, loose.stdout


@pytest.mark.parametrize("args,message", [
    (["export", "/definitely/missing", "-o", "x"], "does not exist"),
    (["run", "/definitely/missing", "-p", "hi"], "not a directory"),
    (["export", ".", "-o", "x", "--dtype", "int3"], "int3"),
])
def test_errors_are_one_line_without_traceback(args, message):
    proc = planforge(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_export_refuses_existing_output(tiny_model, tmp_path):
    (tmp_path / "out").mkdir()
    proc = planforge("export", tiny_model("llama")[0], "-o", tmp_path / "out", "--quiet")
    assert proc.returncode == 2 and "--force" in proc.stderr


def test_run_prompt_too_long(tiny_model):
    proc = planforge("run", tiny_model("llama")[1], "-p", "fox " * 300)
    assert proc.returncode == 2 and "max-seq-len" in proc.stderr
    assert proc.stdout == ""  # nothing was printed before the error


def test_run_without_tokenizer(tiny_model, tmp_path):
    import shutil

    out = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_model("llama")[1], out)
    (out / "tokenizer.json").unlink()
    proc = planforge("run", out, "-p", "hi")
    assert proc.returncode == 2 and "tokenizer.json" in proc.stderr


def test_cli_reference_documents_every_option():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    for name, command in typer.main.get_command(app).commands.items():
        assert f"## `planforge {name}`" in doc
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert f"`{opt}`" in doc, f"docs/cli.md does not document planforge {name} {opt}"


def test_cli_reference_lists_every_error_class():
    import importlib
    from pathlib import Path

    from planforge.errors import PlanforgeError

    for module in ("planforge.evaluation.accuracy", "planforge.graph_passes.streaming_attention",
                   "planforge.graph_passes.schemes", "planforge.graph_passes.api", "planforge.cli.app"):
        importlib.import_module(module)  # every module that defines an error class
    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()

    def classes(cls):
        return [cls] + [c for sub in cls.__subclasses__() for c in classes(sub)]

    missing = [c.__name__ for c in classes(PlanforgeError) if f"| `{c.__name__}` |" not in doc]
    assert missing == [], f"docs/cli.md's error table lacks {missing}"
