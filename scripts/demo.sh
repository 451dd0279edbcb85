#!/usr/bin/env bash
# The main command of the README: creates/updates .venv, then runs the end-to-end demo on the built-in phantom.
# Extra arguments go to diff4mm_demo (see `diff4mm_demo --help`); output goes to ./demo_output by default.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$REPO_ROOT"
exec diff4mm_demo "$@"
