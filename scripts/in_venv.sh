#!/usr/bin/env bash
# Runs a command in this repository's virtual environment, building it first
# when needed: .venv with Python 3.11, the pinned requirements.txt (with
# --test also requirements-test*.txt) and the mae_jax package itself. pip runs
# only when .venv is new or those files changed since its last install, so
# later calls start at once. The command runs in the repository root, from any
# working directory:
#
#   scripts/in_venv.sh python -m mae_jax.main --config=configs/demo.py ...
#   scripts/in_venv.sh --test python -m pytest -n 2 -rs
#
# --tpu_estimate also builds .venv-tpu: .venv's packages plus libtpu (the
# `tpu_estimate` extra of setup.py), in which XLA compiles for TPU topologies
# (python -m mae_jax.benchmark --topology=...). libtpu lives apart from .venv
# because with it installed every JAX process looks for a TPU at start.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
TPU_VENV="$ROOT/.venv-tpu"
IS_PY311='import sys; sys.exit(sys.version_info[:2] != (3, 11))'

usage() {
  cat <<'USAGE'
Usage: scripts/in_venv.sh [--test | --tpu_estimate] COMMAND [ARGS...]

Builds or updates .venv (Python 3.11, requirements.txt, the package; with
--test also requirements-test*.txt: torch, transformers, DALL-E,
shellcheck), then
runs COMMAND in the repository root with .venv activated. --tpu_estimate
also builds .venv-tpu (.venv's packages and libtpu, for TPU estimates) and
runs COMMAND there.
USAGE
}

die() {
  echo "in_venv.sh: $*" >&2
  exit 2
}

# The Python 3.11 to build .venv with: python3.11, or python3 if it is 3.11.
find_python() {
  local candidate
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c "$IS_PY311"; then
      echo "$candidate"
      return
    fi
  done
  die "mae_jax needs Python 3.11, and neither python3.11 nor python3 on PATH" \
    "is 3.11; install it (Debian/Ubuntu: sudo apt-get install python3.11" \
    "python3.11-venv; elsewhere e.g. pyenv install 3.11) and rerun"
}

create_venv() {
  local python
  python="$(find_python)"
  "$python" -c 'import ensurepip' 2>/dev/null ||
    die "$python cannot create virtual environments (no ensurepip); install" \
      "python3.11-venv (Debian/Ubuntu) and rerun"
  echo "in_venv.sh: creating $VENV with $python (once)" >&2
  "$python" -m venv "$VENV"
}

# The stamp of an installed set of requirement files holds their checksums;
# a set is installed again when any of them changed.
is_installed() {
  local stamp="$VENV/.installed-$1"
  shift
  [[ -f "$stamp" && "$(<"$stamp")" == "$(cksum "$@")" ]]
}

mark_installed() {
  local stamp="$VENV/.installed-$1"
  shift
  cksum "$@" >"$stamp"
}

pip_install() {
  echo "in_venv.sh: pip install $*" >&2
  "$VENV/bin/python" -m pip install -q "$@"
}

# .venv-tpu sees .venv's packages through a .pth file that adds .venv's
# site-packages as a site directory (so its own .pth files, the editable
# mae_jax among them, count too); only libtpu is installed into it.
build_tpu_venv() {
  if [[ ! -e "$TPU_VENV/bin/python" ]]; then
    echo "in_venv.sh: creating $TPU_VENV on top of $VENV (once)" >&2
    "$VENV/bin/python" -m venv "$TPU_VENV"
  fi
  local site="lib/python3.11/site-packages"
  mkdir -p "$TPU_VENV/$site"
  echo "import site; site.addsitedir('$VENV/$site')" \
    >"$TPU_VENV/$site/mae_jax_venv.pth"
  local stamp="$TPU_VENV/.installed-tpu_estimate"
  if [[ ! -f "$stamp" || "$(<"$stamp")" != "$(cksum setup.py)" ]]; then
    echo "in_venv.sh: pip install the tpu_estimate extra into $TPU_VENV" >&2
    "$TPU_VENV/bin/python" -m pip install -q -e ".[tpu_estimate]"
    cksum setup.py >"$stamp"
  fi
}

main() {
  local with_test=0 with_tpu=0
  case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    --test) with_test=1; shift ;;
    --tpu_estimate) with_tpu=1; shift ;;
  esac
  (($#)) || { usage >&2; exit 2; }

  cd "$ROOT"
  if [[ ! -e "$VENV/bin/python" ]]; then
    create_venv
  fi
  "$VENV/bin/python" -c "$IS_PY311; import pip" 2>/dev/null ||
    die "$VENV is not a working Python 3.11 environment with pip; remove it" \
      "(rm -rf $VENV) and rerun"

  local runtime=(requirements.txt setup.py)
  if ! is_installed runtime "${runtime[@]}"; then
    pip_install -r requirements.txt
    pip_install --no-deps -e .
    mark_installed runtime "${runtime[@]}"
  fi
  # Resolved together with the runtime pins, so that neither set moves the
  # other's versions.
  local tests=(requirements.txt requirements-test.txt
    requirements-test-nodeps.txt)
  if ((with_test)) && ! is_installed test "${tests[@]}"; then
    pip_install -r requirements.txt -r requirements-test.txt
    pip_install --no-deps -r requirements-test-nodeps.txt
    mark_installed test "${tests[@]}"
  fi

  if ((with_tpu)); then
    build_tpu_venv
    # shellcheck disable=SC1091
    . "$TPU_VENV/bin/activate"
  else
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
  fi
  exec "$@"
}

main "$@"
