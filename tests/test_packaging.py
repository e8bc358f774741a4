"""Layout promises: runtime/ imports without torch or transformers; only planforge.* is installed."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_runtime_imports_without_torch_or_transformers():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers"):
                    raise ImportError(f"{name} is blocked in this test")
        sys.meta_path.insert(0, Block())
        import planforge.runtime
        from planforge.runtime import Generator, Tokenizer, open_backend
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_every_subpackage_is_under_planforge():
    import planforge

    assert Path(planforge.__file__).resolve().parent == ROOT
    import planforge.compare
    import planforge.exporter.architectures
    import planforge.graph_passes
    import planforge.plugins
    import planforge.runtime
    import planforge.sparsity  # noqa: F401


def test_no_generic_top_level_modules_are_installed():
    from importlib.metadata import distribution

    dist = distribution("planforge")
    top_level = (dist.read_text("top_level.txt") or "").split()
    assert top_level in ([], ["planforge"]), top_level


def test_the_wheel_ships_the_reference_model_the_demo_runs(tmp_path):
    """`pip install .` (not editable) must still find samples/reference_model (evaluation/demo.py)."""
    import shutil
    import zipfile

    had_build = (ROOT / "build").exists()
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                               str(ROOT)], capture_output=True, text=True, timeout=600)
    finally:
        if not had_build:  # setuptools builds in the tree; a stale build/lib would feed later wheels
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("planforge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "heldout.txt",
                 "accuracy.jsonl", "generation_config.json"):
        assert f"planforge/samples/reference_model/{name}" in names, name
    assert "planforge/setup.py" not in names and not any(n.startswith("tests/") for n in names)
