"""Extension points: a new target and a new objective are one class and one registry line each (as in the README's
"extend foveal"), and a comparison runs with them, every table and control included."""

import json

import pytest
import torch
import torch.nn.functional as F

from foveal.analysis.compare import compare
from foveal.config import ConfigError
from foveal.model.targets import TARGETS, Target
from foveal.objectives import OBJECTIVES, Objective


class PooledFrames(Target):
    """The next frame itself, average-pooled onto the patch grid: [3, G, G] (no weights, no preparation)."""

    @staticmethod
    def shape_for(cfg, encoder_width, patch_size):
        grid = cfg.model.frame_size // patch_size
        return (3, grid, grid)

    def forward(self, batch, cache):
        b, t = batch.frames.shape[:2]
        pooled = F.adaptive_avg_pool2d(batch.frames.flatten(0, 1), self.shape[1])  # [B*T, 3, G, G]
        return pooled.view(b, t, *self.shape)


class CaptionPlusRecon(Objective):
    """Both losses, unweighted."""

    kinds = ("recon", "caption")

    def pass_loss(self, s, t):
        return s.recon_loss + s.caption_loss


@pytest.fixture
def registered():
    TARGETS.register("toy_pooled")(PooledFrames)  # the one line a new target file has
    OBJECTIVES.register("toy_sum")(CaptionPlusRecon)
    yield
    del TARGETS["toy_pooled"], OBJECTIVES["toy_sum"]


def test_a_toy_target_and_objective_run_through_compare(registered, tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"model.target": "toy_pooled", "train.objective": "toy_sum", "train.steps": 2})
    rows = compare(cfg, ["film", "spatial_film"], tmp_path / "cmp", controls="all")
    assert [r["head"] for r in rows] == ["film", "spatial_film"]
    for r in rows:
        assert r["target"] == "toy_pooled" and r["objective"] == "toy_sum" and r["target_shape"] == [3, 8, 8]
        m = r["metrics"]
        for name in ("recon_ratio", "caption_ratio", "h_zero_minus_fine", "mse_copy_over_fine"):
            assert m[name]["over"] == "clips" and m[name]["ci"][0] <= m[name]["value"] <= m[name]["ci"][1], name
        result = json.loads((tmp_path / "cmp" / r["head"] / "results.json").read_text())
        assert len(result["step_ratios"]["recon"]) == len(result["step_ratios"]["caption"]) == 2
    arrays = torch.load(tmp_path / "cmp" / "film" / "heldout_losses.pt")
    # the copy-last control is the toy target's own: pooled frame t-1 against pooled frame t
    assert arrays["copy_last_mse"].shape == (8, 3) and (arrays["copy_last_mse"] > 0).all()
    text = (tmp_path / "cmp" / "summary.md").read_text()
    assert "Target: toy_pooled (3x8x8)" in text and "objective toy_sum" in text
    assert "| Caption Final Ratio | Caption Held-out Ratio |" in text  # an objective with a caption loss


def test_an_unregistered_target_is_a_config_error(tiny_cfg):
    with pytest.raises(ConfigError, match="model.target: 'toy_pooled' is not allowed; choose one of dino, pixels, vae"):
        tiny_cfg(**{"model.target": "toy_pooled"})
