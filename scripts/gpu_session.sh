#!/usr/bin/env bash
# Everything the CUDA path still owes, for the day a GPU machine is lent (the
# `device` tool runs this in a copy of the working tree; its python3 holds
# torch with CUDA, nvcc, cmake, pytest, pytest-benchmark and compute-sanitizer).
#
#   bash scripts/gpu_session.sh [STAGE ...]     stages, in order (default: all but bench_sampler)
#     build          the extension for this GPU's architecture, in place
#     native         CMake build + ctest with the CUDA kernels (test_sir_cuda runs)
#     pytest         pytest python_tests -k cuda (values, gradients, opcheck, autocast)
#     sanitize       compute-sanitizer memcheck and racecheck on test_sir_cuda and
#                    on the CUDA op tests
#     bench          cells, mlp and SIR benchmarks on CUDA -> $OUT/bench-cuda-<gpu>.json
#     bench_sampler  the whole SIR sampler on CUDA -> $OUT/sampler-cuda-<gpu>.json
#
# Every stage runs even when an earlier one failed (a failing test must not hide
# the benchmark); each writes $OUT/<stage>.log, and $OUT/summary.txt gets one
# line per stage with its exit status and seconds. The exit status is the
# number of failed stages. On the device machine $OUT is the folder that comes
# back; elsewhere it defaults to gpu-out/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
PY=${PYTHON:-python3}
JOBS=${MAX_JOBS:-$(nproc)}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build, without pip install

gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-').lower() if torch.cuda.is_available() else 'none')")
arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability() if torch.cuda.is_available() else '')")
if [ "$gpu" = none ]; then
  echo "gpu_session.sh: torch sees no CUDA device here; run it on a GPU machine" >&2
  exit 1
fi
echo "== $gpu (compute capability $arch), torch $("$PY" -c 'import torch; print(torch.__version__)')" | tee "$OUT/summary.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv >>"$OUT/summary.txt" 2>&1

failed=0
stage() {  # stage NAME COMMAND...: run, log, record
  local name=$1 start rc
  shift
  echo "== $name"
  start=$(date +%s)
  "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc, $(($(date +%s) - start)) s" | tee -a "$OUT/summary.txt"
  tail -n 4 "$OUT/$name.log"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

cuda_op_tests="python_tests/test_sir_resample.py python_tests/test_cell_ops.py python_tests/test_mlp_log_ratio.py"
bench_flags="-p no:cacheprovider --benchmark-min-rounds=5 --benchmark-warmup=on"

run_stage() {
  case $1 in
    build)
      stage build env NCPFAST_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$JOBS" "$PY" setup.py -q build_ext --inplace ;;
    native)
      stage native bash -c "cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNCPFAST_SANITIZE=OFF \
        -DCMAKE_CUDA_ARCHITECTURES=${arch/./} && cmake --build build-gpu -j $JOBS && ctest --test-dir build-gpu --output-on-failure" ;;
    pytest)
      stage pytest "$PY" -m pytest python_tests -q -k cuda -p no:cacheprovider ;;
    sanitize)
      stage sanitize bash -c "compute-sanitizer --tool memcheck --error-exitcode 1 build-gpu/test_sir_cuda \
        && compute-sanitizer --tool racecheck --error-exitcode 1 build-gpu/test_sir_cuda \
        && compute-sanitizer --tool memcheck --error-exitcode 1 $PY -m pytest $cuda_op_tests -q -x -k cuda -p no:cacheprovider \
        && compute-sanitizer --tool racecheck --error-exitcode 1 $PY -m pytest $cuda_op_tests -q -x -k cuda -p no:cacheprovider" ;;
    bench)
      stage bench bash -c "cd bench && $PY -m pytest -q test_bench_cells.py test_bench_mlp.py test_bench_sir.py -k cuda \
        $bench_flags --benchmark-json=../$OUT/bench-cuda-$gpu.json && $PY report.py ../$OUT/bench-cuda-$gpu.json" ;;
    bench_sampler)
      stage bench_sampler bash -c "cd bench && $PY -m pytest -q test_bench_sampler.py -k cuda -p no:cacheprovider \
        --benchmark-min-rounds=3 --benchmark-warmup=off --benchmark-json=../$OUT/sampler-cuda-$gpu.json \
        && $PY report.py ../$OUT/sampler-cuda-$gpu.json" ;;
    *)
      echo "unknown stage: $1 (build, native, pytest, sanitize, bench, bench_sampler)" >&2
      failed=$((failed + 1)) ;;
  esac
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(build native pytest sanitize bench)
for s in "${stages[@]}"; do run_stage "$s"; done
cat "$OUT/summary.txt"
exit "$failed"
