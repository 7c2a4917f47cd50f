#!/usr/bin/env bash
# Prepare benchmarks/wheels/ for benchmarks/gpu_check.sh on a GPU machine that reaches no package registry:
# the packages mapo-bench's training path needs that such a machine's image may lack (its torch, transformers,
# accelerate and peft are used as they are), as wheels for its Python (default 3.12, x86_64). About 13 MB.
#   bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=${1:-3.12}
mkdir -p "$here/wheels"
python3 -m pip download -q --no-deps -d "$here/wheels" --python-version "$version" --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
  diffusers pydantic pydantic-core annotated-types typing-inspection open_clip_torch ftfy wcwidth \
  datasets dill multiprocess
du -sh "$here/wheels"
