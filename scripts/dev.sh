#!/usr/bin/env bash
# ncpfast's one entry point for people and CI.
#
#   bash scripts/dev.sh run [ARGS]   set up, then run the main job (python -m ncpfast.train ARGS)
#   bash scripts/dev.sh test         set up, then run every test (pytest + native ctest under ASan/UBSan)
#   bash scripts/dev.sh bench [ARGS] set up, then run the benchmarks (pytest-benchmark)
#   bash scripts/dev.sh setup        only create .venv and build the extension
#
# Setup is idempotent: a virtual environment in .venv (override: NCPFAST_VENV),
# the packages of requirements.txt, and an editable build of the extension
# (incremental after the first build). NCPFAST_CUDA=0 skips the CUDA kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${NCPFAST_VENV:-.venv}
PY="$VENV/bin/python"

setup() {
  if [ ! -x "$PY" ]; then
    echo "== creating $VENV"
    python3 -m venv "$VENV"
  fi
  if ! "$PY" -c "import torch, tqdm, PIL, mlxtend, pytest, pytest_benchmark, ninja, pybind11, tensorboard" 2>/dev/null; then
    echo "== installing requirements (torch is several GB; about a minute from a local cache)"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q -r requirements.txt
  fi
  # Built in place so that ninja's state in build/ survives between calls: only
  # the sources that changed are recompiled (pip install -e would rebuild all of
  # it in a temporary directory, minutes with the CUDA kernels).
  echo "== building the extension ncpfast._C (incremental)"
  MAX_JOBS=${MAX_JOBS:-2} "$PY" setup.py -q build_ext --inplace \
    || { echo "build failed: see the compiler output above" >&2; exit 1; }
  if ! "$PY" -m pip show -q ncpfast >/dev/null 2>&1; then
    NCPFAST_PREBUILT=1 "$PY" -m pip install -q --no-build-isolation --no-deps -e . \
      || { echo "registering the editable package failed" >&2; exit 1; }
  fi
  "$PY" -c "import ncpfast; print('== built:', ncpfast.build_info())"
}

native_tests() {
  # The torch-free kernel core under AddressSanitizer + UndefinedBehaviorSanitizer,
  # and the CUDA kernels compiled by plain nvcc (their test runs only on a GPU).
  echo "== native tests (CMake + ctest, ASan/UBSan)"
  cmake -S . -B build-native -DCMAKE_BUILD_TYPE=Debug -DNCPFAST_SANITIZE=ON >/dev/null
  cmake --build build-native -j "${MAX_JOBS:-2}"
  ctest --test-dir build-native --output-on-failure
}

cmd=${1:-run}
shift || true
case "$cmd" in
  setup) setup ;;
  run) setup; exec "$PY" -m ncpfast.train "$@" ;;
  test)
    setup
    native_tests
    echo "== python tests"
    "$PY" -m pytest python_tests -q -ra "$@"
    ;;
  bench) setup; exec "$PY" -m pytest bench "$@" ;;
  *) echo "usage: bash scripts/dev.sh run|test|bench|setup [ARGS]" >&2; exit 2 ;;
esac
