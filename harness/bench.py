"""python -m harness.bench: inference and training throughput per preset on this machine's device (the code is harness/measure/bench.py)."""

from harness.cli import run
from harness.measure.bench import main

if __name__ == "__main__":
    run(main)
