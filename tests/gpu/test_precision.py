"""Float32 is float32 on the GPU: `python -m harness.train` under `train.amp: none` trains with TF32 off (and on
only with `train.tf32: true`), as its workers saw the flags at their first step, and the run record says so.

Skipped without CUDA; `python -m harness.gpu_check` runs it on a GPU node. The CPU suite checks the same record
fields where there is no GPU (tests/harness/train/test_train.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.results.records import read_record

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: python -m harness.gpu_check")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("tf32", [False, True], ids=["fp32", "tf32"])
def test_training_runs_with_the_tf32_it_was_given(tf32, prepared_mars, tmp_path):
    sets = [f"data.prepared_root={prepared_mars.parent}", "data.dataset=mars", "data.frames=8", "data.height=256",
            "data.width=128", "model.preset=nvan", "model.width=8", "train.epochs=1", "train.batch_size=8",
            "train.k=2", "train.amp=none", f"train.tf32={str(tf32).lower()}", "eval.every=1",
            "eval.protocols=[mars-official]", "ray.use_gpu=true", "ray.num_workers=1", "ray.cpus_per_worker=2",
            "ray.max_failures=0", f"ray.storage_path={tmp_path / 'ray'}", "cost.measure=false",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    record = tmp_path / "record.json"
    command = [sys.executable, "-m", "harness.train", *[a for s in sets for a in ("--set", s)], "--no-progress",
               "--out", str(record)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    run = read_record(record).run
    assert run.device == "cuda"
    assert run.precision == {"cudnn_allow_tf32": tf32, "cuda_matmul_allow_tf32": tf32,
                                "float32_matmul_precision": "high" if tf32 else "highest"}
