"""python -m harness.gpu_check: the CUDA tests and a throughput table on a GPU node (the code is harness/measure/gpu_check.py)."""

from harness.cli import run
from harness.measure.gpu_check import main

if __name__ == "__main__":
    run(main)
