"""examples/paper-*.yaml: the STE-NVAN authors' recipe, value by value (README: "The authors' recipe and ours")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from authors_reference import AuthorsCNN
from datasets.sampling import PKSampler
from harness.params import load_config
from models.video_reid import build_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RECIPES = [("paper-mars.yaml", "mars", 625), ("paper-dukev.yaml", "duke", 702)]


@pytest.mark.parametrize("file, dataset, identities", RECIPES)
@pytest.mark.parametrize("preset", ["baseline", "nvan", "ste_nvan"])
def test_recipe_is_the_authors(file, dataset, identities, preset):
    config = load_config(EXAMPLES / file, [f"model.preset={preset}"])
    assert config.data.dataset == dataset and config.data.input.label() == "8x256x128"
    train = config.train
    assert (train.p, train.k, train.epoch, train.sampler) == (8, 4, "identities", "chunk_random")
    assert (train.optimizer, train.lr, train.scheduler, train.step_size, train.gamma) == ("adam", 1e-4, "step", 50, 0.1)
    assert (train.epochs, train.weight_decay) == ((300, 1e-5) if preset == "baseline" else (200, 5e-5))
    assert (train.amp, train.triplet_weight, train.id_weight) == ("none", 1.0, 1.0) and train.imagenet_init
    # The authors' ckpt_best.pth: the best rank-1 on the test set (optimistic), not the trained model.
    assert (config.eval.every, config.eval.select, config.eval.select_by, config.eval.sampler, config.eval.metric) == (
        10, "test", "rank1", "chunk_first", "cosine")
    spec = config.spec(identities)
    assert spec.width == 64 and spec.last_stride == 1 and spec.stem_relu is False
    assert spec.head == ("frame" if preset == "baseline" else "clip")
    if preset != "baseline":
        assert spec.non_local == (0, 2, 3, 0)
    if preset == "ste_nvan":
        assert spec.stripes == (16, 16, 16, 16) and spec.nl_window == 2 and spec.temporal_pool_after == (2, 3)
    # One epoch: one pass over the identities, P per step.
    labels = np.repeat(np.arange(identities), 3)
    assert len(PKSampler(labels, train.p, train.k, mode=train.epoch)) == identities // 8


@pytest.mark.parametrize("preset", ["baseline", "nvan", "ste_nvan"])
def test_recipe_network_has_the_authors_parameters(preset):
    spec = load_config(EXAMPLES / "paper-mars.yaml", [f"model.preset={preset}"]).spec(625)
    ours = build_model(spec).state_dict()
    theirs = AuthorsCNN(preset, 625).state_dict()
    assert len(ours) == len(theirs)
    assert sorted(v.shape for v in ours.values()) == sorted(v.shape for v in theirs.values())


def test_preset_train_overrides_apply_only_to_their_preset():
    nvan = load_config(EXAMPLES / "paper-mars.yaml", ["model.preset=nvan", "presets.nvan.train.epochs=3"])
    assert nvan.train.epochs == 3
    assert load_config(EXAMPLES / "paper-mars.yaml", ["model.preset=baseline"]).train.epochs == 300


def test_the_command_line_wins_over_a_preset_block():
    # paper-mars.yaml's presets.baseline.train sets 300 epochs; an explicit --set is the user's last word.
    config = load_config(EXAMPLES / "paper-mars.yaml", ["model.preset=baseline", "train.epochs=10"])
    assert (config.train.epochs, config.train.weight_decay) == (10, 1e-5)  # the block's other keys still apply
    # The block itself can be set from the command line, and then holds.
    config = load_config(EXAMPLES / "paper-mars.yaml", ["model.preset=baseline", "presets.baseline.train.epochs=7"])
    assert config.train.epochs == 7


@pytest.mark.parametrize("file, dataset, identities", RECIPES)
def test_the_recipe_is_true_fp32(file, dataset, identities):
    # The authors trained with PyTorch 1.0, before TF32 existed: no TF32 anywhere in the recipe.
    assert load_config(EXAMPLES / file, ["model.preset=nvan"]).train.tf32 is False
