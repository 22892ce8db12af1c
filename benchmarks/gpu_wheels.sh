#!/usr/bin/env bash
# Download, here (where the package registries answer), exactly the wheels that benchmarks/gpu_check.sh carries
# to a GPU machine without internet: those in benchmarks/gpu_wheels.txt, for CPython 3.12 on manylinux x86_64,
# without resolving dependencies (each one is listed).  Usage: bash benchmarks/gpu_wheels.sh [DEST (default .whl)]
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
limit=$((64 * 1024 * 1024))  # what travels with the working tree to that machine, wheels included
mapfile -t wheels < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' benchmarks/gpu_wheels.txt | grep -v '^$')
mkdir -p "$dest"
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "${wheels[@]}"
total=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
ls -l "$dest"/*.whl
echo "wheels: ${#wheels[@]} listed, $(ls "$dest"/*.whl | wc -l) in $dest, $((total / 1024)) KiB (limit $((limit / 1024)) KiB)"
if [ "$total" -gt "$limit" ]; then
  echo "error: the wheels in $dest exceed 64 MiB; remove stale ones (one version of each)" >&2
  exit 1
fi
