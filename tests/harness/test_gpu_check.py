"""python -m harness.gpu_check on a CPU machine: the refusal, the measuring and the report's plumbing (tiny model)."""

from pathlib import Path

import pytest
import torch

from harness.measure import gpu_check
from harness.cli import run
from harness.config import PAPER_INPUT, InputSize
from harness.measure.sdpa_kernels import CPU_FLASH


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
