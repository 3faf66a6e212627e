"""python -m harness.cost: the cost table of the presets: params, GMACs, latency and memory (the code is harness/measure/cost.py)."""

from harness.cli import run
from harness.measure.cost import main

if __name__ == "__main__":
    run(main)
