"""The Colab demo notebook (notebooks/dream_jax_demo.py, paired with its .ipynb by jupytext) never rots.

The .ipynb people open is checked against the .py people edit, and the notebook is executed top to bottom on CPU
with its parameter cell replaced by a tiny run; its outputs are then read: a loss plot, a masking-ratio plot,
sample grids (PNG outputs) and a zero-shot accuracy in [0, 1].
"""

import ast
import pathlib
import re

import jupytext
import nbclient
import nbformat
import pytest

import train_helpers as th

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = ROOT / "notebooks" / "dream_jax_demo.py"
NOTEBOOK = ROOT / "notebooks" / "dream_jax_demo.ipynb"
COLAB = "https://colab.research.google.com/github/"

# Every name of the parameter cell, at the smallest values that still exercise each section (SAD needs
# NUM_CANDIDATES > 1 and 0 < SAD_STEP < SAMPLING_ITERS; BATCH_SIZE is a multiple of the 4 mask groups).
TINY = dict(TRAIN_STEPS=6, BATCH_SIZE=16, DEPTH=1, LOG_EVERY=2, SAMPLING_ITERS=4, DIFFUSION_STEPS=4, NUM_CANDIDATES=2,
            SAD_STEP=2, SAMPLES_PER_PROMPT=2, ZERO_SHOT_IMAGES=32)


def _cells(notebook):
    """What a reader sees of each cell (ids are random and outputs are not part of the source)."""
    return [(c.cell_type, c.source, dict(c.metadata)) for c in notebook.cells]


def _assigned_names(source):
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign) for t in node.targets}


def _tagged(notebook, tag):
    cells = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def _source_constant(name):
    found = re.search(rf'^{name} = "([^"]+)"', SOURCE.read_text(), re.MULTILINE)
    assert found, f"{name} is not assigned in {SOURCE}"
    return found.group(1)


def colab_url(repo_url):
    """The Colab address of the notebook on the default branch of the repository at `repo_url`."""
    return f"{COLAB}{repo_url.removeprefix('https://github.com/')}/blob/main/notebooks/{NOTEBOOK.name}"


# ------------------------------------------------------------------------------------------- sources agree
def test_ipynb_is_generated_from_the_py_source():
    regenerated = jupytext.read(SOURCE)
    committed = nbformat.read(NOTEBOOK, as_version=4)
    assert _cells(regenerated) == _cells(committed), (
        f"{NOTEBOOK.name} is out of date: jupytext --to ipynb --update {SOURCE.relative_to(ROOT)}")


def test_committed_ipynb_has_no_outputs():
    committed = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)


def test_badges_and_install_point_at_the_same_repository():
    url = colab_url(_source_constant("REPO_URL"))
    assert url in (ROOT / "README.md").read_text()
    assert url in SOURCE.read_text()  # the notebook's own badge


def test_install_pin_is_the_package_version():
    version = re.search(r'version="([^"]+)"', (ROOT / "setup.py").read_text()).group(1)
    assert _source_constant("REPO_REF") == f"v{version}"


# ------------------------------------------------------------------------------------------------ execution
def _tiny_notebook(workdir):
    notebook = jupytext.read(SOURCE)
    cell = _tagged(notebook, "parameters")
    assert _assigned_names(cell.source) == set(TINY) | {"WORKDIR"}, "the parameter cell changed: update TINY"
    cell.source = "\n".join(f"{k} = {v!r}" for k, v in {**TINY, "WORKDIR": str(workdir)}.items())
    return notebook


def _kernel_env():
    """The one-device subprocess environment (conftest's 8 fake devices would only slow a 2-core run down)."""
    env = th.subprocess_env()
    env.pop("MPLBACKEND", None)  # the kernel's inline backend turns figures into image/png outputs
    return env


def _pngs(cell):
    return [o for o in cell.outputs if "image/png" in o.get("data", {})]


def _text(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("notebook")
    notebook = _tiny_notebook(run_dir / "workdir")
    # kernel_name python3: ipykernel's kernelspec in this environment, started with this interpreter.
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(run_dir)}})
    client.execute(env=_kernel_env())  # raises CellExecutionError on the first failing cell
    return notebook


def test_notebook_shows_loss_and_masking_plots(executed):
    assert _pngs(_tagged(executed, "loss-plot")), "no loss plot"
    assert "trained to step 6" in _text(_tagged(executed, "loss-plot"))
    masking_cell = _tagged(executed, "masking-plot")
    assert _pngs(masking_cell), "no masking-ratio plot"
    # the recomputed per-step ratios are the trainer's own draws
    diff = re.search(r"mean masking ratio: ([0-9.e+-]+)", _text(masking_cell))
    assert diff and float(diff.group(1)) < 1e-5


def test_notebook_shows_plain_and_sad_sample_grids(executed):
    cell = _tagged(executed, "samples")
    assert len(_pngs(cell)) == 2, "expected a plain and a SAD grid"
    assert re.search(r"plain [0-9.-]+, SAD [0-9.-]+", _text(cell))


def test_notebook_prints_a_zero_shot_accuracy(executed):
    found = re.search(r"zero-shot top-1 accuracy: ([0-9.]+)", _text(_tagged(executed, "zero-shot")))
    assert found, "no zero-shot number printed"
    assert 0.0 <= float(found.group(1)) <= 1.0


def test_notebook_exports_to_pytorch_when_torch_is_present(executed):
    pytest.importorskip("torch")
    text = "".join(_text(c) for c in executed.cells if c.cell_type == "code")
    diffs = re.search(r"images ([0-9.e+-]+), class prompts ([0-9.e+-]+)", text)
    assert diffs, "no JAX vs PyTorch comparison printed"
    assert max(float(diffs.group(1)), float(diffs.group(2))) < 1e-3
