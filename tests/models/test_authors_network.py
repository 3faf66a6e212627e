"""Our presets against an independent transcription of the STE-NVAN authors' networks.

The authors' weights go through `load_official_checkpoint`, exactly as their released
checkpoints would. Both networks run in float64, so float noise (~1e-15 relative) is far below
the tolerance (1e-9), and any difference in the computation, such as a ReLU in the stem
(1.6e-4 to 2.9e-4 relative in fp32), is far above it.
"""

from __future__ import annotations

import pytest
import torch

from authors_reference import AuthorsCNN, clip_outputs
from models.checkpoints import load_official_checkpoint

TOLERANCE = 1e-9  # relative to the largest |output|; float64
# Width 8 and 64 x 32 frames: stage heights 16, 8, 4, 4, so STE-NVAN uses 4 stripes, not 16.
STRIPES = (4, 4, 4, 4)
CLIPS = (2, 4, 3, 64, 32)  # T = 4 still pools twice (4 -> 2 -> 1) with windows of 2


def authors_and_ours(preset: str, tmp_path, randomize_norms):
    torch.manual_seed(0)
    # Every BN random, non-local W included: no block is the identity.
    authors = randomize_norms(AuthorsCNN(preset, num_classes=7, width=8, stripes=STRIPES), seed=1)
    path = tmp_path / f"{preset}.pth"
    # The authors save nn.DataParallel(CNN(...)).state_dict(): every key starts with "module.".
    torch.save({f"module.{k}": v for k, v in authors.state_dict().items()}, path)
    ours = load_official_checkpoint(path, preset, **({"stripes": STRIPES} if preset == "ste_nvan" else {}))
    return authors.double(), ours.double()


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("preset", ["baseline", "nvan", "ste_nvan"])
def test_eval_features_equal_the_authors_network(preset, tmp_path, randomize_norms):
    authors, ours = authors_and_ours(preset, tmp_path, randomize_norms)
    clips = torch.randn(CLIPS, dtype=torch.float64)
    with torch.no_grad():
        expected = clip_outputs(authors.eval(), clips)
        got = ours.eval()(clips)
    assert got.shape == expected.shape
    assert relative_gap(got, expected) <= TOLERANCE


@pytest.mark.parametrize("preset", ["baseline", "nvan", "ste_nvan"])
def test_training_outputs_equal_the_authors_network(preset, tmp_path, randomize_norms):
    # Train mode: batch statistics in every BN, and for the baseline the BNNeck over frames.
    authors, ours = authors_and_ours(preset, tmp_path, randomize_norms)
    clips = torch.randn(CLIPS, dtype=torch.float64)
    expected_feat, expected_logits = clip_outputs(authors.train(), clips)
    feat, logits = ours.train()(clips)
    assert relative_gap(feat, expected_feat) <= TOLERANCE
    assert relative_gap(logits, expected_logits) <= TOLERANCE


def test_a_stem_relu_is_caught(tmp_path, randomize_norms):
    # The check has teeth: torchvision's stem (ReLU after bn1) is far outside the tolerance.
    authors, _ = authors_and_ours("nvan", tmp_path, randomize_norms)
    torch.save({f"module.{k}": v for k, v in authors.float().state_dict().items()}, tmp_path / "n.pth")
    relu = load_official_checkpoint(tmp_path / "n.pth", "nvan", stem_relu=True).double().eval()
    clips = torch.randn(CLIPS, dtype=torch.float64)
    with torch.no_grad():
        assert relative_gap(relu(clips), clip_outputs(authors.double().eval(), clips)) > 1e3 * TOLERANCE
