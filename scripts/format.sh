#!/usr/bin/env bash
# The code style, applied or checked: ruff's lint rules on the Python (configured
# in pyproject.toml, [tool.ruff]) and clang-format on the C++/CUDA (.clang-format).
#
#   bash scripts/format.sh           apply: ruff's safe fixes (import order) and
#                                    clang-format, in place; lists what ruff cannot fix
#   bash scripts/format.sh --check   change nothing; exit 1 when anything is off style
#                                    (`bash scripts/dev.sh test` runs this first)
#
# The tools come with the dev extra (`pip install -e '.[dev]'`, which dev.sh setup
# does), at the versions pinned in requirements.txt; they are taken from the
# virtual environment ($NCPFAST_VENV, default .venv), else from PATH. A missing
# tool is skipped, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${NCPFAST_VENV:-.venv}
PYTHON_PATHS=(ncpfast python_tests bench scripts)

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) echo "usage: bash scripts/format.sh [--check]" >&2; exit 2 ;;
esac

find_tool() {  # the path of tool $1, or nothing
  if [ -x "$VENV/bin/$1" ]; then echo "$VENV/bin/$1"; else command -v "$1" || true; fi
}

skipped() {
  echo "== $1 skipped: $1 is not installed (pip install -e '.[dev]', or bash scripts/dev.sh setup)"
}

status=0

ruff=$(find_tool ruff)
if [ -z "$ruff" ]; then
  skipped ruff
elif [ "$check" = 1 ]; then
  echo "== ruff check ($("$ruff" --version))"
  "$ruff" check --output-format=concise "${PYTHON_PATHS[@]}" || status=1
else
  echo "== ruff check --fix ($("$ruff" --version))"
  "$ruff" check --fix --output-format=concise "${PYTHON_PATHS[@]}" || status=1
fi

clang_format=$(find_tool clang-format)
if [ -z "$clang_format" ]; then
  skipped clang-format
else
  mapfile -t sources < <(find csrc -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) | sort)
  if [ "$check" = 1 ]; then
    echo "== clang-format --dry-run ($("$clang_format" --version | sed 's/.*version //'), ${#sources[@]} files)"
    # The first difference in each file is enough to say which files are off.
    "$clang_format" --dry-run --Werror --ferror-limit=1 "${sources[@]}" || status=1
  else
    echo "== clang-format -i ($("$clang_format" --version | sed 's/.*version //'), ${#sources[@]} files)"
    "$clang_format" -i "${sources[@]}"
  fi
fi

if [ "$status" != 0 ] && [ "$check" = 1 ]; then
  echo "format.sh --check: off style (above); bash scripts/format.sh fixes all but ruff's findings marked without [*]" >&2
elif [ "$status" != 0 ]; then
  echo "format.sh: ruff's remaining findings (above) need fixing by hand" >&2
fi
exit "$status"
