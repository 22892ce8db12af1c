#!/usr/bin/env bash
# The GPU check: one prepared run for a bare machine with an NVIDIA GPU and no internet (Python 3.12 with a
# CUDA build of torch, nvcc, cmake; an H100/H200-class GPU finishes it in under 8 minutes).  It
#   1. installs the carried wheels (benchmarks/gpu_wheels.txt, downloaded beforehand by gpu_wheels.sh) into a
#      private folder on PYTHONPATH,
#   2. builds certseg_rt._ext there with nvcc for that GPU's compute capability (CUDA kernels required),
#   3. runs the GPU tests (pytest -m gpu: CUDA noise and votes against the CPU kernels, fused == eager counts,
#      graph replay == uncaptured run, torch-cuda fp32 certificates against CPU torch, TensorRT where importable),
#   4. runs `certseg-rt bench --quick --gpu-only` at 128 and at 256 (torch-cuda eager and fused, fp32/fp16/bf16),
# and writes everything into one results folder (at most 8 files): summary.txt (environment, each step's status
# and seconds, the test summary, the bench tables), log.txt (all output), junit.xml, bench-<size>/bench.{json,md}.
#
# Usage: bash benchmarks/gpu_check.sh [--dry-run] [--out DIR]   (DIR defaults to $OUT, else certseg-out/gpu-check)
#   --dry-run: list what it would run and which wheels it carries, run nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

dry=0
results=${OUT:-certseg-out/gpu-check}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --out) results=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

py=${PYTHON:-python3}
wheels_dir=${WHEELS:-.whl}
site=${SITE_DIR:-/tmp/certseg-gpu-site}
build=build/gpu-check
budget=${BUDGET_S:-460}  # seconds for the whole check: under 8 minutes with the machine's start left over
limit=$((64 * 1024 * 1024))
gpu_tests=(tests/test_torch_cuda.py tests/test_tensorrt.py)
bench_sizes=(128 256)

# ---- the carried wheels: exactly those listed, one version each ----------------------------------------------
mapfile -t wanted < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' benchmarks/gpu_wheels.txt | grep -v '^$')
wheel_files=()
missing=()
for req in "${wanted[@]}"; do
  name=${req%%==*}; version=${req##*==}
  match=$(ls "$wheels_dir"/"${name//-/_}"-"$version"-*.whl 2>/dev/null | head -1)
  if [ -n "$match" ]; then wheel_files+=("$match"); else missing+=("$req"); fi
done

if [ "$dry" = 1 ]; then
  echo "gpu_check.sh --dry-run: nothing is run.  Results would go to $results (at most 8 files)."
  echo
  echo "Wheels carried ($wheels_dir, from benchmarks/gpu_wheels.txt; CPython 3.12, manylinux x86_64):"
  total=0
  for req in "${wanted[@]}"; do
    name=${req%%==*}; version=${req##*==}
    f=$(ls "$wheels_dir"/"${name//-/_}"-"$version"-*.whl 2>/dev/null | head -1)
    if [ -n "$f" ]; then
      size=$(stat -c %s "$f"); total=$((total + size))
      printf '  %-28s %8d KiB  %s\n' "$req" $((size / 1024)) "$f"
    else
      printf '  %-28s  missing: run bash benchmarks/gpu_wheels.sh here first\n' "$req"
    fi
  done
  echo "  together $((total / 1024)) KiB of the $((limit / 1024)) KiB that may travel"
  echo
  echo "Steps (budget ${budget} s in all; each step's timeout is what is left of it):"
  echo "  0. environment: nvidia-smi -L; $py: torch, torch.version.cuda, device name and compute capability; nvcc --version"
  echo "  1. $py -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site <the ${#wanted[@]} wheels>"
  echo "     export PYTHONPATH=$repo:$site"
  echo "  2. cmake -S cpp_ext -B $build [-G Ninja] -DCERTSEG_CUDA=ON -DCERTSEG_BUILD_PYTHON=ON -DCERTSEG_BUILD_EXAMPLES=OFF \\"
  echo "       -DCERTSEG_BUILD_SHARED=OFF -DCMAKE_CUDA_ARCHITECTURES=<the GPU's, e.g. 90> -DPython_EXECUTABLE=\$($py -c 'import sys; print(sys.executable)')"
  echo "     cmake --build $build --parallel; copy $build/_ext*.so into certseg_rt/"
  echo "     $py -c 'from certseg_rt._ext_loader import ext; assert ext.cuda_compiled() and ext.cuda_device_count() > 0'"
  echo "  3. $py -m pytest -m gpu -rs -p no:cacheprovider --junitxml=$results/junit.xml ${gpu_tests[*]}"
  for s in "${bench_sizes[@]}"; do
    echo "  4. $py -m certseg_rt.cli bench --quick --gpu-only --sizes $s --out $results/bench-$s"
  done
  echo "  5. summary.txt: environment, step status and seconds, the pytest summary line, the bench tables"
  [ ${#missing[@]} -eq 0 ] || { echo; echo "not ready: missing wheels: ${missing[*]}"; exit 1; }
  exit 0
fi

# ---- the run ---------------------------------------------------------------------------------------------------
mkdir -p "$results"
summary=$results/summary.txt
log=$results/log.txt
: > "$summary"; : > "$log"
start=$(date +%s)
status=0
say() { echo "$*" | tee -a "$summary"; }
left() { echo $(( budget - ($(date +%s) - start) )); }

step() {  # step NAME CAP_SECONDS COMMAND...: run with a timeout (the smaller of CAP and what is left), log it
  local name=$1 cap=$2; shift 2
  local t; t=$(left); [ "$cap" -lt "$t" ] && t=$cap
  if [ "$t" -le 5 ]; then say "SKIP  $name (budget spent)"; status=1; return 1; fi
  local t0; t0=$(date +%s)
  echo "===== $name (timeout ${t}s): $*" >> "$log"
  timeout --kill-after=10 "$t" "$@" >> "$log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then say "OK    $name (${dt}s)"; else say "FAIL  $name (rc $rc, ${dt}s; see log.txt)"; status=1; fi
  return $rc
}

if [ ${#missing[@]} -gt 0 ]; then
  say "FAIL  wheels missing from $wheels_dir: ${missing[*]} (run bash benchmarks/gpu_wheels.sh where pip works)"
  exit 1
fi

say "== environment"
{ if command -v nvidia-smi >/dev/null; then nvidia-smi -L 2>&1; else echo "nvidia-smi: not found"; fi
  "$py" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda, "| device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none", torch.cuda.get_device_capability() if torch.cuda.is_available() else "")' 2>&1
  (nvcc --version 2>&1 || /usr/local/cuda/bin/nvcc --version 2>&1) | tail -1
} | tee -a "$summary"

say "== steps"
step "install ${#wheel_files[@]} wheels" 60 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target "$site" "${wheel_files[@]}" || exit 1
export PYTHONPATH="$repo:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

arch=$("$py" -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}{n}")' 2>>"$log") || arch=90
export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
generator=(); command -v ninja >/dev/null && generator=(-G Ninja)
rm -rf "$build"
step "configure the extension (CUDA arch $arch)" 90 cmake -S cpp_ext -B "$build" "${generator[@]}" -DCERTSEG_CUDA=ON \
  -DCERTSEG_BUILD_PYTHON=ON -DCERTSEG_BUILD_EXAMPLES=OFF -DCERTSEG_BUILD_SHARED=OFF -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" -DPython_EXECUTABLE="$("$py" -c 'import sys; print(sys.executable)')" || exit 1
step "build the extension with nvcc" 180 cmake --build "$build" --parallel || exit 1
rm -f certseg_rt/_ext*.so && cp "$build"/_ext*.so certseg_rt/
step "the extension sees the GPU" 60 "$py" -c 'from certseg_rt._ext_loader import EXTENSION_STATUS as s, ext
print(ext.__file__, s, "devices:", ext.cuda_device_count())
assert s["cuda"] and ext.cuda_device_count() > 0' || exit 1

step "pytest -m gpu" 200 "$py" -m pytest -m gpu -rs -p no:cacheprovider -o addopts="" --junitxml="$results/junit.xml" \
  "${gpu_tests[@]}"
for s in "${bench_sizes[@]}"; do
  step "bench --quick --gpu-only at ${s}x${s}" 240 "$py" -m certseg_rt.cli bench --quick --gpu-only --sizes "$s" \
    --out "$results/bench-$s"
done

say "== tests"
grep -E '^(=+ .*(passed|failed|error|skipped).* =+|SKIPPED|FAILED|ERROR)' "$log" | tail -25 | tee -a "$summary"
for s in "${bench_sizes[@]}"; do
  if [ -f "$results/bench-$s/bench.md" ]; then say "== bench ${s}x${s}"; tee -a "$summary" < "$results/bench-$s/bench.md"; fi
done
say "== total $(( $(date +%s) - start ))s, status $status (0: every step passed)"
exit $status
