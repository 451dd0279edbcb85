#!/usr/bin/env bash
# The test command of the README: creates/updates .venv, then runs the whole test suite (extra args go to pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$REPO_ROOT"
# --dist loadfile: a test module stays on one worker, so its expensive module fixture is built once
exec python -m pytest -n 2 --dist loadfile "$@"
