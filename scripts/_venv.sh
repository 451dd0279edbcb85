# Sourced by scripts/demo.sh and scripts/test.sh: create or update the project's virtual environment.
# Idempotent: the install step re-runs only when setup.py or this file changed since the last install.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DIFF4MM_VENV:-$REPO_ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[diff4mm] creating virtual environment in $VENV"
    "$PYTHON_BIN" -m venv "$VENV"
fi
stamp="$VENV/.diff4mm-install-stamp"
want="$(cat "$REPO_ROOT/setup.py" "$REPO_ROOT/scripts/_venv.sh" "$REPO_ROOT/nnunetv2_diff4mm.pth" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    # torch 2.14.1 from PyPI is a CUDA build: the environment takes ~6.5 GB. Say so before pip fails half-way with
    # "No space left on device" (it happened on a CI machine with a nearly full disk).
    need_kb=$((8 * 1024 * 1024))
    free_kb="$(df -Pk "$VENV" | awk 'NR == 2 {print $4}')"
    has_torch="$(compgen -G "$VENV/lib/python*/site-packages/torch" || true)"
    if [ -z "$has_torch" ] && [ -n "$free_kb" ] && [ "$free_kb" -lt "$need_kb" ]; then
        echo "[diff4mm] error: $VENV: installing the dependencies needs ~8 GB free on its disk," \
             "only $((free_kb / 1024)) MB are free; free some space or point DIFF4MM_VENV at a larger disk" >&2
        exit 1
    fi
    echo "[diff4mm] installing dependencies into $VENV (first run takes a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # torch first and pinned: this exact pair is the newest the project supports (see README).
    "$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
    "$VENV/bin/python" -m pip install --quiet -e "$REPO_ROOT[test]"
    # An editable install cannot carry a file to the root of site-packages; a regular install (pip install .)
    # does. Put the start-up hook that lets nnU-Net find Diff4MMTrainer (nnunetv2_diff4mm/nnunet_hook.py) there.
    purelib="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    cp "$REPO_ROOT/nnunetv2_diff4mm.pth" "$purelib/nnunetv2_diff4mm.pth"
    echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
