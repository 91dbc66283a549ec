"""The oracle look (attention forced onto the target's patches) and the pixels target: the instrument's parts for a
positive control, tested on constructed inputs where the answer is known."""

import pytest
import torch

from foveal.config import load_config
from foveal.data.dataset import Collator, build_datasets
from foveal.data.frames import encoder_input
from foveal.evaluation.controls import target_mass
from foveal.evaluation.evaluate import make_batch
from foveal.model.build import build_model
from foveal.model.encoder import look_mask
from foveal.model.foveated import Batch


@pytest.fixture(scope="module")
def where(tmp_path_factory):
    cfg = load_config("where", overrides=["data.num_frames=4", "data.heldout_clips=4", "model.target=pixels",
                                          f"cache_dir={tmp_path_factory.mktemp('c')}"])  # fmt: skip
    torch.manual_seed(0)
    model, tok = build_model(cfg)
    _, heldout = build_datasets(cfg)
    patches = torch.stack([heldout.target_patches(i, model.encoder.patch_size) for i in range(4)])  # [B, T, G*G]
    return model.eval(), make_batch(Collator(tok)([heldout[i] for i in range(4)]), "cpu", False), patches


@pytest.mark.parametrize("deep", [True, False])
def test_the_oracle_mask_puts_all_attention_on_the_target_in_every_layer(where, deep):
    model, batch, patches = where
    model.encoder.deep = deep
    try:
        with torch.no_grad():
            out = model(batch, return_attention=True, fine_bias=look_mask(patches))
    finally:
        model.encoder.deep = True
    fine = target_mass(out.fine[0].attention.weights, patches)  # [B, T, L]
    coarse = target_mass(out.coarse.attention.weights, patches)
    assert patches.any(-1).all()  # the target is on every frame here
    torch.testing.assert_close(fine, torch.ones_like(fine), atol=1e-6, rtol=0)  # every layer, every frame
    assert coarse.mean() < 0.5  # the coarse pass never gets the mask


def test_a_frame_without_target_patches_is_read_as_the_query_chooses():
    patches = torch.zeros(2, 9, dtype=torch.bool)
    patches[0, 4] = True
    bias = look_mask(patches)
    assert bias.shape == (2, 10) and torch.equal(bias[1], torch.zeros(10))
    assert bias[0, 5] == 0 and (bias[0, :5] < -1e3).all()  # CLS (index 0) is outside


def test_pixels_target_is_the_pooled_frame():
    cfg = load_config("tiny", overrides=["model.target=pixels"])
    model, _ = build_model(cfg)
    frames = torch.zeros(1, 2, 3, 64, 64, dtype=torch.uint8)
    frames[0, 1, 0, :8, :8] = 255  # frame 1: one red 8x8 block in the top-left latent cell
    targets = model.target(Batch(encoder_input(frames)), None)
    assert targets.shape == (1, 2, 3, 8, 8) and model.target_shape == (3, 8, 8)
    torch.testing.assert_close(targets[0, 0], torch.full((3, 8, 8), -1.0), atol=1e-5, rtol=0)
    assert targets[0, 1, 0, 0, 0] == pytest.approx(1.0, abs=1e-5) and targets[0, 1, 0, 0, 1] == pytest.approx(-1.0)
