#!/usr/bin/env bash
# GPU acceptance check: the GPU path measured in one short slot on one H100 / H200, everything written under one
# output folder (--out). Each stage runs under its own time limit, and all of them under --budget seconds, so that one
# hang cannot eat the slot; a stage's output goes to <out>/<stage>.log, its status and time to <out>/stages.tsv.
#
#   setup           the carried wheels (`make gpu-wheels`: .gpu-wheels/) into $GC_SITE, put first on PYTHONPATH, and
#                   mmreason itself (editable, offline); every carried module imported at its carried version
#   env             environment report: GPU, driver, torch / CUDA, library versions, attention kernels (env.json)
#   tests           the gpu-marked tests (tests.log, tests.xml)
#   bench           grpo_step.py --device cuda --preset 3b against TRL in bf16: s/step, peak memory, ratio
#   run-qwen2_5_vl  gpu_run.py: GRPO steps of the random-init Qwen2.5-VL-3B-shaped model, G=8, one 448x448 image,
#                   128 new tokens: tokens/s, sampling / scoring / update time, peak memory (run-*.json)
#   ckpt-qwen2_5_vl the same with gradient checkpointing on (the loss then repeats the prompts)
#   run-qwen3_vl    the same with Qwen3-VL-4B shapes
#   summary         summary.md and summary.json of the folder, printed at the end
#
#   bash benchmarks/gpu_check.sh                          # on the GPU machine (python3 there holds torch)
#   bash benchmarks/gpu_check.sh --out DIR --tar FILE     # also packs DIR into FILE (.tar.gz) when it ends
#   bash benchmarks/gpu_check.sh --dry-run --out DIR      # on a CPU: checks the wheel folder (if there is one), the
#                                                         # imports and every command line the CUDA stages would run
# Other options: --wheels DIR (.gpu-wheels), --workdir DIR (models, data and run folders: ~16 GB; /tmp/mmreason-gpu),
# --budget SECONDS (440), --steps N (20), --only STAGE[,STAGE] (those alone, e.g. to rerun one). The interpreter is
# $PYTHON (default python3).
set -uo pipefail

if [[ "${1:-}" == "--run-stage" ]]; then  # one stage, started by the driver below under `timeout`
  GC_STAGE="$2"
else
  GC_STAGE=""
  abs() { if [[ "$1" == /* ]]; then echo "$1"; else echo "$PWD/$1"; fi; }  # paths given: from the caller's folder
  export GC_DRY=0 GC_OUT=runs/gpu_check GC_WHEELS=.gpu-wheels GC_WORK=/tmp/mmreason-gpu GC_BUDGET=440 GC_STEPS=20
  GC_TAR="" GC_ONLY=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --dry-run) GC_DRY=1 ;;
      --out) GC_OUT="$(abs "$2")"; shift ;;
      --wheels) GC_WHEELS="$(abs "$2")"; shift ;;
      --workdir) GC_WORK="$(abs "$2")"; shift ;;
      --budget) GC_BUDGET="$2"; shift ;;
      --steps) GC_STEPS="$2"; shift ;;
      --tar) GC_TAR="$(abs "$2")"; shift ;;
      --only) GC_ONLY="$2"; shift ;;
      -h|--help) sed -n '2,23p' "${BASH_SOURCE[0]}"; exit 0 ;;
      *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
  done
  GC_SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
  cd "$(dirname "$GC_SELF")/.." || exit 1  # the defaults are the repository's own folders
  mkdir -p "$GC_OUT" || exit 1
  GC_OUT="$(cd "$GC_OUT" && pwd)"
  export GC_PY="${PYTHON:-python3}" GC_SITE="${GC_SITE:-/tmp/mmreason-gpu-site}"
fi

# A CUDA step: run it, or in a dry run record its command line (shell-quoted, one a line) for the check stage.
step() {
  if [[ "$GC_DRY" == 1 ]]; then
    printf '%q ' "$@" >>"$GC_OUT/commands.txt"
    printf '\n' >>"$GC_OUT/commands.txt"
    echo "[dry run, recorded] $*"
    return 0
  fi
  echo "+ $*"
  "$@"
}

stage_setup() {
  local wheels=() check=()
  [[ "$GC_DRY" == 1 ]] && check=(--allow-missing --compare-local)
  "$GC_PY" benchmarks/gpu_env.py wheels "$GC_WHEELS" "${check[@]}" || return 1
  shopt -s nullglob
  wheels=("$GC_WHEELS"/*.whl)
  shopt -u nullglob
  [[ ${#wheels[@]} -gt 0 ]] || wheels=("$GC_WHEELS/*.whl")
  step "$GC_PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$GC_SITE" \
    "${wheels[@]}" || return 1
  # editable: the package maps processors/ and rewards/ into mmreason (pyproject), which a bare PYTHONPATH cannot.
  # Into the interpreter's site-packages; where that is read-only, into $GC_SITE, whose .pth files a sitecustomize
  # there then reads (a PYTHONPATH folder is no site folder)
  step "$GC_PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . || {
    step "$GC_PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$GC_SITE" -e . &&
      echo "import site; site.addsitedir('$GC_SITE')" >"$GC_SITE/sitecustomize.py"
  } || return 1
  step "$GC_PY" benchmarks/gpu_env.py imports --wheels "$GC_WHEELS"
}

stage_env() {
  step nvidia-smi || echo "nvidia-smi failed: the report below still runs"
  step "$GC_PY" benchmarks/gpu_env.py report --out "$GC_OUT/env.json"
}

stage_tests() {
  local files
  files=$(grep -l "pytest.mark.gpu" tests/test_*.py) || { echo "no gpu-marked tests"; return 1; }
  # shellcheck disable=SC2086
  step "$GC_PY" -m pytest -q -m gpu -rA -p no:cacheprovider --timeout "$((GC_LIMIT - 15))" \
    --junitxml "$GC_OUT/tests.xml" $files
}

stage_bench() {
  # G = 8, one image, 3 timed steps after a warm-up; no objective check (time and memory go to the runs below)
  step "$GC_PY" benchmarks/grpo_step.py --device cuda --preset 3b --groups 8 --multi-image-group 0 --reps 3 \
    --max-new-tokens 128 --no-check --threads 8 --workdir "$GC_WORK/bench" --out "$GC_OUT/grpo_step.json"
}

gpu_run() {  # gpu_run() ARCH OUT-NAME [ARGS...]
  local arch="$1" name="$2"
  shift 2
  step "$GC_PY" benchmarks/gpu_run.py run --arch "$arch" --device cuda --workdir "$GC_WORK" \
    --out "$GC_OUT/$name.json" "$@"
}

stage_run_qwen2_5_vl() { gpu_run qwen2_5_vl run-qwen2_5_vl --steps "$GC_STEPS"; }
# a warm-up and 3 timed steps suffice: the update's time and memory are what checkpointing changes
stage_ckpt_qwen2_5_vl() { gpu_run qwen2_5_vl run-qwen2_5_vl-ckpt --steps 4 --gradient-checkpointing; }
stage_run_qwen3_vl() { gpu_run qwen3_vl run-qwen3_vl --steps "$GC_STEPS"; }

stage_check() {  # dry run only: imports, the environment report and every recorded command line, in one process
  "$GC_PY" benchmarks/gpu_env.py check --commands "$GC_OUT/commands.txt" --wheels "$GC_WHEELS" \
    --report "$GC_OUT/env.json"
}

stage_summary() { "$GC_PY" benchmarks/gpu_run.py summary "$GC_OUT"; }

if [[ -n "$GC_STAGE" ]]; then
  "stage_${GC_STAGE//-/_}"
  exit $?
fi

# ------------------------------------------------------------------------------------------------ driver
# stage and its own limit in seconds; the sum is above the budget on purpose: a stage gets what is left of it
STAGES=(setup:120 env:45 tests:150 bench:150 run-qwen2_5_vl:180 ckpt-qwen2_5_vl:90 run-qwen3_vl:180)
[[ "$GC_DRY" == 1 ]] && STAGES+=(check:240)
SUMMARY_LIMIT=20
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
if [[ "$GC_DRY" == 0 ]]; then
  # the machine is offline: no hub lookups (each would wait for its timeout); the carried wheels come first
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  export PYTHONPATH="$GC_SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
rm -f "$GC_OUT/commands.txt"
printf 'stage\tstatus\tseconds\tlimit\n' >"$GC_OUT/stages.tsv"
START=$(date +%s)
FAILED=0

pack() {
  [[ -n "$GC_TAR" ]] && tar -czf "$GC_TAR" -C "$(dirname "$GC_OUT")" "$(basename "$GC_OUT")"
  return 0
}
trap pack EXIT

run_stage() {  # run_stage NAME LIMIT: under min(LIMIT, what is left of the budget), output to NAME.log
  local name="$1" limit="$2" left t0 rc status
  left=$((GC_BUDGET - ($(date +%s) - START)))
  [[ "$name" == summary ]] || limit=$((limit < left ? limit : left))
  if [[ "$limit" -lt 20 ]]; then
    printf '%s\tskipped: budget spent\t0\t%s\n' "$name" "$limit" >>"$GC_OUT/stages.tsv"
    echo "== $name: skipped, the ${GC_BUDGET} s budget is spent"
    FAILED=1
    return
  fi
  t0=$(date +%s)
  GC_LIMIT="$limit" timeout -k 10 "$limit" bash "$GC_SELF" --run-stage "$name" >"$GC_OUT/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timeout" ;;
    *) status="failed (exit $rc)" ;;
  esac
  [[ "$GC_DRY" == 1 && $rc == 0 && "$name" != check && "$name" != summary ]] && status="ok (dry run)"
  [[ $rc == 0 ]] || FAILED=1
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" "$limit" >>"$GC_OUT/stages.tsv"
  echo "== $name: $status in $(($(date +%s) - t0)) s (limit $limit s)"
  [[ $rc == 0 ]] || tail -n 25 "$GC_OUT/$name.log" | sed 's/^/   | /'
}

for entry in "${STAGES[@]}"; do
  name="${entry%%:*}"
  if [[ -n "$GC_ONLY" && ",$GC_ONLY," != *",$name,"* ]]; then
    continue
  fi
  run_stage "$name" "${entry##*:}"
done
run_stage summary "$SUMMARY_LIMIT"
cat "$GC_OUT/summary.md" 2>/dev/null
echo "gpu_check: $(($(date +%s) - START)) s, output in $GC_OUT"
exit $FAILED
