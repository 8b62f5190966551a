#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: system packages, ./.venv with the pinned stack, Horovod
# built against that mxnet (Gloo, no MPI), the package itself and its C++ op library.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# This workplace's pip config names local indexes that may not exist; keep its noise out of the log.
quiet() { "$@" 2>&1 | { grep -v "WARNING: Location '" || true; }; }
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

# Real data for tests and the demo, and Java for the model server.
need_apt=()
[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v g++ >/dev/null || need_apt+=(g++)
command -v cmake >/dev/null || need_apt+=(cmake)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[install] apt packages: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

# The venv is rebuilt when the pins change (stamp = hash of requirements.txt).
stamp="$VENV/.requirements.sha256"
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[install] creating $VENV with the pinned stack"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  quiet "$VENV/bin/pip" install -q --upgrade "pip<25" "setuptools<70"
  quiet "$VENV/bin/pip" install -q -r requirements.txt
  echo "$want" > "$stamp"
fi

if ! "$VENV/bin/python" -c "import horovod.mxnet" 2>/dev/null; then
  echo "[install] building horovod 0.28.1 against mxnet (a few minutes on 2 cores)"
  HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
  HOROVOD_WITHOUT_PYTORCH=1 MAKEFLAGS=-j2 \
    quiet "$VENV/bin/pip" install -q --no-build-isolation --no-cache-dir horovod==0.28.1
fi

# The package (editable, from pyproject.toml) and its op library. Installed when gluon_lcnn
# does not resolve to this checkout (-I: not from the current directory; nothing is imported).
where=$("$VENV/bin/python" -I -c "import importlib.util as u; s = u.find_spec('gluon_lcnn'); \
print(s.origin if s else '')" 2>/dev/null || true)
if [ "$where" != "$PWD/gluon_lcnn/__init__.py" ]; then
  quiet "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e .
fi
if [ -f gluon_lcnn/ops/build.py ]; then
  "$VENV/bin/python" -m gluon_lcnn.ops.build
fi
echo "[install] ok"
