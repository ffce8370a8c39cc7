# shellcheck shell=bash
# Shared by the scripts in scripts/: where the repository is, and a virtualenv with the
# project and its dev tools installed (made or refreshed when pyproject.toml changes).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${OPAMP_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

ensure_venv() {
  local stamp=$VENV/.opamp-installed
  if [[ -x $VENV/bin/python && -f $stamp && ! $ROOT/pyproject.toml -nt $stamp ]]; then
    return 0
  fi
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "error: $PYTHON is older than Python 3.11" >&2; return 1; }
  echo "[setup] installing the project and its dev tools into $VENV" >&2
  [[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e "${ROOT}[dev]"
  touch "$stamp"
}
