import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.config import InputSize
from harness.params import flatten, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("model: {preset: nvan, width: 8}\ndata: {frames: 8, height: 128, width: 64}\n")
    return path


def test_project_params_load():
    config = load_config(ROOT / "params.yaml")
    assert config.spec(num_classes=10).num_classes == 10


def test_yaml_typed_list_override(params):
    config = load_config(params, ["model.non_local=[0,1,2,0]", "seed=7"])
    assert config.spec(5).non_local == (0, 1, 2, 0)
    assert config.seed == 7


def test_null_override_keeps_preset(params):
    config = load_config(params, ["model.preset=ste_nvan", "model.stripes=[8,8,8,8]", "model.nl_window=null"])
    spec = config.spec(5)
    assert spec.nl_window == 2 and spec.temporal_pool_after == (2, 3) and spec.stripes == (8, 8, 8, 8)


@pytest.mark.parametrize(
    "override, names",
    [
        (["model.non_local=[0,2]"], ["model", "non_local", "[0, 2]"]),
        (["model.non_local=[0,5,3,0]"], ["non_local[1]", "0..4"]),
        (["model.non_local=[0,-1,3,0]"], ["non_local[1]"]),
        (["model.width=0"], ["model.width", "0"]),
        (["model.preset=resnet"], ["model.preset", "resnet", "ste_nvan"]),
        (["model.colour=red"], ["model.colour", "unknown key"]),
        (["data.frames=six"], ["data.frames", "six"]),
        (["model.preset=ste_nvan"], ["stripes[2]", "feature height 8"]),
        (["presets.ste_nvan.stripes=[16,16,16,16]", "model.preset=ste_nvan"], ["stripes[2]", "feature height 8"]),
        (["presets.resnet={}"], ["presets.resnet"]),
        (["presets.nvan.colour=1"], ["presets.nvan.colour"]),
        (["presets.nvan.train={epochz: 3}"], ["presets.nvan.train", "epochz"]),
        (["model.head=time"], ["model.head", "time"]),
        (["train.epoch=steps"], ["train.epoch", "steps"]),
        (["model.preset=ste_nvan", "model.stripes=[8,8,8,8]", "model.nl_window=0", "data.frames=6"], ["temporal pooling after stage 3", "got 3"]),
        (["model.preset=ste_nvan", "model.stripes=[8,8,8,8]", "data.frames=3"], ["nl_window", "3 frames"]),
        (["model.width.x=1"], ["model.width", "is a value"]),
        (["nonsense"], ["KEY=VALUE"]),
        (["model.non_local=[0,2"], ["not valid YAML"]),
        (["eval.select=best"], ["eval.select", "best", "'last' or 'test'"]),
        (["eval.bootstrap_resamples=2000"], ["eval.bootstrap_resamples", "unknown key"]),
        (["report.bootstrap_resamples=2000"], ["report.bootstrap_resamples", "unknown key"]),
        (["report.draws=999"], ["report.draws", "999", "greater than or equal to 1000"]),
    ],
)
def test_bad_values_name_the_key(params, override, names):
    with pytest.raises(ConfigError) as err:
        load_config(params, override)
    for name in names:
        assert name in str(err.value)


def test_runs_report_the_trained_model_unless_told_to_choose_on_the_test_set(params):
    assert load_config(params).eval.select == "last"
    assert (load_config(params).report.draws, load_config(params, ["report.draws=5000"]).report.draws) == (2000, 5000)
    chosen = load_config(params, ["eval.select=test", "eval.select_by=rank1"]).eval
    assert (chosen.select, chosen.select_by) == ("test", "rank1")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_input_size_parse():
    assert InputSize.parse("8x256x128") == InputSize(frames=8, height=256, width=128)
    with pytest.raises(ConfigError, match="TxHxW"):
        InputSize.parse("8x256")


def test_flatten_is_flat_and_scalar(params):
    flat = flatten(load_config(params, ["model.non_local=[0,2,3,0]"]))
    assert flat["model.non_local"] == "[0, 2, 3, 0]"
    assert flat["model.width"] == 8
    assert all(isinstance(v, (int, float, str, bool, type(None))) for v in flat.values())


def test_cli_user_error_exits_2_without_traceback(params):
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cost", "--params", str(params), "--set", "model.width=-3", "--no-measure"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "model.width" in proc.stderr and "Traceback" not in proc.stderr


def test_preset_params_fill_null_model_fields(params):
    with_block = ["presets.ste_nvan.stripes=[4,4,4,4]", "model.preset=ste_nvan"]
    assert load_config(params, with_block).spec(3).stripes == (4, 4, 4, 4)
    assert load_config(params, with_block + ["model.stripes=[8,8,8,8]"]).spec(3).stripes == (8, 8, 8, 8)
    # Another preset's block does not leak into the chosen one.
    assert load_config(params, with_block + ["model.preset=nvan"]).spec(3).stripes == (0, 0, 0, 0)


def test_tf32_flags_follow_the_setting():
    import torch

    from harness.precision import effective, set_tf32

    try:
        assert set_tf32(False) == {"cudnn_allow_tf32": False, "cuda_matmul_allow_tf32": False,
                                   "float32_matmul_precision": "highest"}
        assert set_tf32(True) == {"cudnn_allow_tf32": True, "cuda_matmul_allow_tf32": True,
                                  "float32_matmul_precision": "high"}
        assert torch.backends.cudnn.allow_tf32 and effective()["cuda_matmul_allow_tf32"]
    finally:
        set_tf32(False)
