#!/usr/bin/env bash
# The checks that need a GPU, as one script for a lent machine: the gpu-marked tests, then the
# evaluator benchmark on CUDA (the usual loop, ours one at a time, and 16 students in flight on
# the thread back-end, each against the bf16 matmul peak). Results land in $OUT (or bench/).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench}"
python -m pytest -q -m gpu 2>&1 | tee "$out/gpu_tests.txt"
python bench/bench_evaluator.py --device cuda --students 32 --concurrent 16 2>&1 | tee "$out/results_evaluator_gpu.txt"
