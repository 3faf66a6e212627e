"""harness.bench's own overhead: its median step time against a plain timed loop of the same model.

The embedded narrow model (params.yaml's model and data input) at batch 8, inference: the bench's
row (a fresh spawned process, fused model, inference_mode) and a plain loop (a fresh interpreter,
time.perf_counter around model(clips) under inference_mode) alternate round by round, so load
from other processes hits both alike. The benchmark's own timing is one whole bench row, spawn included.

Run: pytest tests/benchmarks/test_bench_overhead.py --benchmark-only -n 0
"""

import statistics
import subprocess
import sys
from pathlib import Path

from harness.measure.throughput import Setting, bench_one
from harness.params import load_config

ROOT = Path(__file__).resolve().parents[2]
ROUNDS, WARMUP, REPEATS, BATCH = 7, 2, 10, 8
# One thread on each side: with two, a core taken by any other process stalls every OpenMP barrier and
# step times swing 50-fold (24 ms to 1.7 s on 2 cores), which would drown the overhead being measured.
THREADS = 1
# The plain loop runs in a fresh interpreter too: a long-lived process (this one) ran the same steps
# about 10 % slower than a fresh one, which would be counted as the bench's overhead.
PLAIN = """
import statistics, time, torch
from harness.params import load_config
from models.fuse import fuse_for_inference
from models.video_reid import build_model
torch.set_num_threads({threads})
config = load_config("params.yaml")
size = config.data.input
torch.manual_seed(0)
model = fuse_for_inference(build_model(config.spec(config.cost.num_classes)).eval())
clips = torch.randn({batch}, size.frames, 3, size.height, size.width)
times = []
with torch.inference_mode():
    for _ in range({warmup}):
        model(clips)
    for _ in range({repeats}):
        start = time.perf_counter()
        model(clips)
        times.append(time.perf_counter() - start)
print(statistics.median(times))
"""


def plain_median_s() -> float:
    """Median seconds of REPEATS forwards after WARMUP in a fresh interpreter, timed with nothing around them."""
    code = PLAIN.format(threads=THREADS, batch=BATCH, warmup=WARMUP, repeats=REPEATS)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(done.stdout)


def test_bench_median_matches_plain_loop(benchmark):
    config = load_config(ROOT / "params.yaml")
    spec, size = config.spec(config.cost.num_classes), config.data.input
    setting = Setting("infer", BATCH, "none", True, False)
    bench_s, plain_s = [], []

    def bench_row():
        bench_s.append(bench_one(spec, size, setting, WARMUP, REPEATS, THREADS)["step_ms_median"] / 1e3)

    benchmark.pedantic(bench_row, setup=lambda: plain_s.append(plain_median_s()), rounds=ROUNDS)
    # Each round's bench and plain medians ran back to back under the same load: compare them pairwise.
    ratio = statistics.median(b / p for b, p in zip(bench_s, plain_s))
    bench, plain = statistics.median(bench_s), statistics.median(plain_s)
    benchmark.extra_info.update(
        model=config.model.preset, width=spec.width, input_TxHxW=size.label(), batch=BATCH, threads=THREADS,
        bench_median_s=bench, plain_median_s=plain, bench_min_s=min(bench_s), plain_min_s=min(plain_s),
        ratio=ratio, bench_medians_s=bench_s, plain_medians_s=plain_s,
    )
    assert abs(ratio - 1) <= 0.05, f"bench / plain loop step time {ratio:.3f} (medians {bench * 1e3:.2f} ms, {plain * 1e3:.2f} ms)"
