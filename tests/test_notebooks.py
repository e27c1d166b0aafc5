"""Execute every notebook in notebooks/ on small settings (SERVESIM_NOTEBOOK_SMALL=1); a failing cell fails the test.

Notebooks are found by globbing, so a new notebook is tested without touching this
file. The stored notebooks are not modified: each runs on an in-memory copy.
"""

from __future__ import annotations

import os

import pytest

from tests.paths import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb file"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_on_small_settings(path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no python3 Jupyter kernel installed (pip install ipykernel)")
    monkeypatch.setenv("SERVESIM_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, startup_timeout=300, kernel_name="python3",  # a busy machine
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError naming the cell on any exception
    assert os.environ["SERVESIM_NOTEBOOK_SMALL"] == "1"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
