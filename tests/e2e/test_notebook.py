"""examples/tutorial.ipynb runs top to bottom in a real Jupyter kernel (nbclient and
ipykernel), against the test cluster: with-blocks, proxies, remote output, progress and
awaiting futures all work in cells."""

from __future__ import annotations

import os

import pytest
from conftest import UNIT, wait_idle

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "tutorial.ipynb")


def text_of(cell) -> tuple[str, str]:
    """A code cell's stream output (stdout, stderr) and its result, as text."""
    streams = {"stdout": "", "stderr": ""}
    result = ""
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            streams[output["name"]] += output["text"]
        elif output["output_type"] == "execute_result":
            result += output["data"].get("text/plain", "")
    return streams["stdout"] + streams["stderr"], result


def test_tutorial_notebook_runs(cluster_url, monkeypatch):
    wait_idle(cluster_url)
    monkeypatch.setenv("PYFORA_URL", cluster_url)
    monkeypatch.delenv("PYFORA_PROGRESS", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=int(120 * UNIT), kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
    client.execute()            # raises CellExecutionError, with the cell, if one fails
    code = [c for c in notebook.cells if c.cell_type == "code"]
    outputs = {c.source.splitlines()[0]: text_of(c) for c in code}

    assert outputs["import os"][1] == "2"                          # the worker count
    with_blocks = [text_of(c) for c in code if "ufora.remotely" in c.source]
    assert with_blocks[0][1] == "9594"        # primes below 100,000, plus 0 and 1
    assert with_blocks[1][1].startswith("<RemotePythonObject list")
    assert with_blocks[2][1] == "[99929, 99961, 99971, 99989, 99991]"
    assert outputs["len(primes.toLocal().result())"][1] == "9594"
    streams, result = with_blocks[3]
    assert "hello from the cluster" in streams                    # remote print, in the cell
    assert "with-block, " in streams and "cores busy" in streams  # the live status line
    assert result == "170"
    assert outputs["proxy = await ufora.submit(slow_count, 10_000, 0)"][1] == "1231"
