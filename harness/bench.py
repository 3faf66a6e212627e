"""python -m harness.bench: inference and training throughput per preset on this machine's device.

The code is harness/measure/bench.py (the command) and harness/measure/throughput.py (one setting's measurement).
"""

from harness.cli import run
from harness.measure.bench import main

if __name__ == "__main__":
    run(main)
