"""Several processes and machines through accelerate: one `Dist` object owns the Accelerator and the few
collective operations the trainers need (sums, object gathers, barriers), so a single-process run and an
`accelerate launch` run (DDP, DeepSpeed ZeRO-2/3, FSDP) go through the very same loops.

Layout of a GRPO step across R ranks: each rank takes every R-th prompt of the global batch (`SampleStream`
rank/world_size), generates all G completions of its prompts (so a group never spans ranks and its advantages are
computed locally), and the loss is normalised by global token / sequence counts so the gradients DDP averages equal
those of one process holding the whole batch. Rank 0 alone writes checkpoints, metrics and the rollout store, from
rows gathered from every rank in rank order.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import torch


class Dist:
    """Thin wrapper over `accelerate.Accelerator` (created for single-process runs too: one code path)."""

    def __init__(self, device: str = "auto", mixed_precision: str = "no") -> None:
        from accelerate import Accelerator

        cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        self.acc = Accelerator(cpu=cpu, mixed_precision=mixed_precision)

    @property
    def rank(self) -> int:
        return self.acc.process_index

    @property
    def world_size(self) -> int:
        return self.acc.num_processes

    @property
    def is_main(self) -> bool:
        return self.acc.is_main_process

    @property
    def device(self) -> torch.device:
        return self.acc.device

    def prepare(self, *objects: Any) -> Any:
        return self.acc.prepare(*objects)

    def unwrap(self, model: Any) -> Any:
        return self.acc.unwrap_model(model)

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)

    def clip_grad_norm(self, params: Any, max_norm: float) -> torch.Tensor:
        return self.acc.clip_grad_norm_(params, max_norm)

    def sum(self, value: float | torch.Tensor) -> float:
        """Sum of a scalar over all ranks."""
        t = torch.as_tensor(value, dtype=torch.float64, device=self.device).reshape(1)
        return float(self.acc.reduce(t, reduction="sum")) if self.world_size > 1 else float(t)

    def gather_objects(self, items: list[Any]) -> list[Any]:
        """Every rank's list, concatenated in rank order (all ranks get the result)."""
        if self.world_size == 1:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(list(items))

    def barrier(self) -> None:
        self.acc.wait_for_everyone()

    def autocast(self) -> Any:
        return self.acc.autocast()


def launched_by_accelerate() -> bool:
    """Whether this process was started by `accelerate launch` / torchrun (several ranks)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def relaunch(num_processes: int, argv: list[str], config_file: str | None = None, cpu: bool | None = None) -> int:
    """Run `mmreason <argv>` under `accelerate launch` with `num_processes` ranks; returns its exit code."""
    if cpu is None:
        cpu = not torch.cuda.is_available()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if config_file:
        cmd += ["--config_file", config_file]
    if cpu:
        cmd += ["--cpu"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mmreason.cli", *argv]
    return subprocess.call(cmd)
