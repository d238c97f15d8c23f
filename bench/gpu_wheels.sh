#!/bin/bash
# The wheels bench/gpu.sh needs that the GPU machine's image lacks (Python 3.12, x86-64; the
# image has jax, flax, optax, orbax, tokenizers, torch, transformers, httpx): ml-collections
# (configs), tensorboardX (train.py's writer), fastapi + uvicorn and their pydantic / starlette
# (serve.py). Into .whl/ (ignored through .git/info/exclude); carry it: run(..., carry=['.whl']).
#   bash bench/gpu_wheels.sh
set -e
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"
PY=${PY:-python3}
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  $plat -d .whl ml-collections==1.1.0 tensorboardX==2.6.5 fastapi==0.165.0 uvicorn==0.55.0 \
  starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5
ls -la .whl
