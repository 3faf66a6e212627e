"""python -m harness.bench: table columns and units, OOM back-off, option errors, files (tiny models, CPU)."""

import math
from pathlib import Path

import polars as pl
import pytest
import torch

from harness.measure.bench import main, slug
from harness.measure.throughput import Setting, bench_one, least_batch
from harness.config import InputSize
from harness.params import load_config
from harness.measure.hardware import cpu_name

ROOT = Path(__file__).resolve().parents[3]
INPUT = "4x128x64"  # T = 4
TINY = ["--configured", "--set", "model.preset=nvan", "--set", "model.width=4", "--input", INPUT,
        "--warmup", "1", "--repeats", "2", "--threads", "1"]
FIGURES = ["clips_per_s", "frames_per_s", "step_ms_median", "step_ms_min", "step_ms_max", "step_ms_q1",
           "step_ms_q3", "spread", "peak_memory_mb", "compile_s", "other_cpus"]


def tiny_spec():
    return load_config(ROOT / "params.yaml", ["model.preset=nvan", "model.width=4"]).spec(625)


def run_bench(monkeypatch, out: Path, *args: str) -> pl.DataFrame:
    monkeypatch.chdir(ROOT)
    assert main([*TINY, "--out-dir", str(out), *args]) == 0
    [parquet] = out.glob("*.parquet")
    return pl.read_parquet(parquet)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU rows (fp16 skipped, peak RSS)")
def test_table_columns_units_and_files(monkeypatch, tmp_path, capsys):
    out = tmp_path / "bench"
    table = run_bench(monkeypatch, out, "--batch", "2", "--mode", "infer,train", "--amp", "none,fp16")
    # Files named by device, torch version and settings; written atomically (no temporary files left).
    names = sorted(p.name for p in out.iterdir())
    stem = f"cpu-{slug(cpu_name())}_torch{torch.__version__.split('+')[0]}_nvan_w4-{INPUT}_infer-train_b2_amp-none-fp16"
    assert names == [f"{stem}_cl-on_compile-off.md", f"{stem}_cl-on_compile-off.parquet"]
    assert {"model", "spec", "model_width", "input", "frames", "mode", "batch_requested", "batch", "oom_backoff",
            "status", "amp", "channels_last", "compile", "repeats", "warmup", "noisy", "memory_kind", "device",
            "threads", "torch_version", "python_version", "hostname", "started_at", *FIGURES} <= set(table.columns)
    assert all(table.schema[c] == pl.Float64 for c in FIGURES)
    assert table.schema["oom_backoff"] == table.schema["noisy"] == pl.Boolean
    assert table.schema["batch"] == table.schema["batch_requested"] == pl.Int64
    assert table.height == 4 and table["device"].unique().to_list() == [f"cpu: {cpu_name()}"]
    ok = table.filter(pl.col("status") == "ok")
    assert sorted(ok["mode"]) == ["infer", "train"] and set(ok["amp"]) == {"none"}
    for r in ok.iter_rows(named=True):
        assert r["batch"] == r["batch_requested"] == 2 and not r["oom_backoff"] and r["threads"] == 1
        assert r["clips_per_s"] == pytest.approx(2 / (r["step_ms_median"] / 1e3))
        assert r["frames_per_s"] == pytest.approx(r["clips_per_s"] * 4)
        assert r["step_ms_min"] <= r["step_ms_q1"] <= r["step_ms_median"] <= r["step_ms_q3"] <= r["step_ms_max"]
        assert r["repeats"] == 2 and r["warmup"] == 1 and r["compile_s"] == 0.0
        assert r["peak_memory_mb"] > 0 and r["memory_kind"] == "cpu peak rss"
        assert r["input"] == INPUT and r["frames"] == 4 and r["model_width"] == 4 and "non_local=(0, 2, 3, 0)" in r["spec"]
    # Training needs more memory than inference of the same model (weights' gradients, Adam state, activations).
    assert ok.filter(mode="train")["peak_memory_mb"][0] > ok.filter(mode="infer")["peak_memory_mb"][0]
    skipped = table.filter(pl.col("amp") == "fp16")
    assert skipped["status"].to_list() == ["skipped"] * 2 and skipped["clips_per_s"].is_nan().all()
    markdown = (out / f"{stem}_cl-on_compile-off.md").read_text()
    for unit in ("milliseconds per step", "clips per second", "frames per second", "MiB", "cpu peak rss"):
        assert unit in markdown
    assert "| median ms/step |" in markdown and "threads: 1" in markdown and "input (T x H x W): 4x128x64" in markdown
    assert markdown in capsys.readouterr().out


def test_tf32_is_a_setting_of_every_row(monkeypatch, tmp_path):
    # On a CPU TF32 changes nothing, but the rows and the file name say which setting each ran with.
    table = run_bench(monkeypatch, tmp_path / "bench", "--batch", "2", "--mode", "infer", "--tf32", "off,on")
    assert sorted(table["tf32"]) == ["off", "on"] and set(table["status"]) == {"ok"}
    assert [p.name for p in (tmp_path / "bench").iterdir() if p.suffix == ".md"][0].endswith("_tf32-off-on.md")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cap is on CPU virtual memory")
def test_oom_halves_the_batch_and_records_it():
    # 40 MiB of address space beyond the built model: batch 32 of this input needs more, 16 fits.
    row = bench_one(tiny_spec(), InputSize.parse(INPUT), Setting("infer", 32, "none", True, False),
                    warmup=1, repeats=2, threads=1, memory_cap_mb=40)
    assert row["status"] == "ok" and row["batch_requested"] == 32 and 1 <= row["batch"] < 32 and row["oom_backoff"]
    assert row["clips_per_s"] == pytest.approx(row["batch"] / (row["step_ms_median"] / 1e3))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cap is on CPU virtual memory")
def test_oom_even_at_batch_one_is_a_row_not_a_crash(monkeypatch, tmp_path):
    # One 16 x 256 x 128 clip needs far more than 1 MiB beyond the built model.
    table = run_bench(monkeypatch, tmp_path, "--batch", "1", "--mode", "infer", "--memory-cap-mb", "1",
                      "--input", "16x256x128")
    [row] = table.iter_rows(named=True)
    assert row["status"] == "oom" and row["batch"] == row["batch_requested"] == 1 and not row["oom_backoff"]
    assert all(math.isnan(row[c]) for c in ("clips_per_s", "step_ms_median", "peak_memory_mb"))


def test_training_batch_floor():
    spec, size = tiny_spec(), InputSize.parse(INPUT)
    assert least_batch(spec, size, "train") == 2  # the clip BNNeck normalises over clips
    assert least_batch(spec, size, "infer") == 1
    baseline = load_config(ROOT / "params.yaml", ["model.preset=baseline", "model.width=4"]).spec(625)
    assert least_batch(baseline, size, "train") == 1  # its BNNeck sees every frame


@pytest.mark.parametrize("args, option", [
    (["--batch", "0,x"], "--batch"),
    (["--batch", "8,"], "--batch"),
    (["--amp", "none,fp8"], "--amp"),
    (["--channels-last", "yes"], "--channels-last"),
    (["--compile", "true"], "--compile"),
    (["--mode", "eval"], "--mode"),
    (["--input", "8x256"], "--input"),
    (["--repeats", "0"], "--repeats"),
    (["--memory-cap-mb", "0"], "--memory-cap-mb"),
    pytest.param(["--amp", "fp16"], "--amp fp16", marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                                           reason="fp16 runs on CUDA")),
])
def test_bad_options_exit_2_with_one_paragraph(cli, tmp_path, args, option):
    done = cli("harness.bench", *TINY, "--out-dir", str(tmp_path), *args)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {option}") and done.stderr.count("\n") == 1, done.stderr
    assert "expected" in done.stderr or "use" in done.stderr
    assert not any(tmp_path.iterdir())
