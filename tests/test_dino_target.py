"""The dino target: the next frame's encoder patch features, taken from the encoder pass the queries use."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import tiny_overrides
from foveal.analysis.inference import load_run
from foveal.cli import main
from foveal.config import ConfigError, load_config, replace
from foveal.data.dataset import build_datasets
from foveal.data.frames import encoder_input
from foveal.model.build import build_model
from foveal.model.foveated import Batch
from foveal.model.heads import HEADS, Head, build_head
from foveal.model.targets import frame_losses
from foveal.model.targets.dino import fit_pca
from foveal.objectives import score


class IdentityLinear(Head):
    """A per-position linear map of the previous frame's features, initialised to the identity; ignores h."""

    def __init__(self, channels):
        super().__init__(1, channels, 1)
        self.linear = torch.nn.Conv2d(channels, channels, 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(channels)[:, :, None, None])
            self.linear.bias.zero_()

    def predict(self, h, prev):  # [P, N, H], [N, C, S, S] -> [P, N, C, S, S]
        return self.linear(prev).expand(h.shape[0], *prev.shape)


def dino_setup(cache_dir, clips=2, **kw):
    overrides = {"model.target": "dino", "model.dino_target.pca": 0, "data.num_frames": 4, **kw}
    cfg = load_config("tiny", overrides=[*tiny_overrides(**overrides), f"cache_dir={cache_dir}"])
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    train_set, heldout = build_datasets(cfg)
    return cfg, model.eval(), train_set, heldout, frames_batch([heldout[i] for i in range(clips)])


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The tiny model on the dino target, all 128 channels (no PCA): (cfg, model, train set, held-out, batch)."""
    return dino_setup(str(tmp_path_factory.mktemp("cache")))


def frames_batch(items):
    """Dataset items -> a Batch of their frames only (the dino target needs nothing else)."""
    return Batch(encoder_input(torch.stack([it["frames"] for it in items])))


def recon(model, out, batch):
    """Each pass's per-frame recon scores."""
    coarse, fine = score(model, out, batch, ("recon",))
    return [coarse, *fine]


def copy_last_features(model, clips):
    """Copy-last on these clips through the model's own target: frame t-1's features as frame t's."""
    batch = frames_batch(clips)
    with torch.no_grad():
        c = model.target.copy_last(model.target(batch, model.encode(batch.frames)))
    return {"mse": c.mse.numpy(), "cosine": c.cosine.numpy()}


def with_head(model, head):
    """A copy of model holding another head (the shared fixture stays as it was)."""
    other = copy.deepcopy(model)
    other.head = head
    return other


def hf_patch_features(model, frames):
    """[B, T, 3, H, W] -> [B, T, S*S, D] via the HF model's own forward (not the encoder's written-out one)."""
    b, t = frames.shape[:2]
    with torch.no_grad():
        out = model.encoder.dino(pixel_values=frames.flatten(0, 1)).last_hidden_state
    return out[:, 1:].unflatten(0, (b, t))


def test_identity_predictor_at_gap_0_has_zero_loss_and_at_gap_1_equals_copy_last(plain):
    cfg, model, _, heldout, batch = plain
    model = with_head(model, IdentityLinear(model.target_shape[0]))
    _, still = build_datasets(replace(cfg, data={"frame_gap": 0}))  # every frame is the first one
    still_batch = frames_batch([still[i] for i in range(2)])
    with torch.no_grad():
        at_gap = {0: recon(model, model(still_batch), still_batch), 1: recon(model, model(batch), batch)}
    copy = copy_last_features(model, [heldout[i] for i in range(2)])
    for gap, scores in at_gap.items():
        for p in scores:
            if gap == 0:  # predicting frame t from frame t-1 is exact
                assert p.recon[:, 1:].abs().max() < 1e-10
                assert (p.cosine[:, 1:] > 1 - 1e-5).all()
            else:  # the identity predictor is copy-last, so their per-frame MSE must agree
                assert p.recon[:, 1:].min() > 1e-3
                torch.testing.assert_close(p.recon[:, 1:], torch.from_numpy(copy["mse"]), atol=1e-5, rtol=1e-5)
            assert p.recon[:, 0].min() > 1e-3  # frame 0 is predicted from the learned blank (zeros at init)


def test_copy_last_equals_the_hand_computed_mse_between_consecutive_frames(plain):
    _, model, _, heldout, _ = plain
    clips = [heldout[i] for i in range(3)]
    copy = copy_last_features(model, clips)
    x = hf_patch_features(model, encoder_input(torch.stack([c["frames"] for c in clips])))  # [B, T, S*S, D]
    mse = (x[:, 1:] - x[:, :-1]).pow(2).mean(dim=(2, 3))  # [B, T-1]
    cos = F.cosine_similarity(x[:, 1:], x[:, :-1], dim=-1).mean(-1)
    assert copy["mse"].shape == (3, 3)
    torch.testing.assert_close(torch.from_numpy(copy["mse"]), mse, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(copy["cosine"]), cos, atol=1e-5, rtol=1e-4)
    assert mse.min() > 1e-3  # moving objects: the frames differ


def test_targets_are_bitwise_the_features_of_the_one_encoder_pass(plain):
    _, model, _, _, batch = plain
    model = copy.deepcopy(model)
    calls, seen = [], {}
    encode = model.encoder.encode

    def counting_encode(frames):
        calls.append(1)
        cache = encode(frames)
        seen["features"] = cache.features
        return cache

    model.encoder.encode = counting_encode
    model.target.register_forward_hook(lambda m, args, out: seen.update(targets=out))
    model.head.register_forward_hook(lambda m, args, out: seen.update(prev=args[1]))
    with torch.no_grad():
        model(batch)
    assert len(calls) == 1  # one encoder pass serves the queries and the targets
    b, t = batch.frames.shape[:2]
    c, s, _ = model.target_shape
    expected = seen["features"][:, 1:].transpose(1, 2).reshape(b, t, c, s, s)  # drop CLS, onto the patch grid
    assert torch.equal(seen["targets"], expected)
    assert torch.equal(seen["prev"][:b, 1:], expected[:, :-1])  # the head reads frame t-1's features
    torch.testing.assert_close(  # and they are DINOv2's own features (HF forward, up to float rounding)
        seen["targets"], hf_patch_features(model, batch.frames).transpose(2, 3).reshape(b, t, c, s, s)
    )


def test_no_gradient_into_the_encoder_through_the_targets(plain):
    """Frozen: no encoder parameter gets a gradient. Trainable: the targets are detached, so a head that ignores h
    sends none either, while a head that reads h does (the test can tell the two apart)."""
    _, model, _, _, batch = plain
    frozen = copy.deepcopy(model).train()
    recon(frozen, frozen(batch), batch)[1].recon.mean().backward()
    assert all(p.grad is None for p in frozen.encoder.dino.parameters())

    for head, reaches in ((IdentityLinear(model.target_shape[0]), False), (model.head, True)):
        trainable = with_head(model, head).train()
        trainable.encoder.dino.requires_grad_(True)  # what model.dino.freeze=false builds
        recon(trainable, trainable(batch), batch)[1].recon.mean().backward()
        grads = [p.grad.abs().sum().item() for p in trainable.encoder.dino.parameters() if p.grad is not None]
        assert (sum(grads) > 0) is reaches, head.name


def test_pca_is_a_fitted_orthonormal_reduction(cache_dir):
    _, model, train_set, _, _ = dino_setup(cache_dir, **{"model.dino_target.pca": 8})
    with pytest.raises(RuntimeError, match="not fitted"):
        model.target(Batch(torch.zeros(1, 2, 3, 64, 64)), model.encode(torch.zeros(1, 2, 3, 64, 64)))
    info = fit_pca(model.target, model, train_set, clips=4)
    basis, explained = model.target.basis, model.target.explained
    torch.testing.assert_close(basis.T @ basis, torch.eye(8), atol=1e-5, rtol=0)
    assert (explained[:-1] >= explained[1:]).all() and 0 < info["explained_variance"] < 1
    frames = torch.stack([train_set[i]["frames"] for i in range(4)])  # the clips the PCA was fitted on
    with torch.no_grad():
        x = encoder_input(frames)
        y = model.target(Batch(x), model.encode(x))  # [4, 4, 8, 8, 8]
    y = y.transpose(2, 4).reshape(-1, 8).double()
    var = y.var(0, unbiased=False)
    assert y.mean(0).abs().max() < 1e-3  # centred
    assert (var[:-1] >= var[1:]).all()  # the components come in order of variance
    cov = y.T @ y / len(y)
    assert (cov - torch.diag(torch.diag(cov))).abs().max() < 1e-3 * var[0]  # decorrelated

    # every registered head runs end to end on the reduced target (the tiny preset's default, 16 channels here 8)
    model.train()
    for name in sorted(HEADS):
        torch.manual_seed(0)
        other = with_head(model, build_head(name, model.llm.config.hidden_size, 8, 8))
        b = frames_batch([train_set[i] for i in range(2)])
        out = other(b)
        assert out.fine[0].pred.shape == (2, 4, 8, 8, 8)
        loss = sum(s.recon.mean() for s in recon(other, out, b))
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is not None for p in other.head.parameters()), name


def test_cls_option_appends_the_cls_feature_to_every_position(cache_dir):
    _, model, _, _, batch = dino_setup(cache_dir, **{"model.dino_target.cls": "true"})
    assert model.target_shape == (256, 8, 8)
    with torch.no_grad():
        cache = model.encode(batch.frames)
        targets = model.target(batch, cache)  # [B, T, 2D, S, S]
    cls = cache.features[:, 0].view(2, 4, 128)
    assert torch.equal(targets[:, :, 128:, 3, 5], cls)
    assert torch.equal(targets[:, :, :128, 0, 0], cache.features[:, 1].view(2, 4, 128))


def test_losses_report_mse_and_cosine_whatever_the_loss():
    torch.manual_seed(0)
    target = torch.randn(2, 3, 5, 4, 4)
    pred = 2 * target  # same direction everywhere: cosine 1, MSE = mean(target^2)
    for kind in ("mse", "smooth_l1", "cosine"):
        loss, mse, cos = vars(frame_losses(pred, target, kind)).values()
        torch.testing.assert_close(mse, target.pow(2).flatten(2).mean(-1))
        torch.testing.assert_close(cos, torch.ones(2, 3))
        expected = {
            "mse": mse,
            "smooth_l1": F.smooth_l1_loss(pred, target, reduction="none").flatten(2).mean(-1),
            "cosine": torch.zeros(2, 3),
        }[kind]
        torch.testing.assert_close(loss, expected)
    loss = frame_losses(-target, target, "cosine").loss
    torch.testing.assert_close(loss, torch.full((2, 3), 2.0))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_head_runs_at_the_full_presets_dino_grid(name):
    """The full preset's 18x18 patch grid: a real forward with PCA-reduced channels, and a shape-only (meta device)
    forward with all 384 (the mlp head alone would hold 515M parameters there)."""
    full = load_config("full", overrides=["model.target=dino"])
    h, s = full.model.llm.hidden_size, full.model.frame_size // full.model.dino.patch_size
    assert s == 18
    torch.manual_seed(0)
    pred = build_head(name, h, 16, s)(torch.randn(2, h), torch.randn(2, 16, s, s))
    assert pred.shape == (2, 16, s, s) and torch.isfinite(pred).all()
    with torch.device("meta"):
        head = build_head(name, h, 384, s)
        assert head(torch.randn(2, h), torch.randn(2, 384, s, s)).shape == (2, 384, s, s)


def test_heads_command_prints_the_dino_sizes(capsys):
    assert main(["heads", "--target", "dino", "--preset", "full"]) == 0
    printed = capsys.readouterr().out
    assert "target 384x18x18" in printed
    assert "515,118,592" in printed  # mlp: (576 + 384*18*18) -> 2048 -> 2048 -> 384*18*18
    assert main(["heads", "--target", "dino", "--preset", "tiny"]) == 0
    assert "target 16x8x8" in capsys.readouterr().out


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.target_loss"):
        load_config("tiny", overrides=["model.target_loss=l1"])
    with pytest.raises(ConfigError, match="model.dino_target.pca"):
        load_config("tiny", overrides=["model.target=dino", "model.dino_target.pca=500"])
    with pytest.raises(ConfigError, match="data.frame_gap"):
        load_config("tiny", overrides=["data.frame_gap=2", "data.source=clips.csv"])


def test_compare_on_the_dino_target_has_the_copy_last_row_and_the_gap(tmp_path, cache_dir, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--target", "dino", "--heads", "film,mlp", "--steps", "2", "--out", str(out), "--quiet"]
    extra = {"data.num_frames": 4, "data.train_clips": 8, "data.heldout_clips": 4, "data.frame_gap": 2}
    extra["model.dino_target.fit_clips"] = 4
    overrides = [o for o in tiny_overrides(**extra) if not o.startswith("train.steps")]
    assert main([*args, *overrides, f"cache_dir={cache_dir}"]) == 0
    printed = capsys.readouterr().out
    assert "| copy-last (control) | - | - | - | 0 | - |" in printed
    assert "Copy MSE / MSE fine" in printed and "Gap between frames: 2 frame(s)" in printed
    rows = json.loads((out / "summary.json").read_text())
    assert [r["head"] for r in rows] == ["film", "mlp"]
    for r in rows:
        assert r["target"] == "dino" and r["frame_gap"]["frames"] == 2 and r["target_shape"] == [16, 8, 8]
        m = r["metrics"]
        assert m["copy_last_mse"] == rows[0]["metrics"]["copy_last_mse"]  # frozen encoder: one control for all heads
        result = json.loads((out / r["head"] / "results.json").read_text())
        assert -1 <= result["cos_fine"] <= 1 and result["mse_fine"] == result["loss_fine"]  # mse is the default loss
        assert m["h_zero_minus_fine"]["over"] == "clips"  # the h-ablation, as on every target
        held = result["heldout"]["recon"]
        assert {"mse_fine_steered", "cos_fine_steered", "cos_coarse"} <= set(held)
    # the fitted reduction is saved in the run and carried by its checkpoint
    saved = load_file(str(out / "film" / "target_pca.safetensors"))
    _, model, _ = load_run(out / "film")
    assert torch.equal(model.target.basis, saved["basis"]) and torch.equal(model.target.mean, saved["mean"])
