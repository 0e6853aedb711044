"""The notebooks run top to bottom on a fresh kernel (as CI runs them, headless): rollout inspection building its own
small run, and registering a task then training and inspecting it."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _execute(name: str, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _outputs(nb: nbformat.NotebookNode, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in o.get("data", {})]


@pytest.mark.parametrize("name", ["inspect_rollouts.ipynb", "register_a_task.ipynb"])
def test_notebook_is_saved_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code")


def test_inspect_rollouts_notebook_runs_headless(tmp_path, monkeypatch):
    monkeypatch.delenv("MMREASON_RUN_DIR", raising=False)  # the notebook trains its own small run
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # ... in a folder pytest cleans up
    nb = _execute("inspect_rollouts.ipynb", tmp_path)
    assert len(_outputs(nb, "image/png")) >= 6  # curves, group spreads and drawn samples
    assert list(tmp_path.glob("mmreason-inspect-*/runs/demo/report.html"))


def test_register_a_task_notebook_runs_headless(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = _execute("register_a_task.ipynb", tmp_path)
    assert len(_outputs(nb, "image/png")) >= 4
    (run_dir,) = tmp_path.glob("mmreason-task-*/runs/bigger-shape")
    assert (run_dir / "report.html").is_file()
