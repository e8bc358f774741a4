"""Maps the repository root onto the ``planforge`` package.

The top-level folders (exporter/, graph_passes/, plugins/, runtime/, compare/,
cli/) install as ``planforge.exporter`` and so on, so no generic top-level
module names are installed. Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPyWithoutSetupScript(build_py):
    """Keeps this script out of the installed package, which is the repository root."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not (package == "planforge" and m[1] == "setup")]


SUBPACKAGE_ROOTS = ["exporter", "graph_passes", "plugins", "runtime", "compare", "evaluation", "cli", "sparsity"]

subpackages = find_packages(
    where=".", include=[f"{root}*" for root in SUBPACKAGE_ROOTS] + SUBPACKAGE_ROOTS
)
# The reference model `planforge demo` runs by default ships inside the package, so an installed
# wheel finds it where a checkout has it (planforge/samples/reference_model).
REFERENCE_MODEL_FILES = [f"samples/reference_model/{pattern}" for pattern in
                         ("*.json", "*.safetensors", "heldout.txt", "accuracy.jsonl", "README.md")]

# The C++ runtime's sources: runtime/native.py builds its generation loop from them on first use.
CPP_RUNTIME_FILES = ["runtime/cpp/CMakeLists.txt", "runtime/cpp/include/planforge/*", "runtime/cpp/src/*",
                     "runtime/cpp/tests/*", "samples/cpp/*"]

setup(
    cmdclass={"build_py": BuildPyWithoutSetupScript},
    package_dir={"planforge": "."},
    packages=["planforge"] + [f"planforge.{name}" for name in subpackages],
    package_data={"planforge": REFERENCE_MODEL_FILES + CPP_RUNTIME_FILES},
)
