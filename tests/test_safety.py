"""Safety: no pickle is ever trusted (weights are safetensors, every torch.load is weights_only=True), user code runs
only from the paths the user named, and the library's default path (a quickstart-like run on the tiny model) makes
no network access at all: it passes under a socket guard that records and refuses every non-loopback connection.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mmreason.train.checkpoint import COMPLETE_MARKER, OPTIMIZER_FILE, load_training_state

REPO = Path(__file__).resolve().parent.parent
LIBRARY = [REPO / "mmreason", REPO / "processors", REPO / "rewards"]
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _library_files() -> list[Path]:
    return sorted(p for root in LIBRARY for p in root.rglob("*.py"))


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _dotted(node: ast.expr) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _unsafe_calls(tree: ast.AST) -> list[str]:
    """Every call that could unpickle or run remote code, in one AST."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            weights_only = _keyword(node, "weights_only")
            if name == "torch.load" and not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
            if name in ("pd.read_pickle", "pandas.read_pickle", "np.load", "numpy.load"):
                allow = _keyword(node, "allow_pickle")
                if name.endswith("read_pickle") or not (isinstance(allow, ast.Constant) and allow.value is False):
                    found.append(f"line {node.lineno}: {name} can unpickle")
            trust = _keyword(node, "trust_remote_code")
            if trust is not None and not (isinstance(trust, ast.Constant) and trust.value is False):
                found.append(f"line {node.lineno}: trust_remote_code")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {node.lineno}: imports {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
    return found


def test_library_never_unpickles_untrusted_data():
    files = _library_files()
    assert len(files) > 30
    problems = {str(p.relative_to(REPO)): _unsafe_calls(ast.parse(p.read_text())) for p in files}
    assert {k: v for k, v in problems.items() if v} == {}
    uses = sum("torch.load(" in p.read_text() for p in files)
    assert uses >= 1  # checkpoint.py: optimizer, scheduler and RNG states


def test_the_audit_catches_unsafe_calls():
    code = "import pickle\ntorch.load(f)\ntorch.load(f, weights_only=False)\nnp.load(f)\nf(trust_remote_code=True)"
    assert len(_unsafe_calls(ast.parse(code))) == 5
    assert _unsafe_calls(ast.parse("torch.load(f, map_location='cpu', weights_only=True)")) == []


class _Payload:
    """A pickle that runs code when loaded: it would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_malicious_training_state_is_refused_not_run(tmp_path):
    ckpt = tmp_path / "s00-sft-step000001"
    ckpt.mkdir()
    (ckpt / COMPLETE_MARKER).write_text("{}")
    marker = tmp_path / "pwned"
    torch.save({"state": {}, "param_groups": [], "x": _Payload(marker)}, ckpt / OPTIMIZER_FILE)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(pickle.UnpicklingError):
        load_training_state(ckpt, optimizer)
    assert not marker.exists()


def test_checkpoint_weights_are_safetensors(tmp_path):
    from mmreason.models.tiny import build_tiny
    from mmreason.train.checkpoint import save_checkpoint

    model, processor = build_tiny()
    path = save_checkpoint(tmp_path, "c", model=model, processor=processor, state={})
    assert (path / "model.safetensors").is_file()
    assert not [p.name for p in path.iterdir() if p.suffix in (".bin", ".pkl", ".pickle")]


NET_GUARD = r'''
import json, os, socket

LOG = os.environ["NET_GUARD_LOG"]
LOOPBACK = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}


def _refuse(what, target):
    with open(LOG, "a") as f:
        f.write(json.dumps([what, repr(target)]) + "\n")
    raise OSError(f"network access refused by the test guard: {what} {target!r}")


def _guard(real, what):
    def method(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            _refuse(what, address)
        return real(self, address, *args)
    return method


for name in ("connect", "connect_ex"):
    setattr(socket.socket, name, _guard(getattr(socket.socket, name), name))
_sendto = socket.socket.sendto


def sendto(self, data, *args):
    address = args[-1]
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
        _refuse("sendto", address)
    return _sendto(self, data, *args)


socket.socket.sendto = sendto
_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    if host not in LOOPBACK:
        _refuse("getaddrinfo", host)
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = getaddrinfo
'''

QUICKSTART = r'''
import sys
from mmreason.data.synthetic import make_synthetic

make_synthetic("counting", "data/quickstart", n=40, seed=0)
sys.argv = ["mmreason", "train", "quickstart", "name=offline", "output_dir=runs", "sft.steps=2", "sft.batch_size=4",
            "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=4", "data.0.max_val=4", "eval.batch_size=4"]
from mmreason.cli import main

main()
'''

TRAP = "open({marker!r}, 'a').write(__file__ + '\\n')\n"


def test_quickstart_like_run_makes_no_network_access(tmp_path):
    (tmp_path / "netguard.py").write_text(NET_GUARD)
    # modules named like what a careless loader might import from the working directory: none may run
    marker = tmp_path / "imported.txt"
    for name in ("tasks", "rewards", "counting", "mmreason_tasks", "my_task", "reward"):
        (tmp_path / f"{name}.py").write_text(TRAP.format(marker=str(marker)))
    log = tmp_path / "network.log"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(HF_HUB_OFFLINE="1", NET_GUARD_LOG=str(log), TQDM_DISABLE="1", PYTHONPATH=str(tmp_path))
    script = "import netguard\n" + textwrap.dedent(QUICKSTART)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not log.exists(), log.read_text()
    assert not marker.exists(), marker.read_text()
    metrics = [json.loads(x) for x in (tmp_path / "runs" / "offline" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["stage"] == "grpo"] == [1, 2]
    # the guard itself works: a real connection attempt is refused and recorded
    connect = "import netguard, socket; socket.create_connection(('example.com', 80))"
    probe = subprocess.run([sys.executable, "-c", connect], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=60)
    assert probe.returncode != 0 and "refused by the test guard" in probe.stderr
    assert "example.com" in log.read_text()
