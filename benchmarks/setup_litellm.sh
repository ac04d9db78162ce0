#!/usr/bin/env bash
# Build (once) the venv that runs LiteLLM's proxy for the benchmark, apart from the project's venv,
# so the peer's dependencies never leak into the gateway's. Prints the venv's path.
set -euo pipefail
home="${REPLAYGATE_HOME:-$HOME/.cache/replaygate}"
venv="$home/bench-litellm-venv"
python="${PYTHON:-python3.11}"
if [ ! -x "$venv/bin/litellm" ] || ! "$venv/bin/python" -c "import diskcache, litellm.proxy" 2>/dev/null; then
    echo "setup_litellm: building $venv (a few minutes, once)" >&2
    "$python" -m venv "$venv"
    log="$venv/install.log"
    if ! { "$venv/bin/pip" install -q --upgrade pip && "$venv/bin/pip" install -q 'litellm[proxy]' diskcache; } \
        >"$log" 2>&1; then
        echo "setup_litellm: pip failed; see $log" >&2
        exit 1
    fi
fi
echo "$venv"
