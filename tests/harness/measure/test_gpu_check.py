"""python -m harness.gpu_check on a CPU machine: the refusal, the measuring and the report's plumbing (tiny model)."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
import torch

from harness.measure import first_hour, gpu_check
from harness.results.records import read_record
from harness.cli import run
from harness.config import PAPER_INPUT, InputSize
from harness.measure.sdpa_kernels import CPU_FLASH

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def rows():
    """gpu_check's rows for a width-4 NVAN at 4 x 128 x 64, batch 2, one amp and layout: on CPU without CUDA."""
    return gpu_check.measure_rows(["nvan"], InputSize.parse("4x128x64"), 4, 2, ("none",), (True,), warmup=1,
                                  repeats=2)


def test_refuses_without_cuda(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "run_gpu_tests", lambda: pytest.fail("ran the tests without CUDA"))
    with pytest.raises(SystemExit) as exit_:
        run(gpu_check.main, ["--out", str(tmp_path / "check.md")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no CUDA device: ") and "Run it on a GPU node" in err and err.count("\n") == 1
    assert not (tmp_path / "check.md").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA this would run the whole CUDA suite")
def test_gpu_tests_skipped_without_cuda_are_not_a_pass(capsys):
    passed, summary = gpu_check.run_gpu_tests()
    assert not passed and summary.endswith("s") and " skipped in " in summary and "passed" not in summary
    assert summary in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU kernels")
def test_rows_carry_bench_figures_and_kernels(rows):
    [row] = rows
    assert (row["model"], row["amp"], row["channels_last"]) == ("nvan", "none", True)
    for mode in ("train", "infer"):
        r = row[mode]
        assert r["status"] == "ok" and r["batch"] == r["batch_requested"] == 2 and r["repeats"] == 2
        assert r["clips_per_s"] == pytest.approx(2 / (r["step_ms_median"] / 1e3)) and r["peak_memory_mb"] > 0
    assert row["infer"]["sdpa"] == [CPU_FLASH]
    assert row["train"]["sdpa"] == [CPU_FLASH, CPU_FLASH + "_backward"]
    table = gpu_check.format_table(rows)
    assert table.splitlines()[0] == ("| model | amp | channels-last | train clips/s | train peak MiB | train SDPA | "
                                     "infer clips/s | infer peak MiB | infer SDPA |")
    assert (f"| nvan | none | on | {row['train']['clips_per_s']:.1f} | {row['train']['peak_memory_mb']:.0f} | "
            f"flash_attention_for_cpu, flash_attention_for_cpu_backward | {row['infer']['clips_per_s']:.1f} |") in table


def test_main_writes_the_report_atomically_and_fails_with_the_tests(rows, monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpu_check, "require_cuda", lambda: "NVIDIA Test GPU")
    monkeypatch.setattr(gpu_check, "run_gpu_tests", lambda: (False, "1 failed, 53 passed in 60.00s"))
    monkeypatch.setattr(gpu_check, "measure_rows", lambda *args: calls.append(args) or rows)
    assert gpu_check.main(["--batch", "4"]) == 1
    [(presets, size, width, batch, amps, layouts, warmup, repeats)] = calls
    assert (presets, size, width, batch) == (["baseline", "nvan", "ste_nvan"], PAPER_INPUT, 64, 4)
    assert (amps, layouts, warmup, repeats) == (("none", "bf16", "fp16"), (True, False), 3, 10)
    folder = Path("reports/gpu_check")
    assert [p.name for p in folder.iterdir()] == ["nvidia-test-gpu.md"]  # no temporary file left
    text = (folder / "nvidia-test-gpu.md").read_text()
    assert text.startswith("# GPU check: NVIDIA Test GPU\n\n- GPU tests (pytest tests/gpu -q -p no:cacheprovider "
                           "-n 0): FAILED: 1 failed, 53 passed in 60.00s\n")
    assert "- batch (clips per step): 4\n" in text and gpu_check.format_table(rows) in text
    assert text in capsys.readouterr().out


def test_batch_below_two_is_a_user_error(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "require_cuda", lambda: "NVIDIA Test GPU")
    with pytest.raises(SystemExit) as exit_:
        run(gpu_check.main, ["--batch", "1"])
    assert exit_.value.code == 2 and "--batch 1: expected an integer >= 2" in capsys.readouterr().err


@pytest.mark.parametrize(("gpus", "ranks"), [(0, 1), (1, 1), (2, 2), (3, 2), (4, 4), (7, 4), (8, 8), (16, 8)])
def test_the_first_gpu_hour_trains_on_as_many_gpus_as_split_a_batch(gpus, ranks):
    assert first_hour.ranks_for(gpus) == ranks


def test_all_writes_the_check_and_the_hour_under_one_folder(rows, monkeypatch, tmp_path, capsys):
    given = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpu_check, "require_cuda", lambda: "NVIDIA Test GPU")
    monkeypatch.setattr(gpu_check, "run_gpu_tests", lambda: (True, "57 passed in 60.00s"))
    monkeypatch.setattr(gpu_check, "measure_rows", lambda *args: rows)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    steps = [{"step": "train NVAN 2 epochs", "exit": 0, "seconds": 1.0, "log": "logs/02 train.log", "command": "-"},
             {"step": "bench bf16", "exit": "skipped: out of time", "seconds": 0, "log": "-", "command": "-"}]
    monkeypatch.setattr(first_hour, "run_steps", lambda *args: given.append(args) or steps)
    assert gpu_check.main(["--all"]) == 1  # a step skipped is not a pass
    folder = Path("reports/gpu_hour/nvidia-test-gpu")
    [(out, sizes, budget)] = given
    assert out == folder and sizes == replace(first_hour.GPU, ranks=2) and 0 < budget < 570
    assert sorted(p.name for p in folder.iterdir()) == ["gpu_check.md", "summary.md"]
    summary = (folder / "summary.md").read_text()
    assert summary.startswith("# The first GPU hour: NVIDIA Test GPU\n")
    assert "| bench bf16 | skipped: out of time | 0 | - |" in summary
    assert "GPU tests and throughput table: passed: 57 passed in 60.00s, table in gpu_check.md" in summary
    assert summary in capsys.readouterr().out


def test_steps_past_the_budget_are_skipped_and_listed(tmp_path):
    results = first_hour.run_steps(tmp_path, first_hour.REHEARSAL, budget_s=1e-9)
    assert [r["exit"] for r in results] == ["skipped: out of time"] * 6
    assert "| train NVAN 2 epochs | skipped: out of time | 0 | - |" in first_hour.summary(tmp_path, "x", None, results)


def test_a_budget_of_no_time_is_a_user_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        run(gpu_check.main, ["--all", "--budget", "0"])
    assert exit_.value.code == 2 and "--budget 0: expected seconds > 0" in capsys.readouterr().err


@pytest.mark.slow(seconds=150)
def test_the_rehearsal_runs_every_step_of_the_first_gpu_hour(tmp_path):
    # As a user runs it; on the CPU at toy sizes, the training on 2 ranks over gloo.
    done = subprocess.run([sys.executable, "-m", "harness.gpu_check", "--all", "--rehearse", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    summary = (tmp_path / "summary.md").read_text()
    assert done.returncode == 0, summary
    names = [name for name, _ in first_hour.steps(tmp_path, first_hour.REHEARSAL)]
    assert len(names) == 6 and all(f"| {name} | 0 | " in summary for name in names), summary
    record = read_record(tmp_path / "train" / "record.json")
    assert record.run.workers == 2 and record.epochs == 2
    assert record.run.precision["cudnn_allow_tf32"] is False
    # harness.evaluate rescored the best checkpoint in one process: the sharded evaluation's every score.
    assert ", same checkpoint, 12 scores: identical\n" in summary, summary
    scored = json.loads((tmp_path / "evaluate" / "scores.json").read_text())
    assert scored["mars-official"]["rank1"] == record.scores["mars-official"].rank1
    assert pl.read_parquet(tmp_path / "evaluate" / "queries.parquet").height > 0
    [table] = (tmp_path / "bench").glob("*_amp-none_*_tf32-off-on.md")
    rows = [line.split(" | ") for line in table.read_text().splitlines() if line.startswith("| ") and " ok " in line]
    assert sorted((r[0][2:], r[1], r[4]) for r in rows) == sorted(
        (p, m, t) for p in ("baseline", "nvan", "ste_nvan") for m in ("infer", "train") for t in ("off", "on"))
    assert len(list((tmp_path / "bench").glob("*_amp-bf16_*.md"))) == 1
