"""What the GPU acceptance check (`benchmarks/gpu_check.sh`) needs on the GPU machine, and what travels to it.

The GPU machine is bare and offline: python 3.12, torch 2.11 + CUDA 13, transformers 5.17, accelerate, peft,
safetensors, tokenizers, huggingface-hub, pillow, torchvision, numpy, scipy, sympy, pandas, pyarrow, matplotlib,
pyyaml, typer, rich, tqdm, pytest (with pytest-timeout) and more, but nothing of ours. `WHEELS` is exactly what the
check needs beyond that, carried as wheels for CPython 3.12 on manylinux x86-64 at the versions installed here (the
versions the CPU tests pass with), at most `LIMIT_MIB` in all. Left out on purpose: PyAV (36 MB, video decoding only:
the check decodes no video), decord (the fallback video reader) and vLLM (its tests skip without it).

    python benchmarks/gpu_env.py download .gpu-wheels        # `make gpu-wheels`: the folder, replaced, + manifest
    python benchmarks/gpu_env.py wheels .gpu-wheels          # check a folder against the list (tags, versions, size)
    python benchmarks/gpu_env.py imports --wheels .gpu-wheels  # import every carried module at the carried version
    python benchmarks/gpu_env.py report --out env.json       # GPU, driver, versions, attention kernels, unmet needs
    python benchmarks/gpu_env.py check --commands commands.txt --report env.json   # gpu_check.sh --dry-run's check

Only the standard library and `packaging` are imported at the top: `download` and `wheels` run without torch.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata as metadata
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
MANIFEST = "manifest.json"
LIMIT_MIB = 60
PYTHON = (3, 12)
# pip matches platform tags exactly: every manylinux level up to the GPU image's glibc 2.39, and the legacy aliases
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(39, 4, -1)] + [
    f"manylinux{v}_x86_64" for v in ("2014", "2010", "1")
]

# (distribution, module it is imported as, why the check needs it although the GPU image lacks it)
WHEELS: tuple[tuple[str, str, str], ...] = (
    ("transformers", "transformers", "pyproject needs >= 5.20; the image has 5.17"),
    ("qwen-vl-utils", "qwen_vl_utils", "image resize rules of mmreason.processors"),
    ("reverse-geocode", "reverse_geocode", "geolocation reward, imported with every reward"),
    ("math-verify", "math_verify", "math reward"),
    ("latex2sympy2_extended", "latex2sympy2_extended", "math-verify's LaTeX parser"),
    ("antlr4-python3-runtime", "antlr4", "latex2sympy2_extended's parser runtime"),
    ("trl", "trl", "grpo_step.py's contender"),
    ("datasets", "datasets", "TRL's training data"),
    ("dill", "dill", "datasets"),
    ("multiprocess", "multiprocess", "datasets"),
    ("deepspeed", "deepspeed", "the ZeRO-2 gpu test; built here: PyPI has no wheel (its ops compile there on use)"),
    ("hjson", "hjson", "deepspeed's config"),
    ("pydantic", "pydantic", "deepspeed's config"),
    ("pydantic-core", "pydantic_core", "pydantic"),
    ("annotated-types", "annotated_types", "pydantic"),
    ("typing-inspection", "typing_inspection", "pydantic"),
    ("typing-extensions", "typing_extensions", "pydantic needs >= 4.16, newer than the image may have"),
)
# distributions PyPI has as source only: built here into pure-python wheels (against the torch installed here)
BUILT = {"deepspeed"}
# pyproject needs these but the check does not use them: not carried (see above)
NOT_CARRIED = {"av", "decord", "vllm"}
# the project modules the stages import (gpu_run.py, grpo_step.py, the CLI the gpu tests start)
PROJECT_MODULES = ("mmreason", "mmreason.cli", "mmreason.processors", "mmreason.rewards", "mmreason.train.stages")


def bench_module(name: str) -> Any:
    """A sibling script of benchmarks/ as a module (grpo_step: the 3b shapes; gpu_run: the run's parser)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


# ------------------------------------------------------------------------------------------------ wheels
def device_tags() -> set[Any]:
    """Wheel tags that install on the GPU machine's CPython 3.12, manylinux x86-64."""
    from packaging import tags

    abis = [f"cp{PYTHON[0]}{PYTHON[1]}", "abi3", "none"]
    found = set(tags.cpython_tags(PYTHON, abis=abis, platforms=PLATFORMS))
    return found | set(tags.compatible_tags(PYTHON, f"cp{PYTHON[0]}{PYTHON[1]}", PLATFORMS))


def local_versions() -> dict[str, str]:
    """The installed version of each carried distribution (the CPU tests' environment); KeyError: one is missing."""
    found = {}
    for dist, _, _ in WHEELS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            raise KeyError(f"{dist} is not installed here (TRL: pip install -e '.[bench]')") from None
    return found


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(dest: Path) -> list[str]:
    """Replace `dest` with exactly the carried wheels and their manifest; returns the problems (none: success)."""
    versions = local_versions()
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fetched = [f"{d}=={v}" for d, v in versions.items() if d not in BUILT]
    target = ["--python-version", f"{PYTHON[0]}.{PYTHON[1]}", "--implementation", "cp"]
    target += [arg for p in PLATFORMS for arg in ("--platform", p)]
    _pip("download", "-q", "--no-deps", "--only-binary=:all:", *target, "-d", str(tmp), *fetched)
    for dist in sorted(BUILT):
        _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp), f"{dist}=={versions[dist]}")
    by_name = {canonicalize_name(parse_wheel_filename(p.name)[0]): p for p in tmp.glob("*.whl")}
    manifest = {
        "python": f"cp{PYTHON[0]}{PYTHON[1]}",
        "platform": "manylinux x86_64",
        "made_with": {"python": platform.python_version(), "torch": _version("torch")},
        "wheels": [
            {
                "dist": dist,
                "version": versions[dist],
                "file": by_name[canonicalize_name(dist)].name,
                "bytes": by_name[canonicalize_name(dist)].stat().st_size,
                "sha256": _sha256(by_name[canonicalize_name(dist)]),
            }
            for dist, _, _ in WHEELS
            if canonicalize_name(dist) in by_name
        ],
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    problems, notes = check_wheels(dest, allow_missing=False, compare_local=True)
    print("\n".join(notes))
    return problems


def check_wheels(folder: Path, allow_missing: bool, compare_local: bool) -> tuple[list[str], list[str]]:
    """Problems and notes of a wheel folder: exactly the listed distributions, each once, as its manifest says
    (version, size, hash), installable on the GPU machine, at most LIMIT_MIB in all; with `compare_local`, at the
    versions installed here. An absent folder is only a note when `allow_missing`."""
    if not folder.is_dir():
        note = f"{folder}: no wheel folder (make gpu-wheels makes it; a GPU run needs it)"
        return ([] if allow_missing else [note]), ([note] if allow_missing else [])
    if not (folder / MANIFEST).is_file():
        return [f"{folder}: no {MANIFEST}: make gpu-wheels writes the folder with it"], []
    entries = json.loads((folder / MANIFEST).read_text())["wheels"]
    problems = []
    listed = {canonicalize_name(d) for d, _, _ in WHEELS}
    recorded = {canonicalize_name(e["dist"]) for e in entries}
    if listed != recorded:
        missing, extra = sorted(listed - recorded), sorted(recorded - listed)
        problems.append(f"{folder}: the wheel list changed (missing {missing}, not listed {extra}): make gpu-wheels")
    files, named = {p.name for p in folder.glob("*.whl")}, {e["file"] for e in entries}
    if files != named:
        problems.append(f"{folder}: wheel files {sorted(files ^ named)} do not match {MANIFEST}")
    tags, here = device_tags(), _installed_versions() if compare_local else {}
    for e in entries:
        path = folder / e["file"]
        if e["file"] not in files:
            continue
        name, version, _, wheel_tags = parse_wheel_filename(e["file"])
        if canonicalize_name(name) != canonicalize_name(e["dist"]) or str(version) != e["version"]:
            problems.append(f"{e['file']}: not {e['dist']} {e['version']}")
        if not wheel_tags & tags:
            problems.append(f"{e['file']}: does not install on CPython 3.12, manylinux x86-64")
        if path.stat().st_size != e["bytes"] or _sha256(path) != e["sha256"]:
            problems.append(f"{e['file']}: size or hash differs from {MANIFEST}")
        if here.get(canonicalize_name(e["dist"]), e["version"]) != e["version"]:
            local = here[canonicalize_name(e["dist"])]
            problems.append(f"{e['dist']}: {e['version']} in {folder}, {local} here: make gpu-wheels again")
    total = sum((folder / f).stat().st_size for f in files)
    if total > LIMIT_MIB * 2**20:
        problems.append(f"{folder}: {total / 2**20:.1f} MiB of wheels, over the {LIMIT_MIB} MiB limit")
    notes = [f"{folder}: {len(files)} wheels, {total / 2**20:.1f} MiB (limit {LIMIT_MIB} MiB)"]
    notes += [f"  {e['file']}  {e['bytes'] / 2**20:.2f} MiB" for e in entries]
    return problems, notes


def _installed_versions() -> dict[str, str]:
    found = {}
    for dist, _, _ in WHEELS:
        try:
            found[canonicalize_name(dist)] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


# ------------------------------------------------------------------------------------------------ imports, report
def imports(wheels: Path | None = None, strict: bool = True) -> list[str]:
    """Import every carried module and the project's; with a wheel folder, each carried distribution must be the
    carried version (the image's own must not win). Not `strict` (a dry run on a CPU): a carried module that is not
    installed here is only noted (TRL is a benchmark extra). Returns the problems."""
    problems = []
    carried = {}
    if wheels is not None and (wheels / MANIFEST).is_file():
        carried = {e["dist"]: e["version"] for e in json.loads((wheels / MANIFEST).read_text())["wheels"]}
    for dist, module, _ in WHEELS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if strict or exc.name != module:
                problems.append(f"import {module}: {exc}")
            else:
                print(f"note: {module} is not installed here, not checked")
            continue
        except Exception as exc:  # report every failure, not only the first
            problems.append(f"import {module}: {type(exc).__name__}: {exc}")
            continue
        if dist in carried and _version(dist) != carried[dist]:
            problems.append(f"{dist}: {_version(dist)} imported, {carried[dist]} carried (PYTHONPATH order?)")
    for module in PROJECT_MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:
            problems.append(f"import {module}: {type(exc).__name__}: {exc}")
    if strict or "trl" in sys.modules:
        try:
            from trl import GRPOTrainer  # noqa: F401  (trl imports lazily: the trainer is what grpo_step uses)
        except Exception as exc:
            problems.append(f"from trl import GRPOTrainer: {type(exc).__name__}: {exc}")
    return problems


def unmet_requirements() -> list[str]:
    """pyproject's runtime, bench and deepspeed requirements that this environment does not meet."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return ["(pyproject not read: Python 3.11+ has tomllib)"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    unmet = []
    for line in [*project["dependencies"], *extras.get("bench", []), *extras.get("deepspeed", [])]:
        req = Requirement(line)
        installed = _version(req.name)
        expected = " (not carried)" if canonicalize_name(req.name) in NOT_CARRIED else ""
        if installed == "not installed":
            unmet.append(f"{req.name}: not installed{expected}")
        elif not req.specifier.contains(installed, prereleases=True):
            unmet.append(f"{req.name} {installed}: needs {req.specifier}{expected}")
    return unmet


def gpu_facts() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"name": "no GPU", "count": 0}
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "count": torch.cuda.device_count(),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "bf16": torch.cuda.is_bf16_supported(),
    }


def attention_facts() -> dict[str, Any]:
    """Which attention kernels are there: torch's sdpa backends (sdpa picks flash / memory-efficient / cuDNN per
    call) and transformers' flash_attention_2 (needs the flash-attn package)."""
    import torch
    from transformers.utils import is_flash_attn_2_available

    facts = {"flash_attention_2": is_flash_attn_2_available(), "flash_attn": _version("flash-attn")}
    for name in ("flash_sdp_enabled", "mem_efficient_sdp_enabled", "cudnn_sdp_enabled", "math_sdp_enabled"):
        fn = getattr(torch.backends.cuda, name, None)
        facts[f"sdpa_{name.removesuffix('_enabled')}"] = bool(fn()) if fn is not None else None
    return facts


def report() -> dict[str, Any]:
    """The environment report: machine, GPU, driver, library versions, attention kernels, unmet requirements."""
    import torch

    smi = shutil.which("nvidia-smi")
    driver = "no nvidia-smi"
    if smi:
        done = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        driver = done.stdout.strip() or done.stderr.strip()
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "driver": driver,
    }
    for dist in (
        "transformers",
        "tokenizers",
        "accelerate",
        "peft",
        "safetensors",
        "huggingface-hub",
        "trl",
        "datasets",
        "deepspeed",
        "qwen-vl-utils",
        "mmreason",
    ):
        versions[dist] = _version(dist)
    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)),
        "gpu": gpu_facts(),
        "versions": versions,
        "attention": attention_facts(),
        "unmet_requirements": unmet_requirements(),
    }


# ------------------------------------------------------------------------------------------------ dry-run check
def check_command(argv: list[str], models: dict[str, str]) -> str:
    """One command line gpu_check.sh recorded instead of running it: parsed by its own script's parser (and, for
    the runs, its run config built and the model's parameters counted on the meta device). Returns a note;
    SystemExit / an exception is the problem."""
    script = next((a for a in argv if a.endswith(".py")), "")
    args = argv[argv.index(script) + 1 :] if script else []
    if script.endswith("grpo_step.py"):
        parsed = bench_module("grpo_step").parse(args)
        return f"grpo_step.py: {parsed.preset} {parsed.arch} on {parsed.device}, {_params(parsed, models)} parameters"
    if script.endswith("gpu_run.py"):
        gpu_run = bench_module("gpu_run")
        parsed = gpu_run.parse(args)
        if parsed.command == "summary":
            return "gpu_run.py summary"
        cfg = gpu_run.run_config(parsed, "MODEL", "TRAIN")
        return (
            f"gpu_run.py: {cfg.name}, {cfg.grpo.steps} steps, G={cfg.grpo.group_size}, "
            f"{cfg.grpo.max_new_tokens} new tokens, {_params(parsed, models)} parameters"
        )
    if script.endswith("gpu_env.py"):
        parse(args)
        return f"gpu_env.py {args[0]}"
    if argv[1:3] == ["-m", "pip"]:
        return "pip install: on the GPU machine only"
    if "pytest" in argv:
        files = [a for a in argv if a.startswith("tests/") and a.endswith(".py")]
        if not files or not all("pytest.mark.gpu" in (ROOT / f).read_text() for f in files):
            raise ValueError(f"pytest: no gpu-marked test file among {files}")
        return f"pytest -m gpu: {' '.join(files)}"
    return f"{Path(argv[0]).name}: runs on the GPU machine only"


def _params(parsed: argparse.Namespace, models: dict[str, str]) -> str:
    """Parameter count of the run's model, instantiated on the meta device (no memory, no init)."""
    key = f"{parsed.preset}-{parsed.arch}"
    if key not in models:
        import torch
        from transformers import AutoModelForImageTextToText

        from mmreason.models.tiny import build_config, build_tokenizer

        tokenizer = build_tokenizer(parsed.arch)
        if parsed.preset == "3b":
            config = bench_module("grpo_step").shaped_config(parsed.arch, tokenizer)
        else:
            config = build_config(tokenizer, parsed.arch, hidden_size=256, layers=4, vision_depth=4)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
        models[key] = f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B"
    return models[key]


def check(commands: Path, wheels: Path, report_out: Path | None) -> list[str]:
    """gpu_check.sh --dry-run's check: imports, the environment report, and every recorded command line."""
    problems = imports(wheels, strict=False)
    if report_out is not None:
        report_out.write_text(json.dumps(report(), indent=2, default=str) + "\n")
    models: dict[str, str] = {}
    lines = commands.read_text().splitlines() if commands.is_file() else []
    for line in filter(str.strip, lines):
        argv = shlex.split(line)
        try:
            print("ok:", check_command(argv, models))
        except (Exception, SystemExit) as exc:
            problems.append(f"{line.strip()}: {type(exc).__name__}: {exc}")
    return problems


# ------------------------------------------------------------------------------------------------ command line
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("download", help="make gpu-wheels: the wheel folder").add_argument("folder", type=Path)
    w = sub.add_parser("wheels", help="check a wheel folder")
    w.add_argument("folder", type=Path)
    w.add_argument("--allow-missing", action="store_true", help="an absent folder is a note, not a failure")
    w.add_argument("--compare-local", action="store_true", help="the versions must be the ones installed here")
    sub.add_parser("imports", help="import every carried module").add_argument("--wheels", type=Path)
    sub.add_parser("report", help="environment report (JSON)").add_argument("--out", type=Path)
    c = sub.add_parser("check", help="gpu_check.sh --dry-run: imports, report, recorded command lines")
    c.add_argument("--commands", type=Path, required=True)
    c.add_argument("--wheels", type=Path, default=ROOT / ".gpu-wheels")
    c.add_argument("--report", type=Path)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.command == "download":
        problems = download(args.folder)
    elif args.command == "wheels":
        problems, notes = check_wheels(args.folder, args.allow_missing, args.compare_local)
        print("\n".join(notes))
    elif args.command == "imports":
        problems = imports(args.wheels)
    elif args.command == "report":
        text = json.dumps(report(), indent=2, default=str)
        if args.out:
            args.out.write_text(text + "\n")
        print(text)
        problems = []
    else:
        problems = check(args.commands, args.wheels, args.report)
    for problem in problems:
        print("PROBLEM:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
