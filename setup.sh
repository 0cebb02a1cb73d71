#!/usr/bin/env bash
# Set-up for both README commands: creates .venv beside this file and installs the pinned dependencies
# from pyproject.toml (again only when pyproject.toml changes). Extras: EXTRAS=wandb bash setup.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: $PYTHON is missing or older than 3.10; install Python 3.10+ or set PYTHON=/path/to/python3" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
extras="test${EXTRAS:+,$EXTRAS}"
stamp=".venv/.installed-$(cat pyproject.toml <(echo "$extras") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "installing dependencies into .venv (extras: $extras)..."
  .venv/bin/python -m pip install --quiet --disable-pip-version-check ".[$extras]"
  rm -rf build ./*.egg-info
  rm -f .venv/.installed-* && touch "$stamp"
fi
