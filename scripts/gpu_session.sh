#!/usr/bin/env bash
# The CUDA path on a lent GPU machine. A lease is 15 minutes of device time in
# all, machine start (1-3 min) included, at most 10 minutes a command, and a
# machine stays warm only ~30 s between calls: use the one call `all`.
#
#   bash scripts/gpu_session.sh all [OPTIONS]     everything below in one call (520 s at most), the
#                                                 most valuable stages first, so a smaller --budget
#                                                 (e.g. 360) runs the most valuable part
#   bash scripts/gpu_session.sh check [OPTIONS]   build for this GPU's arch, native CUDA test (ctest),
#                                                 pytest -k cuda, compute-sanitizer      (375 s at most)
#   bash scripts/gpu_session.sh bench [OPTIONS]   build (a no-op when the check call's build is still
#                                                 there), end-to-end figures, op benchmarks (375 s at most)
#
# Options:
#   --dry-run          print every stage's command, budget and the output paths; run and write nothing
#   --stages A,B       run only these stages of the call (in the call's order)
#   --budget SECONDS   the call's time budget (default 375); stages are cut to what is left of it
#   --arch X.Y         the GPU's compute capability (default: asked of torch; 9.0 in a dry run without a GPU)
#   --allow-no-gpu     run even where torch sees no GPU (to test this script: the stages then fail)
#
# Every stage runs under `timeout` with its own budget (the budgets of a call sum
# to at most the call's budget, and no stage runs past the call's deadline), even
# when an earlier stage failed: a failing test must not hide the benchmarks. Each
# stage's output goes to $OUT/<call>.log; $OUT/summary.md (each stage: command,
# exit status, seconds, budget, the last lines of its output) is rewritten after
# every stage and on exit, also when a stage fails, times out or the script is
# interrupted. $OUT (default gpu-out/, relative paths taken from the current
# directory) is resolved to an absolute path once, at the start. Exit status:
# the number of stages that did not pass. With check and bench, run bench right
# after check, while the machine is still warm, so that its build is reused.
set -uo pipefail
caller_dir=$PWD
cd "$(dirname "$0")/.."
repo=$PWD

usage() { sed -n '2,/^set -uo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

call=${1:-}
case $call in
  all|check|bench) shift ;;
  -h|--help) usage; exit 0 ;;
  *) echo "gpu_session.sh: the first argument must be all, check or bench, got '${call}'" >&2; usage >&2; exit 2 ;;
esac
dry_run=0 only="" budget="" arch="" allow_no_gpu=0
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --allow-no-gpu) allow_no_gpu=1 ;;
    --stages) only=${2:?--stages needs a comma-separated list}; shift ;;
    --stages=*) only=${1#*=} ;;
    --budget) budget=${2:?--budget needs seconds}; shift ;;
    --budget=*) budget=${1#*=} ;;
    --arch) arch=${2:?--arch needs X.Y}; shift ;;
    --arch=*) arch=${1#*=} ;;
    *) echo "gpu_session.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[ -n "$budget" ] || { [ "$call" = all ] && budget=520 || budget=375; }
[[ $budget =~ ^[0-9]+$ ]] || { echo "gpu_session.sh: --budget must be whole seconds, got '$budget'" >&2; exit 2; }
[ -z "$arch" ] || [[ $arch =~ ^[0-9]+\.[0-9]+$ ]] || { echo "gpu_session.sh: --arch must be X.Y, got '$arch'" >&2; exit 2; }

# $OUT, absolute, once: every path below is built from it.
out=${OUT:-gpu-out}
[[ $out = /* ]] || out=$caller_dir/$out
out=$(realpath -m -- "$out")
q_out=$(printf '%q' "$out")  # as it goes into the commands below

PY=${PYTHON:-python3}
jobs=${MAX_JOBS:-$(nproc)}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build, without pip install

gpu_name="" note=""
{ read -r torch_version; read -r detected_arch gpu_name; } < <("$PY" -c "import torch
print('torch', torch.__version__, 'CUDA', torch.version.cuda)
if torch.cuda.is_available():
    print('%d.%d' % torch.cuda.get_device_capability(), torch.cuda.get_device_name())
else:
    print('none')" 2>/dev/null || printf 'no torch\nnone\n')
if [ "$torch_version" = "no torch" ] && [ "$dry_run" = 0 ]; then
  echo "gpu_session.sh: $PY cannot import torch here (set PYTHON to the interpreter that has it)" >&2
  exit 1
fi
if [ "${detected_arch:-none}" = none ]; then
  if [ "$dry_run" = 0 ] && [ "$allow_no_gpu" = 0 ]; then
    echo "gpu_session.sh: torch sees no CUDA device here; run this on a GPU machine (or --dry-run)" >&2
    exit 1
  fi
  gpu_name="NVIDIA H200" note="(no GPU here: an H200 assumed)"
  arch=${arch:-9.0}
else
  arch=${arch:-$detected_arch}
fi
gpu_tag=$(printf '%s' "${gpu_name:-gpu}" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9._-' '-')
sm=${arch/./}

# pytest-timeout, where installed, stops one hung test; `timeout` bounds the stage either way.
pytest_timeout=""
if "$PY" -c "import pytest_timeout" 2>/dev/null; then
  pytest_timeout="-p timeout --timeout=60"
fi
# compute-sanitizer's kernel filter (newer releases): the Python runs then check
# only ncpfast's kernels in the slow tools, not every torch kernel.
kernel_filter=""
if command -v compute-sanitizer >/dev/null && compute-sanitizer --help 2>/dev/null | grep -q -- '--kernel-name '; then
  kernel_filter="--kernel-name kns=ncpfast"
fi
sanitizer="compute-sanitizer --error-exitcode 1 --print-limit 100"
smoke="$PY scripts/gpu_smoke/ops_smoke.py all --calls 2"
native_test=build-gpu/test_sir_cuda
bench_flags="-q -p no:cacheprovider -m cuda --benchmark-min-rounds=5 --benchmark-max-time=0.2 --benchmark-warmup=off"

# The extension, in place, for this GPU's arch alone (ninja rebuilds only what
# changed, so on a machine still warm from the check call this takes seconds).
build="NCPFAST_CUDA=1 TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$jobs $PY setup.py -q build_ext --inplace && $PY -c \"import ncpfast; info = ncpfast.build_info(); print(info); assert info['cuda'] and '$arch' in info['cuda_arch_list'].split(';'), 'not built for $arch'\""

# The calls' stages: name, budget (seconds), command. Budgets sum to at most 360 (of the 375 s call).
stages=()
add() { stages+=("$1" "$2" "$3"); }
# One pytest-benchmark JSON per stage (a stage cut short loses only its own).
bench_stage() {  # bench_stage NAME BUDGET FILE PYTEST-ARGS
  local json=$q_out/bench-$1-$gpu_tag.json
  add "bench-$1" "$2" "$PY -m pytest bench/$3 $bench_flags $4 --benchmark-json=$json; rc=\$?; [ ! -f $json ] || $PY bench/report.py $json; exit \$rc"
}
e2e_json=$q_out/end-to-end-$gpu_tag.json
if [ "$call" = all ]; then
  # Ordered by what a lease must not miss: does it build and pass, is it memory-safe,
  # how fast is it; the slow sanitizers and torch.compile last. 6 result files.
  add env 10 "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv; $PY -c 'import sys, torch; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda)'; nvcc --version | tail -n 2; (git rev-parse HEAD && git status --short | head -n 20) 2>/dev/null || echo 'no git metadata'"
  add build 120 "$build"
  add pytest 100 "$PY -m pytest python_tests -k 'cuda and not compile' -q -rs -p no:cacheprovider --durations=10 $pytest_timeout"
  add memcheck-ops 35 "PYTORCH_NO_CUDA_MEMORY_CACHING=1 $sanitizer --tool memcheck $kernel_filter $smoke"
  add end-to-end 70 "$PY bench/end_to_end.py --device cuda --out $e2e_json"
  bench_stage sir 30 test_bench_sir_resample.py "--bench-compile=none"
  bench_stage mlp 30 test_bench_mlp_log_ratio.py "--bench-compile=none"
  bench_stage cells 40 test_bench_cell_fusion.py "--bench-compile=none"
  add native 40 "cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNCPFAST_SANITIZE=OFF -DCMAKE_CUDA_ARCHITECTURES=$sm >/dev/null && cmake --build build-gpu --target test_sir_cuda -j $jobs && ctest --test-dir build-gpu -R '^sir_cuda\$' --output-on-failure --no-tests=error --timeout 30 && $sanitizer --tool memcheck $native_test && $sanitizer --tool initcheck $native_test"
  add racecheck-ops 20 "$sanitizer --tool racecheck $kernel_filter $smoke"
  add pytest-compile 20 "$PY -m pytest python_tests -k 'cuda and compile' -q -rs -p no:cacheprovider $pytest_timeout"
elif [ "$call" = check ]; then
  add env 10 "nvidia-smi; $PY -c 'import sys, torch; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda)'; nvcc --version | tail -n 2; cmake --version | head -n 1; compute-sanitizer --version | tail -n 1; (git rev-parse HEAD && git status --short | head -n 20) 2>/dev/null || echo 'no git metadata'"
  add native 45 "cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNCPFAST_SANITIZE=OFF -DCMAKE_CUDA_ARCHITECTURES=$sm >/dev/null && cmake --build build-gpu --target test_sir_cuda -j $jobs && ctest --test-dir build-gpu -R '^sir_cuda\$' --output-on-failure --no-tests=error --timeout 30"
  add build 105 "$build"
  add pytest 90 "$PY -m pytest python_tests -k cuda -q -rs -p no:cacheprovider --durations=15 $pytest_timeout"
  add memcheck-native 15 "$sanitizer --tool memcheck --leak-check full $native_test"
  add racecheck-native 15 "$sanitizer --tool racecheck $native_test"
  add memcheck-ops 30 "PYTORCH_NO_CUDA_MEMORY_CACHING=1 $sanitizer --tool memcheck $smoke"
  add racecheck-ops 30 "$sanitizer --tool racecheck $kernel_filter $smoke"
  add initcheck-native 10 "$sanitizer --tool initcheck $native_test"
  add synccheck-native 10 "$sanitizer --tool synccheck $native_test"
else
  add env 10 "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv; $PY -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda)'"
  add build 90 "$build"
  add end-to-end 95 "$PY bench/end_to_end.py --device cuda --out $e2e_json"
  # The torch.compile comparison (one cell, in training; a compile takes tens of seconds) last.
  bench_stage sir 35 test_bench_sir_resample.py "--bench-compile=none"
  bench_stage mlp 35 test_bench_mlp_log_ratio.py "--bench-compile=none"
  bench_stage cells 50 test_bench_cell_fusion.py "--bench-compile=none"
  bench_stage compile 45 test_bench_cell_fusion.py "--bench-compile=one -k 'test_cell and generative-cell-C32-e6 and train'"
fi

selected() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }
if [ -n "$only" ]; then
  names=",$(for ((i = 0; i < ${#stages[@]}; i += 3)); do printf '%s,' "${stages[i]}"; done)"
  for name in ${only//,/ }; do
    [[ $names == *",$name,"* ]] || { echo "gpu_session.sh: $call has no stage '$name' (it has ${names:1:-1})" >&2; exit 2; }
  done
fi
total=0
for ((i = 0; i < ${#stages[@]}; i += 3)); do total=$((total + stages[i + 1])); done

if [ "$dry_run" = 1 ]; then
  echo "gpu_session.sh $call (dry run): GPU ${gpu_name:-?} arch $arch $note"
  echo "OUT=$out"
  echo "summary: $out/summary.md  log: $out/$call.log"
  echo "call budget ${budget} s; stage budgets sum to ${total} s"
  for ((i = 0; i < ${#stages[@]}; i += 3)); do
    selected "${stages[i]}" || continue
    echo "[${stages[i]}] timeout ${stages[i + 1]} s: ${stages[i + 2]}"
  done
  exit 0
fi

mkdir -p "$out"
log=$out/$call.log
summary=$out/summary.md
work=$(mktemp -d)
: >"$log"
started=$(date +%s)
deadline=$((started + budget))
records=()   # name|status|seconds|budget, one per stage
failed=0
child=""

write_summary() {
  local now i name status secs stage_budget
  now=$(date +%s)
  {
    echo "# gpu_session.sh $call"
    echo
    echo "- GPU: ${gpu_name} (compute capability $arch); $torch_version"
    echo "- started $(date -u -d "@$started" '+%Y-%m-%d %H:%M:%S') UTC, $((now - started)) s so far of a ${budget} s budget (stage budgets sum to ${total} s)"
    echo "- OUT: $out; full output: $call.log"
    echo "- pytest-timeout: ${pytest_timeout:-not installed (the stage timeout alone)}; sanitizer kernel filter: ${kernel_filter:-none (every kernel checked)}"
    echo "- stages not passed: $failed"
    echo
    echo "| stage | status | seconds | budget |"
    echo "|---|---|---|---|"
    for i in "${!records[@]}"; do
      IFS='|' read -r name status secs stage_budget <<<"${records[$i]}"
      echo "| $name | $status | $secs | $stage_budget |"
    done
    for ((i = 0; i < ${#stages[@]}; i += 3)); do
      name=${stages[i]}
      [ -f "$work/$name.status" ] || continue
      echo
      echo "## $name: $(cat "$work/$name.status")"
      echo
      echo '```'
      echo "\$ ${stages[i + 2]}"
      [ ! -f "$work/$name.tail" ] || cat "$work/$name.tail"
      echo '```'
    done
  } >"$summary.tmp" && mv "$summary.tmp" "$summary"
}

on_exit() {
  [ -z "$child" ] || kill -TERM "$child" 2>/dev/null
  write_summary
  cat "$summary"
  rm -rf "$work"
}
on_signal() {
  echo "gpu_session.sh: interrupted" | tee -a "$log" >&2
  if [ -n "$current" ]; then
    echo "interrupted" >"$work/$current.status"
    tail -n 30 "$out/stage-$current.log" >"$work/$current.tail" 2>/dev/null  # that log stays in OUT
    records+=("$current|interrupted|-|-")
  fi
  failed=$((failed + 1))
  exit 130
}
current=""
trap on_exit EXIT
trap on_signal TERM INT

run_stage() {  # run_stage NAME BUDGET COMMAND
  local name=$1 stage_budget=$2 cmd=$3 left limit start rc secs status stage_log
  left=$((deadline - $(date +%s) - 5))  # 5 s for the summary
  limit=$((stage_budget < left ? stage_budget : left))
  if [ "$limit" -lt 3 ]; then
    echo "skipped: the call's budget is spent" >"$work/$name.status"
    records+=("$name|skipped (no time left)|0|$stage_budget")
    failed=$((failed + 1))
    write_summary
    return
  fi
  echo "== $name (timeout $limit s)" | tee -a "$log"
  echo "\$ $cmd" >>"$log"
  stage_log=$out/stage-$name.log  # its own file while it runs: comes back even if the call is killed
  current=$name
  start=$(date +%s)
  timeout --kill-after=5 "$limit" bash -c "$cmd" >"$stage_log" 2>&1 &
  child=$!
  wait "$child"
  rc=$?
  child="" current=""
  secs=$(($(date +%s) - start))
  tail -n 30 "$stage_log" >"$work/$name.tail"
  tail -c 4000000 "$stage_log" >>"$log"  # at most 4 MB of one stage in the log
  rm -f "$stage_log"
  case $rc in
    0) status="ok" ;;
    124|137) status="TIMED OUT after $limit s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
  echo "$status (exit $rc, $secs s)" >"$work/$name.status"
  records+=("$name|$status|$secs|$stage_budget")
  echo "== $name: $status, $secs s" | tee -a "$log"
  tail -n 4 "$work/$name.tail"
  write_summary
}

for ((i = 0; i < ${#stages[@]}; i += 3)); do
  selected "${stages[i]}" || continue
  run_stage "${stages[i]}" "${stages[i + 1]}" "${stages[i + 2]}"
done
exit "$failed"
