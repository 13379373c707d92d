"""launch/colab_demo.ipynb runs top to bottom on CPU, from the shipped warm start, and RL improves the policy."""

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_colab_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    out = tmp_path / "colab"
    # The kernel imports this checkout's rlx and sees one CPU device, as on Colab.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("RLX_NOTEBOOK_OUT", str(out))
    import matplotlib

    monkeypatch.setenv("MPLCONFIGDIR", matplotlib.get_configdir())  # keep the font cache when HOME moves
    monkeypatch.setenv("HOME", str(tmp_path))  # nothing from ~/.cache/rlx: the warm start must come from the package
    notebook = nbformat.read(REPO / "launch" / "colab_demo.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["warmup/reused"] == 1.0
    assert [r["step"] for r in rows] == list(range(21))
    assert rows[-1]["val/accuracy"] > rows[0]["val/accuracy"] + 0.1
    assert rows[-1]["val/pass@4"] >= rows[-1]["val/pass@1"]
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "pass@8" in outputs and "step 20: mean reward" in outputs and "exported:" in outputs
    assert any("image/png" in o.get("data", {}) for cell in notebook.cells for o in cell.get("outputs", []))  # the live plot
    assert {"config.json", "model.safetensors"} <= set(os.listdir(out / "export"))
