#!/usr/bin/env bash
# ncpfast's one entry point for people and CI.
#
#   bash scripts/dev.sh run [ARGS]   set up, then run the main job (python -m ncpfast.train ARGS)
#   bash scripts/dev.sh test [ARGS]  set up, then check the style (scripts/format.sh --check) and run
#                                    every test (pytest + native ctest under ASan/UBSan); without
#                                    ARGS also the op and model tests on oneDNN's AVX2 kernels
#   bash scripts/dev.sh fast [ARGS]  set up, then the Python tests not marked slow (a quick check while
#                                    working; `test` is what CI runs)
#   bash scripts/dev.sh bench [ARGS] set up, then run the benchmarks (pytest-benchmark)
#   bash scripts/dev.sh setup        only set up: .venv, its packages, the extension
#
# Setup is idempotent: a virtual environment in .venv (override: NCPFAST_VENV);
# torch and the build tools at the versions pinned in requirements.txt; the
# extension built in place (incremental after the first build); and ncpfast
# registered as an editable package with the dependencies and the test, bench
# and dev extras that pyproject.toml declares. The packages are installed again
# only when pyproject.toml or requirements.txt changed. NCPFAST_CUDA=0 skips the
# CUDA kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${NCPFAST_VENV:-.venv}
PY="$VENV/bin/python"

setup() {
  if [ ! -x "$PY" ]; then
    echo "== creating $VENV"
    python3 -m venv "$VENV"
  fi
  # What the packages were last installed from; they are installed again when it differs.
  local stamp="$VENV/.ncpfast-requirements" declared install=0
  declared=$(cat pyproject.toml requirements.txt | cksum)
  [ "$(cat "$stamp" 2>/dev/null)" = "$declared" ] || install=1
  if [ "$install" = 1 ]; then
    echo "== installing torch and the build tools (requirements.txt; torch is several GB, about a minute from a local cache)"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q -r requirements.txt
  fi
  # Built in place so that ninja's state in build/ survives between calls: only
  # the sources that changed are recompiled (pip install -e would rebuild all of
  # it in a temporary directory, minutes with the CUDA kernels).
  echo "== building the extension ncpfast._C (incremental)"
  MAX_JOBS=${MAX_JOBS:-2} "$PY" setup.py -q build_ext --inplace \
    || { echo "build failed: see the compiler output above" >&2; exit 1; }
  if [ "$install" = 1 ] || ! "$PY" -m pip show -q ncpfast >/dev/null 2>&1; then
    # NCPFAST_PREBUILT=1: register the in-place build instead of compiling again;
    # -c requirements.txt holds torch (and the linters) at their pins.
    echo "== installing ncpfast (editable) with its dependencies and the test, bench and dev extras (pyproject.toml)"
    NCPFAST_PREBUILT=1 "$PY" -m pip install -q --no-build-isolation -c requirements.txt -e ".[dev]" \
      || { echo "installing the package and its dependencies failed" >&2; exit 1; }
    echo "$declared" >"$stamp"
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
    NCPFAST_VENV="$VENV" bash scripts/format.sh --check
    native_tests
    echo "== python tests"
    "$PY" -m pytest python_tests -q -ra --durations=15 "$@"
    if [ $# -eq 0 ]; then
      # What an AVX2-only CPU under torchrun runs, also checked on an AVX-512
      # machine: oneDNN's AVX2 kernels, one thread (python_tests/test_every_cpu.py
      # adds short model runs on the same kernels with one and two threads).
      echo "== op, cell and model tests again on oneDNN's AVX2 kernels, one thread"
      ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=1 "$PY" -m pytest -q -ra python_tests/test_cell_fusion.py \
        python_tests/test_mlp_log_ratio.py python_tests/test_sir_resample.py python_tests/test_models.py
    fi
    ;;
  fast) setup; exec "$PY" -m pytest python_tests -q -ra -m "not slow" "$@" ;;
  bench) setup; exec "$PY" -m pytest bench "$@" ;;
  *) echo "usage: bash scripts/dev.sh run|test|fast|bench|setup [ARGS]" >&2; exit 2 ;;
esac
