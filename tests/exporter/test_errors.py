"""Bad input gets its own error class, a message that says what to do, and no partial output."""

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from planforge.errors import (CompiledModelError, ModelNotFoundError, OutputExistsError,
                              UnsupportedArchitectureError, UnsupportedConfigError)
from planforge.exporter.api import ExportOptions, export
from planforge.runtime import open_backend


def test_missing_model_directory(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        export(str(tmp_path / "nope"), tmp_path / "out")


def test_empty_model_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="empty directory"):
        export(str(tmp_path / "empty"), tmp_path / "out")


def test_directory_without_config(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        export(str(tmp_path / "weights"), tmp_path / "out")


def test_uncached_hub_id_is_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with pytest.raises(ModelNotFoundError, match="never downloads at run time: run `hf download some-org"):
        export("some-org/some-model-that-is-not-cached", tmp_path / "out")


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    from transformers import BloomConfig

    config = BloomConfig(hidden_size=32, n_layer=1, n_head=2, vocab_size=100)
    config.architectures = ["BloomForCausalLM"]
    config.save_pretrained(tmp_path / "bloom")
    with pytest.raises(UnsupportedArchitectureError) as info:
        export(str(tmp_path / "bloom"), tmp_path / "out")
    message = str(info.value)
    assert "BloomForCausalLM" in message
    for name in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel"):
        assert name in message
    assert not (tmp_path / "out").exists()


def test_learned_positions_cap_max_seq_len(tiny_model, tmp_path):
    source, _ = tiny_model("gpt2")  # n_positions = 256
    with pytest.raises(UnsupportedConfigError, match="--max-seq-len 256 or less"):
        export(str(source), tmp_path / "out", ExportOptions(max_seq_len=512))


def test_existing_output_is_refused_without_force(tiny_model, tmp_path):
    source, _ = tiny_model("llama")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(OutputExistsError, match="--force"):
        export(str(source), out)
    assert (out / "keep.txt").read_text() == "user data"
    with pytest.raises(OutputExistsError, match="not a planforge output"):  # --force replaces only planforge's
        export(str(source), out, ExportOptions(force=True))
    assert (out / "keep.txt").read_text() == "user data"


def test_failed_export_leaves_nothing(tiny_model, tmp_path, monkeypatch):
    import planforge.exporter.api as api

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(api, "_save_onnx", fail)
    with pytest.raises(RuntimeError):
        export(str(tiny_model("llama")[0]), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


_SLOW_EXPORT = textwrap.dedent("""
    import signal, sys, time
    # A job a shell starts in the background inherits SIGINT ignored, and Python then keeps it ignored;
    # Ctrl-C reaches a foreground export with Python's default handler, which this restores.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import planforge.exporter.api as api
    save = api._save_onnx
    def save_then_hang(*args):
        result = save(*args)  # model.onnx is now half of the output
        print("WROTE", flush=True)
        time.sleep(120)
        return result
    api._save_onnx = save_then_hang
    from planforge.cli.app import main
    sys.argv = ["planforge", "export", sys.argv[1], "-o", sys.argv[2], "--quiet"]
    main()
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT])
def test_killed_export_leaves_no_partial_output(sig, tiny_model, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_EXPORT, str(tiny_model("llama")[0]), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "WROTE"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert not out.exists()
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr, stderr
    if sig == signal.SIGTERM:  # one line, and the shell's status for the signal (click handles Ctrl-C itself)
        assert "stopped by SIGTERM; no partial output was left" in stderr and proc.returncode == 143, stderr
    leftovers = [p.name for p in tmp_path.iterdir()]
    if sig == signal.SIGKILL:  # nothing can run on SIGKILL: only a hidden partial sibling may remain
        assert all(name.startswith(".out.partial-") for name in leftovers)
        export(str(tiny_model("llama")[0]), out)  # the next export cleans it up
        assert [p.name for p in tmp_path.iterdir()] == ["out"]
    else:
        assert leftovers == []


def _copy_compiled(tiny_model, tmp_path) -> Path:
    target = tmp_path / "compiled"
    shutil.copytree(tiny_model("llama")[1], target)
    return target


def test_truncated_model_onnx(tiny_model, tmp_path):
    compiled = _copy_compiled(tiny_model, tmp_path)
    data = (compiled / "model.onnx").read_bytes()
    (compiled / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(CompiledModelError, match="corrupt or truncated"):
        open_backend(compiled)


def test_garbage_model_onnx(tiny_model, tmp_path):
    compiled = _copy_compiled(tiny_model, tmp_path)
    (compiled / "model.onnx").write_bytes(b"\x00not an onnx model" * 100)
    with pytest.raises(CompiledModelError, match="Re-export"):
        open_backend(compiled)


def test_missing_model_onnx_and_manifest(tiny_model, tmp_path):
    compiled = _copy_compiled(tiny_model, tmp_path)
    (compiled / "model.onnx").unlink()
    with pytest.raises(CompiledModelError, match="no model.onnx"):
        open_backend(compiled)
    (compiled / "planforge.json").unlink()
    with pytest.raises(CompiledModelError, match="planforge export"):
        open_backend(compiled)


def test_cached_hub_id_is_exported_offline(tiny_model, tmp_path, monkeypatch):
    """A hub id resolves to its snapshot in the local cache (the layout huggingface_hub writes)."""
    repo = tmp_path / "hf_home" / "hub" / "models--tiny-org--tiny-llama"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    shutil.copytree(tiny_model("llama")[0], snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    manifest = export("tiny-org/tiny-llama", tmp_path / "out")
    assert manifest.family == "llama" and (tmp_path / "out" / "model.onnx").is_file()


def test_model_code_never_runs(tiny_model, tmp_path):
    """A model whose config maps to its own Python code is refused before transformers sees it, even with
    `y` on stdin for transformers' "run the custom code?" prompt; the code (which writes a marker) never runs."""
    import json

    evil = tmp_path / "evil"
    shutil.copytree(tiny_model("llama")[0], evil)
    marker = tmp_path / "code_ran"
    for module in ("configuration_evil", "modeling_evil", "tokenization_evil"):
        (evil / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write('{module}')\n")
    config = json.loads((evil / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (evil / "config.json").write_text(json.dumps(config))
    (tmp_path / "text.txt").write_text("hello world " * 50)
    for command in (["export", str(evil), "-o", str(tmp_path / "out")],
                    ["eval", str(evil), "--ppl", str(tmp_path / "text.txt")],
                    ["sparsity", "importance", str(evil), "--calib", str(tmp_path / "text.txt"), "-o",
                     str(tmp_path / "imp.safetensors")]):
        proc = subprocess.run([sys.executable, "-m", "planforge.cli.app", *command], input="y\n" * 20,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "never runs model code" in proc.stderr and "LlamaForCausalLM" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["not_ours", "cwd", "parent", "file"])
def test_force_replaces_only_planforge_outputs(tiny_model, tmp_path, case):
    """--force never deletes what planforge did not write, nor the working directory (or one above it)."""
    work = tmp_path / "work"
    (work / "inner").mkdir(parents=True)
    (work / "inner" / "keep.txt").write_text("mine")
    target, cwd = {"not_ours": ("inner", work), "cwd": (".", work / "inner"), "parent": ("..", work / "inner"),
                   "file": ("inner/keep.txt", work)}[case]
    proc = subprocess.run([sys.executable, "-m", "planforge.cli.app", "export", str(tiny_model("llama")[0]), "-o",
                           target, "--force", "-q"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--force" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert (work / "inner" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in work.iterdir()) == ["inner"]  # no partial output left either


def test_force_replaces_a_planforge_output(tiny_model, tmp_path):
    out = tmp_path / "out"
    export(str(tiny_model("llama")[0]), out, ExportOptions())
    (out / "stale.txt").write_text("from an earlier run")
    export(str(tiny_model("llama")[0]), out, ExportOptions(force=True))
    assert (out / "planforge.json").is_file() and not (out / "stale.txt").exists()


def test_two_exports_into_one_output_both_finish(tiny_model, tmp_path):
    """Concurrent runs into one OUT keep each other's temporary directories; the last to finish wins."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "planforge.cli.app", "export", str(tiny_model("llama")[0]), "-o", str(out),
               "--force", "-q"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert all(rc == 0 for _, _, rc in results), results
    assert (out / "planforge.json").is_file() and [p.name for p in tmp_path.iterdir()] == ["out"]
    open_backend(out)  # a whole model, not a mix


def test_outputs_follow_the_umask_and_stale_partials_of_live_writers_stay(tiny_model, tmp_path):
    import os

    live = tmp_path / f".out.partial-{os.getpid()}-live"  # this process is alive: its partial is in use
    dead = tmp_path / ".out.partial-999999999-dead"  # no such process
    live.mkdir()
    dead.mkdir()
    previous = os.umask(0o022)
    try:
        export(str(tiny_model("llama")[0]), tmp_path / "out", ExportOptions())
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert live.exists() and not dead.exists()


def _broken_checkpoint(tiny_model, tmp_path, how: str) -> Path:
    from safetensors.torch import load_file, save_file

    source = tmp_path / how
    shutil.copytree(tiny_model("llama")[0], source)
    weights = source / "model.safetensors"
    if how in ("missing", "unexpected", "misshaped"):
        import torch

        tensors = load_file(weights)
        if how == "missing":
            tensors.pop("model.layers.0.mlp.down_proj.weight")
        elif how == "unexpected":
            tensors["model.layers.9.mlp.down_proj.weight"] = torch.zeros(4, 4)
        else:
            tensors["model.layers.0.mlp.down_proj.weight"] = torch.zeros(4, 4)
        save_file(tensors, weights, metadata={"format": "pt"})
    elif how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    else:  # a pickle whose loading would run a command
        weights.unlink()
        marker = tmp_path / "ran"
        (source / "pytorch_model.bin").write_bytes(
            b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    return source


@pytest.mark.parametrize("how, match", [
    ("missing", r"lacks 1 tensor\(s\) \(model\.layers\.0\.mlp\.down_proj\.weight\) the config needs; exporting "
                "would fill them with random values"),
    ("unexpected", r"has 1 tensor\(s\) \(model\.layers\.9\.mlp\.down_proj\.weight\) its config has no place for"),
    ("misshaped", "has tensors whose shapes do not match its config.json"),
    ("truncated", "cannot be read .*truncated or corrupt"),
    ("pickle", "a pickle holding more than tensors, which planforge never unpickles"),
])
def test_a_broken_checkpoint_is_refused_in_one_line(tiny_model, tmp_path, how, match):
    from planforge.errors import CheckpointError

    source = _broken_checkpoint(tiny_model, tmp_path, how)
    with pytest.raises(CheckpointError, match=match):
        export(str(source), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "ran").exists()
    result = subprocess.run([sys.executable, "-m", "planforge.cli.app", "export", str(source), "-o",
                             str(tmp_path / "out"), "-q"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "weights_only" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EACCES", "EROFS"])
def test_a_failed_write_is_one_line_and_leaves_nothing(tiny_model, tmp_path, monkeypatch, errno_name):
    import errno
    import os

    import onnx

    from planforge.errors import OutputWriteError

    code = getattr(errno, errno_name)

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(onnx, "save_model", fail)
    monkeypatch.setattr(onnx, "save", fail)
    with pytest.raises(OutputWriteError, match=f"cannot write .*out: {os.strerror(code)}. Nothing was written"):
        export(str(tiny_model("llama")[0]), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


