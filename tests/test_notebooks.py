"""The notebooks in notebooks/: stored clean, paired with their jupytext .py, executed end to end.

Each notebook runs top to bottom in a fresh IPython kernel (nbclient) on CPU, with tiny sizes
appended to its ``parameters`` cell (papermill's convention), in a temporary working directory.
A cell that raises fails the test (nbclient raises ``CellExecutionError``). Each ``<name>.ipynb``
is the jupytext pair of ``<name>.py`` (percent format, the source of truth): same cells, same
sources, same tags, and the .py is exactly what jupytext writes from the .ipynb.
"""

from __future__ import annotations

import os
import textwrap
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
jupytext = pytest.importorskip("jupytext")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(REPO, "notebooks")
NOTEBOOKS = ("quickstart", "losses_in_your_code", "ham10000")
CELL_TIMEOUT_S = 300

# The tiny sizes each test appends to the notebook's parameters cell.
TINY = {
    "quickstart": """
        ROUNDS = 2
        IMAGE_SIZE = 32
        TRAIN_SIZES = (8, 8, 4, 8)
        VAL_SIZE = 4
        TEST_SIZE = 4
        WIDTH = 4
        DEPTH = 2
        BATCH_SIZE = 4
        NUM_PREVIEW = 2
    """,
    "losses_in_your_code": """
        IMAGE_SIZE = 16
        BATCH_SIZE = 8
        STEPS = 3
        FEATURES = 4
        NUM_TASKS = 2
        FED_ROUNDS = 2
        LOCAL_STEPS = 1
    """,
    "ham10000": """
        DATA_DIR = {data_dir!r}
        CACHE_DIR = {cache_dir!r}
        WORKDIR = {workdir!r}
        PAPER_SCALE = False
        IMAGE_SIZE = 32
        CROP = 28
        WIDTH = 4
        DEPTH = 2
        ROUNDS = 2
        BATCH_SIZE = 8
        MAX_PER_CLIENT = 0
        PREVIEW_PER_CLIENT = 2
    """,
}


def _path(name: str) -> str:
    return os.path.join(NOTEBOOK_DIR, f"{name}.ipynb")


def _read(name: str):
    with open(_path(name), encoding="utf-8") as f:
        return nbformat.read(f, as_version=4)


def _parameters_cell(nb):
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "notebook without code cells"
    assert "parameters" in code[0].metadata.get("tags", []), \
        "the first code cell must be tagged 'parameters'"
    return code[0]


def _execute(name: str, cwd, **fmt):
    """Run notebook ``name`` with its tiny parameters in directory ``cwd``; return it executed."""
    nb = _read(name)
    cell = _parameters_cell(nb)
    overrides = textwrap.dedent(TINY[name]).format(**fmt)
    cell.source = cell.source + "\n\n# Injected by tests/test_notebooks.py" + overrides
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}})
    t0 = time.perf_counter()
    client.execute()
    print(f"{name}.ipynb executed in {time.perf_counter() - t0:.1f} s")
    return nb


def _images(nb) -> int:
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "image/png" in o.get("data", {}))


def _text(nb) -> str:
    out = []
    for c in nb.cells:
        for o in c.get("outputs", []) if c.cell_type == "code" else []:
            out.append(o.get("text", "") or o.get("data", {}).get("text/plain", ""))
    return "\n".join(out)


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory):
    """One persistent compilation cache for the notebooks of this session (not ~/.cache)."""
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture
def kernel_env(monkeypatch, jax_cache_dir):
    """The kernel inherits this environment: CPU only, one device, no GPU memory grab."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("FEDMIX_JAX_CACHE_DIR", jax_cache_dir)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")


# ------------------------------------------------------------------------------------------------
# Stored form


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}.ipynb cell {i} has outputs"
            assert cell.execution_count is None, f"{name}.ipynb cell {i} has an execution count"
    _parameters_cell(nb)


def test_every_notebook_is_listed():
    found = sorted(f[:-len(".ipynb")] for f in os.listdir(NOTEBOOK_DIR) if f.endswith(".ipynb"))
    assert found == sorted(NOTEBOOKS)


def test_every_notebook_has_its_py():
    found = sorted(f[:-len(".py")] for f in os.listdir(NOTEBOOK_DIR) if f.endswith(".py"))
    assert found == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_matches_its_py(name):
    from jupytext.compare import compare_notebooks

    py_path = os.path.join(NOTEBOOK_DIR, f"{name}.py")
    hint = (f"notebooks/{name}.ipynb and notebooks/{name}.py differ: edit the .py and run "
            f"`jupytext --sync notebooks/{name}.py`")
    from_py = jupytext.read(py_path)
    from_ipynb = jupytext.read(_path(name))
    try:   # same cells: types, sources, tags (the outputs are checked empty above)
        compare_notebooks(from_ipynb, from_py, fmt="py:percent")
    except Exception as e:  # noqa: BLE001 - add the fix to jupytext's message
        raise AssertionError(f"{hint}\n{e}") from e
    with open(py_path, encoding="utf-8") as f:   # the .py is what jupytext writes from the pair
        assert f.read() == jupytext.writes(from_ipynb, fmt="py:percent"), hint
    assert from_ipynb.metadata.get("colab"), "Colab metadata lost"


# ------------------------------------------------------------------------------------------------
# Execution


def test_quickstart_runs_sharded_over_two_devices(tmp_path, kernel_env, monkeypatch):
    # Two simulated CPU devices: the path a TPU runtime takes (clients split over the cores).
    # On one device the notebook only picks default_executor(), the path the package's own
    # tests cover; this run costs about the same.
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    nb = _execute("quickstart", tmp_path)
    text = _text(nb)
    assert "backend 'cpu', 2 device(s)" in text
    assert "client-axis executor: 'sharded' {'num_devices': 2}" in text
    assert "spec=P('clients',)" in text                 # the data is split over the devices
    assert "fedmix round   2/2" in text and "fedavg_pixel round   2/2" in text
    assert _images(nb) >= 4                             # preview, curves, weights, overlays
    assert os.listdir(tmp_path) == []                   # writes nothing in its directory


def test_losses_in_your_code_runs(tmp_path, kernel_env):
    nb = _execute("losses_in_your_code", tmp_path)
    text = _text(nb)
    assert "all weights 0 -> loss  0.0" in text
    assert _images(nb) >= 5


def test_ham10000_runs_on_a_fixture_tree(tmp_path, kernel_env):
    from fedmix_jax.data.real.make_fixture import make_ham10000

    data_dir, cache_dir, workdir = (str(tmp_path / d) for d in ("ham", "cache", "run"))
    # 56 images: 14 per client, 32 px -> train arrays [4, 16, 32, 32, 1] (as tests/test_main.py)
    make_ham10000(data_dir, num_images=56, size=(40, 30), seed=0)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    nb = _execute("ham10000", cwd, data_dir=data_dir, cache_dir=cache_dir, workdir=workdir)
    text = _text(nb)
    for client in ("rosendahl", "vidir_modern", "vienna_dias", "vidir_molemax"):
        assert client in text
    assert "already cached" in text or "built" in text
    assert os.path.exists(os.path.join(workdir, "summary.json"))
    assert _images(nb) >= 3                             # clients, curves, predictions
