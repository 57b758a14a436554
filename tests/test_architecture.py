"""The dependency direction of dream_jax (.importlinter, README "Layout"): the layers contract holds, every
module has a layer, an upward import breaks it, README lists the same layers, and there is no import cycle, no
function-level import of the library outside main.py's lazy modes, and no read of another module's private
names."""

import ast
import configparser
import os
import pathlib
import re
import shutil
import subprocess
import sys

import grimp
from importlinter.cli import lint_imports

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONTRACT = ROOT / ".importlinter"
LIBRARY = ROOT / "dream_jax"
# main.py imports each mode's module when the mode runs: --mode=info must not import torch or libtpu.
LAZY_IMPORTS_ALLOWED = {"main.py"}


def _layers():
    parser = configparser.ConfigParser()
    parser.read(CONTRACT)
    text = parser["importlinter:contract:layers"]["layers"]
    return [[name.strip() for name in line.split("|")] for line in text.strip().splitlines()]


def _sources():
    return sorted(p for p in LIBRARY.rglob("*.py"))


def test_the_layers_contract_is_kept():
    assert lint_imports(config_filename=str(CONTRACT), no_cache=True, no_logo=True) == 0


def test_every_module_has_a_layer():
    """Every top-level module, and every package either as a whole or module by module."""
    listed = {name for layer in _layers() for name in layer}
    present = {f"dream_jax.{p.stem}" for p in LIBRARY.glob("*.py") if p.stem != "__init__"}
    for package in (p.parent for p in LIBRARY.glob("*/__init__.py")):
        name = f"dream_jax.{package.name}"
        present |= {name} if name in listed else {f"{name}.{p.stem}" for p in package.glob("*.py")
                                                   if p.stem != "__init__"}
    assert listed == present, f"missing from .importlinter: {present - listed}; listed but absent: {listed - present}"


def test_an_upward_import_breaks_the_contract(tmp_path):
    """A copy of the package whose model imports the train loop fails `lint-imports` (the editable install's
    finder is removed so that the copy is the one analysed)."""
    shutil.copytree(LIBRARY, tmp_path / "dream_jax", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "dream_jax" / "models" / "dream.py", "a") as f:
        f.write("\nfrom dream_jax.training import train  # noqa: E402,F401\n")
    script = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in repr(f)]; "
              f"sys.path.insert(0, {str(tmp_path)!r}); from importlinter.cli import lint_imports; "
              f"sys.exit(lint_imports(config_filename={str(CONTRACT)!r}, no_cache=True, no_logo=True))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout and "dream_jax.models.dream -> dream_jax.training.train" in done.stdout, done.stdout


def test_no_import_cycle():
    graph = grimp.build_graph("dream_jax")
    imports = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    state, path, cycles = {}, [], []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in sorted(imports[module]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(imports):
        if module not in state:
            visit(module)
    assert cycles == []


def _library_imports(tree):
    """(node, module name) of every `import dream_jax...` / `from dream_jax... import` in a parsed file."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dream_jax"):
            yield node, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dream_jax"):
                    yield node, alias.name


def test_library_imports_are_at_module_level():
    nested = []
    for path in _sources():
        if path.name in LAZY_IMPORTS_ALLOWED:
            continue
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        nested += [f"{path.relative_to(ROOT)}:{node.lineno}" for node, _ in _library_imports(tree)
                   if id(node) not in top]
    assert nested == []


def test_no_module_reads_another_modules_private_names():
    reads = []
    for path in _sources():
        tree = ast.parse(path.read_text())
        aliases = set()
        for node, _ in _library_imports(tree):
            aliases |= {a.asname or a.name.split(".")[-1] for a in node.names}
        reads += [f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert reads == []


def test_readme_lists_the_layers_in_the_contracts_order():
    """README "Layout"'s numbered list is the contract's layers, top to bottom (packages written as `name/`)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Layout"):]
    items = re.findall(r"^\d+\. (.+(?:\n   .+)*)", section, re.MULTILINE)
    listed = [sorted(re.findall(r"`([\w./]+)`", item)) for item in items]
    layers = [sorted(name.removeprefix("dream_jax.") + ("/" if (LIBRARY / name.split(".", 1)[1]).is_dir() and
                                                       name.count(".") == 1 else "") for name in layer)
              for layer in _layers()]
    assert listed == layers
