#!/usr/bin/env bash
# The test command of the README: creates/updates .venv, then runs the whole test suite (extra args go to pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$REPO_ROOT"
exec python -m pytest -n 2 "$@"
