"""model.glimpse = position: the frame token also says where its query looked."""

import math

import torch

from foveal.config import load_config
from foveal.data.dataset import Collator, build_datasets
from foveal.data.frames import encoder_input
from foveal.model.build import build_model
from foveal.model.encoder import look_mask
from foveal.model.foveated import Batch
from foveal.model.glimpse import GlimpseLocation


def build(glimpse: str, cache):
    cfg = load_config("tiny", overrides=["data.num_frames=4", f"cache_dir={cache}", f"model.glimpse={glimpse}"])
    model, tok = build_model(cfg)
    return cfg, model.eval(), tok


def test_where_is_the_attention_centre_and_spread_on_the_grid():
    g = GlimpseLocation(grid=4, hidden=8)
    one = torch.zeros(2, 17)
    one[0, 0] = 5.0  # mass on CLS has no place: ignored
    one[0, 1 + 2 * 4 + 3] = 1.0  # row 2, column 3
    one[1, 1:] = 1.0 / 16  # uniform over the grid
    where = g.where(one)
    torch.testing.assert_close(where[0], torch.tensor([3.5 / 4, 2.5 / 4, 0.0, 0.0]), atol=1e-3, rtol=0)
    std = math.sqrt((4**2 - 1) / 12) / 4  # a uniform discrete grid's std, in shares of the side
    torch.testing.assert_close(where[1], torch.tensor([0.5, 0.5, std, std]), atol=1e-5, rtol=0)


def test_tokens_of_the_same_content_at_two_places_differ_only_with_a_glimpse_location(tmp_path):
    """The look at the first patch and at the last one, both showing the same pixels: without a location the two
    tokens differ only through the encoder's weak position embeddings; with one they differ several times more."""
    change = {}
    for glimpse in ("none", "position"):
        cfg, model, _ = build(glimpse, tmp_path)
        grid, ps, size = model.encoder.grid(cfg.model.frame_size), model.encoder.patch_size, cfg.model.frame_size
        torch.manual_seed(0)
        frames = torch.randn(1, 1, 3, size, size).repeat(1, 2, 1, 1, 1)
        frames[..., -ps:, -ps:] = frames[..., :ps, :ps]
        allowed = torch.zeros(1, 2, grid * grid, dtype=torch.bool)
        allowed[0, 0, 0] = allowed[0, 1, -1] = True
        with torch.no_grad():
            tokens, _ = model.read(model.q_static.expand(1, 2, -1), model.encode(frames), bias=look_mask(allowed))
        change[glimpse] = float((tokens[0, 0] - tokens[0, 1]).norm() / tokens[0, 0].norm())
    assert change["position"] > 3 * change["none"], change


def test_fine_pass_equals_autoregressive_with_a_glimpse_location(tmp_path):
    cfg, model, tok = build("position", tmp_path)
    train, _ = build_datasets(cfg)
    raw = Collator(tok)([train[i] for i in range(2)])
    c, s = model.target_shape[0], model.target_shape[1]
    batch = Batch(encoder_input(raw["frames"]), torch.randn(2, 4, c, s, s))
    with torch.no_grad():
        out = model(batch)
        ar, _ = model.forward_autoregressive(batch, queries=out.fine[0].queries)
        plain = model.project(model.encoder.attend(out.fine[0].queries.flatten(0, 1), model.encode(batch.frames))[0])
    # frame by frame with a KV cache against one batched pass: fp32 rounding, up to ~1e-5 on states of size ~1
    torch.testing.assert_close(ar.hidden, out.fine[0].hidden, atol=3e-5, rtol=1e-4)
    assert (out.fine[0].tokens.flatten(0, 1) - plain).abs().max() > 1e-2  # the location is really added
