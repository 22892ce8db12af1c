#!/usr/bin/env bash
# The GPU check: one prepared run for a bare machine with an NVIDIA GPU and no internet (Python 3.12 with a
# CUDA build of torch and Triton, nvcc, cmake; an H100/H200-class GPU finishes it in under 7 minutes, compiles
# included).  It
#   1. installs the carried wheels (benchmarks/gpu_wheels.txt, downloaded beforehand by gpu_wheels.sh) into a
#      private folder on PYTHONPATH,
#   2. builds certseg_rt._ext there with nvcc for that GPU's compute capability (CUDA kernels required),
#   3. runs the GPU tests (pytest -m gpu: CUDA noise and votes, plain and packed, against the CPU kernels; noise in
#      a replayed graph following the counter; fused == eager counts; graph replay == uncaptured; packed == one
#      image at a time; fp32 certificates against CPU torch; the careful baseline; the compiled model's parity and
#      its on-disk cache; TensorRT where importable),
#   4. bench --gpu-only at 128 and 256, n0 10 + n 100: the careful baseline (fp32/fp16/bf16 x NCHW/channels_last),
#      the weak eager loop (fp32), the fused loop (fp32/fp16/bf16) and the compiled fused loop (fp16), then the
#      throughput rows (64 held-out phantoms, each form's fastest row),
#   5. bench --gpu-only at 128 and 256, n0 100 + n 1000 (SegCertify's defaults), the fastest candidates,
# and writes everything into one results folder (7 files): summary.txt (environment, each step's status and
# seconds, the test summary, the bench tables), log.txt (all output), junit.xml, bench/bench.{json,md},
# bench-n1000/bench.{json,md}.  The bench files are rewritten after every row, so a step stopped by its timeout
# keeps the rows it had.  Inductor's cache goes to $CACHE_DIR (default /tmp/certseg-gpu-cache), never the results.
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
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

py=${PYTHON:-python3}
wheels_dir=${WHEELS:-.whl}
site=${SITE_DIR:-/tmp/certseg-gpu-site}
cache=${CACHE_DIR:-/tmp/certseg-gpu-cache}
build=build/gpu-check
budget=${BUDGET_S:-420}  # seconds for the whole check: 7 minutes, compiles included
limit=$((64 * 1024 * 1024))
gpu_tests=(tests/test_torch_cuda_gpu.py tests/test_tensorrt.py)
sizes=128,256
# n0 10 + n 100: every row the issue asks for (careful in each precision and layout, the weak eager row, fused,
# fused compiled); then n0 100 + n 1000: the fastest candidates of each kind only (the rest scales with n).
latency_rows=torch-cuda-careful:fp32:nchw,torch-cuda-careful:fp32:channels_last,torch-cuda-careful:fp16:nchw
latency_rows+=,torch-cuda-careful:fp16:channels_last,torch-cuda-careful:bf16:nchw
latency_rows+=,torch-cuda-careful:bf16:channels_last,torch-cuda-eager:fp32,torch-cuda-fused:fp32
latency_rows+=,torch-cuda-fused:fp16,torch-cuda-fused:bf16,torch-cuda-fused:fp16:compiled
large_rows=torch-cuda-careful:fp16:nchw,torch-cuda-careful:bf16:nchw,torch-cuda-fused:fp16
large_rows+=,torch-cuda-fused:fp16:compiled
bench=(-m certseg_rt.cli bench --quick --gpu-only --sizes "$sizes")
bench_main=("${bench[@]}" --references "$latency_rows" --throughput 64 --out "$results/bench")
bench_large=("${bench[@]}" --references "$large_rows" --n0 100 --n 1000 --throughput 0 --out "$results/bench-n1000")

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
  echo "gpu_check.sh --dry-run: nothing is run.  Results would go to $results (7 files: summary.txt, log.txt,"
  echo "junit.xml, bench/bench.json, bench/bench.md, bench-n1000/bench.json, bench-n1000/bench.md)."
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
  echo "Steps (budget ${budget} s in all; each step's timeout is the smaller of its cap and what is left):"
  echo "  0. environment: nvidia-smi -L; $py: torch, torch.version.cuda, triton, device name and compute capability;"
  echo "     nvcc --version"
  echo "  1. (cap 60 s) $py -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site \\"
  echo "       <the ${#wanted[@]} wheels>;  export PYTHONPATH=$repo:$site CERTSEG_CACHE_DIR=$cache"
  echo "  2. (cap 90 s) cmake -S cpp_ext -B $build [-G Ninja] -DCERTSEG_CUDA=ON -DCERTSEG_BUILD_PYTHON=ON \\"
  echo "       -DCERTSEG_BUILD_EXAMPLES=OFF -DCERTSEG_BUILD_SHARED=OFF -DCMAKE_CUDA_ARCHITECTURES=<the GPU's, e.g. 90> \\"
  echo "       -DPython_EXECUTABLE=\$($py -c 'import sys; print(sys.executable)')"
  echo "     (cap 150 s) cmake --build $build --parallel; copy $build/_ext*.so into certseg_rt/"
  echo "     (cap 60 s) $py -c 'from certseg_rt._ext_loader import ext; assert ext.cuda_compiled() and ext.cuda_device_count() > 0'"
  echo "  3. (cap 140 s) $py -m pytest -m gpu -rs -p no:cacheprovider --junitxml=$results/junit.xml ${gpu_tests[*]}"
  echo "  4. (cap 190 s) $py ${bench_main[*]}"
  echo "       rows at ${sizes/,/ and }, n0 10 + n 100 (one process per size): ${latency_rows//,/ }"
  echo "       then throughput rows: each form's fastest row certifying 64 held-out phantoms (images per batch: as"
  echo "       many as fit), at each size"
  echo "  5. (cap 100 s) $py ${bench_large[*]}"
  echo "       rows at ${sizes/,/ and }, n0 100 + n 1000: ${large_rows//,/ }"
  echo "  6. summary.txt: environment, step status and seconds, the pytest summary line, the bench tables"
  echo "Every GPU row reports its fraction of the model's forward-pass limit and of the chip's peak (NVIDIA data sheet,"
  echo "dense: H200/H100 SXM fp16/bf16 989.5 TFLOP/s, fp32 66.9 TFLOP/s)."
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
  "$py" -c 'import triton; print("triton", triton.__version__)' 2>&1 | tail -1
  (nvcc --version 2>&1 || /usr/local/cuda/bin/nvcc --version 2>&1) | tail -1
} | tee -a "$summary"

say "== steps"
step "install ${#wheel_files[@]} wheels" 60 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target "$site" "${wheel_files[@]}" || exit 1
export PYTHONPATH="$repo:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 CERTSEG_CACHE_DIR="$cache"

arch=$("$py" -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}{n}")' 2>>"$log") || arch=90
export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
generator=(); command -v ninja >/dev/null && generator=(-G Ninja)
rm -rf "$build"
step "configure the extension (CUDA arch $arch)" 90 cmake -S cpp_ext -B "$build" "${generator[@]}" -DCERTSEG_CUDA=ON \
  -DCERTSEG_BUILD_PYTHON=ON -DCERTSEG_BUILD_EXAMPLES=OFF -DCERTSEG_BUILD_SHARED=OFF -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" -DPython_EXECUTABLE="$("$py" -c 'import sys; print(sys.executable)')" || exit 1
step "build the extension with nvcc" 150 cmake --build "$build" --parallel || exit 1
rm -f certseg_rt/_ext*.so && cp "$build"/_ext*.so certseg_rt/
step "the extension sees the GPU" 60 "$py" -c 'from certseg_rt._ext_loader import EXTENSION_STATUS as s, ext
print(ext.__file__, s, "devices:", ext.cuda_device_count())
assert s["cuda"] and ext.cuda_device_count() > 0' || exit 1

step "pytest -m gpu" 140 "$py" -m pytest -m gpu -rs -p no:cacheprovider -o addopts="" --junitxml="$results/junit.xml" \
  "${gpu_tests[@]}"
step "bench --gpu-only at $sizes, n0 10 + n 100, throughput" 190 "$py" "${bench_main[@]}"
step "bench --gpu-only at $sizes, n0 100 + n 1000" 100 "$py" "${bench_large[@]}"

say "== tests"
grep -E '^(=+ .*(passed|failed|error|skipped).* =+|SKIPPED|FAILED|ERROR)' "$log" | tail -25 | tee -a "$summary"
for b in bench bench-n1000; do
  if [ -f "$results/$b/bench.md" ]; then say "== $b"; tee -a "$summary" < "$results/$b/bench.md"; fi
done
say "== total $(( $(date +%s) - start ))s, status $status (0: every step passed)"
exit $status
