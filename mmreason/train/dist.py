"""Several processes and machines through accelerate: one `Dist` object owns the Accelerator and the few
collective operations the trainers need (sums, object gathers, barriers), so a single-process run and an
`accelerate launch` run (DDP, DeepSpeed ZeRO-2/3, FSDP) go through the very same loops.

Layout of a GRPO step across R ranks: each rank takes every R-th prompt of the global batch (`SampleStream`
rank/world_size), generates all G completions of its prompts (so a group never spans ranks and its advantages are
computed locally), and the loss is normalised by global token / sequence counts so the gradients DDP averages equal
those of one process holding the whole batch (DDP averages gradients over ranks, so each rank's loss is its share of
the global sum divided by the global count, times R). Rank 0 alone writes checkpoints, metrics and the rollout store,
from rows gathered from every rank (sorted by global prompt position, so a 2-process store reads like a 1-process one).
Sampling is seeded per prompt (`mmreason.rollout.engine.prompt_generators`), so a prompt's G completions do not depend
on which rank generates them. Under DeepSpeed rank 0 still writes the checkpoint, but every rank first writes its
optimizer shard into it (`save_engine_state`), restored on resume (`load_engine_state`).

On a CPU-only machine several ranks run DDP over gloo, and DeepSpeed ZeRO-2/3 (offload too) runs over gloo with
DeepSpeed's CPU accelerator (slow; for tests and debugging; see `Dist`). FSDP needs CUDA: accelerate 1.15 turns FSDP
on for GPU-type backends only (`check_launch_config` refuses it on CPU).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

# a checkpoint's DeepSpeed engine state: <checkpoint>/<ENGINE_DIR>/<ENGINE_TAG>/ (see mmreason.train.checkpoint)
ENGINE_DIR = "deepspeed"
ENGINE_TAG = "zero"


class Dist:
    """Thin wrapper over `accelerate.Accelerator` (created for single-process runs too: one code path)."""

    def __init__(self, device: str = "auto", mixed_precision: str = "no") -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

        cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        # unused parameters are normal here (a text-only batch never touches the vision tower): without this flag
        # DDP would wait forever for their gradients
        handlers: list[Any] = [DistributedDataParallelKwargs(find_unused_parameters=True)]
        if deepspeed_requested() and not torch.cuda.is_available():
            # DeepSpeed on CPU (gloo; for tests): accelerate 1.15 drops DeepSpeed when cpu=True, and with cpu=False
            # but no CUDA it picks no backend, counts one process and sets up no DeepSpeed process group (the
            # engine's batch-size check then fails). An explicit gloo backend makes it call
            # deepspeed.init_distributed("gloo") and count the ranks; DeepSpeed picks its CPU accelerator itself.
            cpu = False
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        self.acc = Accelerator(cpu=cpu, mixed_precision=mixed_precision, kwargs_handlers=handlers)

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

    @property
    def distributed_type(self) -> str:
        return str(self.acc.distributed_type).rsplit(".", 1)[-1]

    @property
    def shards_state(self) -> bool:
        """Whether weights / optimizer states are sharded across ranks (DeepSpeed, FSDP)."""
        return self.distributed_type in ("DEEPSPEED", "FSDP")

    def release(self, wrapped: Any) -> None:
        """Let go of a previous stage's DeepSpeed engine before the next stage prepares its own around the same
        model: its gradient hooks stay on the parameters otherwise, and the new engine's gradient reduction then
        finds no gradients."""
        if hasattr(wrapped, "destroy"):
            wrapped.destroy()
        self.acc.free_memory()

    def prepare(self, *objects: Any, max_grad_norm: float | None = None) -> Any:
        plugin = getattr(self.acc.state, "deepspeed_plugin", None)
        if plugin is not None:  # no dataloader goes through prepare, so DeepSpeed must be told the micro-batch
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
            if max_grad_norm is not None:
                # DeepSpeed clips inside its own step at its config's value (accelerate's clip_grad_norm_ is a
                # no-op then): the stage's max_grad_norm replaces the accelerate config's gradient_clipping
                plugin.deepspeed_config["gradient_clipping"] = max_grad_norm
        return self.acc.prepare(*objects)

    @property
    def zero3(self) -> bool:
        plugin = getattr(self.acc.state, "deepspeed_plugin", None)
        return plugin is not None and int(plugin.zero_stage or 0) == 3

    @property
    def deepspeed(self) -> bool:
        return self.distributed_type == "DEEPSPEED"

    def without_zero_init(self) -> Any:
        """Context in which transformers builds models whole: under ZeRO-3 (zero3_init_flag) it otherwise
        partitions every model it builds or loads, a collective, which one rank alone (e.g. building the tiny
        model's cache) would wait on forever."""
        plugin = getattr(self.acc.state, "deepspeed_plugin", None)
        if plugin is None:
            return contextlib.nullcontext()
        return plugin.zero3_init_context_manager(enable=False)

    def save_engine_state(self, wrapped: Any, folder: Path) -> None:
        """DeepSpeed: every rank writes its optimizer shard (and the engine's module states) under `folder`, the
        `ENGINE_DIR` of a checkpoint being staged (collective: call on every rank)."""
        # `latest` (the tag) is written too: DeepSpeed's weights-only load of a ZeRO-3 checkpoint reads it
        wrapped.save_checkpoint(str(folder), tag=ENGINE_TAG)

    def load_engine_state(self, wrapped: Any, folder: Path, optimizer_states: bool) -> None:
        """Inverse of `save_engine_state` into a freshly prepared engine (collective): the weights, and with
        `optimizer_states` each rank's optimizer shard (same number of ranks and ZeRO stage as when saved)."""
        loaded, _ = wrapped.load_checkpoint(
            str(folder),
            tag=ENGINE_TAG,
            load_optimizer_states=optimizer_states,
            load_lr_scheduler_states=False,  # the LR scheduler is not DeepSpeed's: it is in scheduler.pt
            load_module_only=not optimizer_states,
        )
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load its checkpoint from {folder}/{ENGINE_TAG}")

    def generation_context(self, wrapped: Any) -> Any:
        """Context for generating with the unwrapped model: under ZeRO-3 the sharded parameters are gathered for
        its duration (collective: enter on every rank; costs one full copy of the weights per GPU meanwhile)."""
        if not self.zero3 or wrapped is None:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(wrapped.parameters()))

    def model_state(self, wrapped: Any) -> dict[str, Any] | None:
        """The full state dict of a prepared model, gathered under ZeRO-3 / FSDP (collective: call on every rank);
        None when the unwrapped model's own state dict is already complete (one process, DDP, ZeRO-2)."""
        if not self.shards_state or (self.deepspeed and not self.zero3):
            return None
        return self.acc.get_state_dict(wrapped)

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

    def close(self) -> None:
        """End of a multi-process run (collective): every rank meets, then the process group is torn down while
        the interpreter is still whole. Left to interpreter shutdown, a gloo worker thread may release the last
        reference of an async all-gather (ZeRO-3) just then, and taking the GIL there aborts the finished run
        ("terminate called without an active exception", pytorch/pytorch#190489). The Accelerator is unusable after.
        """
        if self.world_size == 1 or not torch.distributed.is_initialized():
            return
        import gc

        self.barrier()
        self.acc.free_memory()  # accelerate's references to the engine and optimizers
        gc.collect()
        torch.distributed.destroy_process_group()

    def autocast(self) -> Any:
        return self.acc.autocast()

    def main_first(self) -> Any:
        """Context: rank 0 runs the block first (e.g. builds a shared cache), the others after it."""
        return self.acc.main_process_first()


def mixed_precision_for(dtype: str, device: str = "auto") -> str:
    """accelerate's mixed_precision for the model dtype: bf16/fp16 autocast on GPUs, none on CPU (where the weights
    already are in their dtype and CPU autocast only costs time)."""
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not on_gpu:
        return "no"
    return {"bfloat16": "bf16", "float16": "fp16"}.get(dtype, "no")


def split_per_rank(total: int, world_size: int, what: str) -> int:
    """`total` (a global count per step) divided evenly between ranks; a clear error when it does not divide."""
    from mmreason.config import ConfigError

    if total % world_size:
        raise ConfigError(
            f"{what}={total} must be divisible by the number of processes ({world_size}): it is the global count per "
            f"step and each process takes {what} / {world_size}"
        )
    return total // world_size


def deepspeed_requested() -> bool:
    """Whether this process was started by accelerate's DeepSpeed launcher (a DeepSpeed accelerate config)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def launched_by_accelerate() -> bool:
    """Whether this process was started by `accelerate launch` / torchrun (several ranks)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def config_kind(config_file: str | Path) -> str:
    """The distributed type of an accelerate config file: MULTI_GPU, DEEPSPEED, FSDP, NO, ..."""
    from accelerate.commands.config.config_args import load_config_from_file

    return str(load_config_from_file(str(config_file)).distributed_type).rsplit(".", 1)[-1]


def check_launch_config(config_file: str | Path, cuda: bool | None = None) -> str:
    """The distributed type of an accelerate config file; FSDP configs are refused without CUDA, and DeepSpeed ones
    when DeepSpeed is not installed.

    DeepSpeed ZeRO-2/3 runs on CPU (gloo, DeepSpeed's CPU accelerator; slow, for tests): see `Dist`. FSDP does not:
    accelerate 1.15 only turns FSDP on for a GPU-type backend, so on a CPU-only machine its distributed type stays
    NO and every rank would silently train its own unsharded, unsynchronised copy.
    """
    import importlib.util

    from mmreason.config import ConfigError

    kind = config_kind(config_file)
    if cuda is None:
        cuda = torch.cuda.is_available()
    if kind == "FSDP" and not cuda:
        raise ConfigError(
            f"{config_file}: FSDP needs CUDA GPUs (accelerate sets up no FSDP on CPU); on CPU use a DeepSpeed config "
            "(mmreason/configs/accelerate/zero2.yaml, zero3.yaml) or --num-processes N alone (DDP, gloo)"
        )
    if kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"{config_file}: DeepSpeed is not installed (pip install --no-build-isolation deepspeed)")
    return kind


def free_port() -> int:
    """A TCP port free right now on this machine (for the rendezvous of a local multi-process launch)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_command(
    num_processes: int | None, argv: list[str], config_file: str | None = None, cpu: bool | None = None
) -> list[str]:
    """The `accelerate launch ... -m mmreason.cli <argv>` command line. With a config file its own settings
    (machines, mixed precision, DeepSpeed / FSDP) stand, unless num_processes is given; without one, a single
    machine with num_processes ranks.

    Several CPU ranks go through accelerate's `--multi_gpu` launcher (torchrun) with ACCELERATE_USE_CPU set (see
    `relaunch`): its `--cpu` launcher starts several processes only through mpirun. The ranks then talk over gloo.
    A DeepSpeed config takes accelerate's DeepSpeed launcher (torchrun on one machine, with the config's or the given
    num_processes) on CPU too.
    """
    if cpu is None:
        cpu = not torch.cuda.is_available()
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if num_processes:
        cmd += ["--num_processes", str(num_processes)]
    if config_file:
        cmd += ["--config_file", str(config_file)]
    else:
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd += ["--main_process_port", str(free_port())]
        cmd += ["--multi_gpu"] if num_processes and num_processes > 1 else (["--cpu"] if cpu else [])
    return [*cmd, "-m", "mmreason.cli", *argv]


def launch_env(config_file: str | None = None, cpu: bool | None = None) -> dict[str, str]:
    """The environment of the launch: ACCELERATE_USE_CPU on a CPU-only machine, except for a DeepSpeed config (with
    it accelerate creates a CPU state without DeepSpeed: `Dist` sets DeepSpeed on CPU up itself)."""
    if cpu is None:
        cpu = not torch.cuda.is_available()
    env = dict(os.environ)
    if config_file and config_kind(config_file) == "DEEPSPEED":
        env.pop("ACCELERATE_USE_CPU", None)  # an inherited one would drop DeepSpeed just the same
    elif cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def relaunch(
    num_processes: int | None, argv: list[str], config_file: str | None = None, cpu: bool | None = None
) -> int:
    """Run `mmreason <argv>` under `accelerate launch` (see `launch_command`, `launch_env`); returns its exit code."""
    return subprocess.call(launch_command(num_processes, argv, config_file, cpu), env=launch_env(config_file, cpu))
