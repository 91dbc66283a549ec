import pytest
import torch
import torch.nn.functional as F

from foveal.config import load_config
from foveal.data.dataset import Collator, build_datasets
from foveal.data.frames import encoder_input
from foveal.model.build import build_model
from foveal.model.foveated import Batch, sample
from foveal.objectives import score, score_passes
from foveal.objectives.base import IGNORE

BOTH = ("recon", "caption")


def ar_scores(model, batch, **kw):
    """The autoregressive path's pass and its scores."""
    p, targets = model.forward_autoregressive(batch, caption=True, **kw)
    return p, score_passes(model, [p], targets, batch, BOTH)[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = load_config("tiny", overrides=["data.num_frames=4", f"cache_dir={tmp_path_factory.mktemp('c')}"])
    torch.manual_seed(0)
    model, tok = build_model(cfg)
    model.eval()
    train, _ = build_datasets(cfg)
    raw = Collator(tok)([train[i] for i in range(2)])
    c, s = model.target_shape[0], model.target_shape[1]
    batch = Batch(encoder_input(raw["frames"]), torch.randn(2, 4, c, s, s), raw["caption_ids"], raw["caption_mask"])
    return model, tok, batch


def test_initialisation_avoids_the_reference_traps(setup):
    model, _, _ = setup
    assert 0.7 < model.q_static.std().item() < 1.4  # std 1.0, not 0.02 (fine == coarse in the reference)
    assert 0.7 < model.q_init.std().item() < 1.4
    assert model.encoder.query_input_proj.bias is None


def test_fine_pass_differs_from_coarse(setup):
    model, _, batch = setup
    out = model(batch)
    assert (out.coarse.hidden - out.fine[0].hidden).abs().max() > 1e-4
    assert not torch.equal(out.coarse.queries, out.fine[0].queries)


def test_causality_changing_a_later_frame_leaves_earlier_predictions(setup):
    """Changing frame j (pixels and target) leaves every prediction and query for frames <= j unchanged: frame j's
    prediction uses frames < j only. The prediction for frame j+1 does change."""
    model, _, batch = setup
    j = 2
    changed = Batch(batch.frames.clone(), batch.targets.clone())
    changed.frames[:, j] = torch.randn_like(changed.frames[:, j])
    changed.targets[:, j] = torch.randn_like(changed.targets[:, j])
    a, b = model(Batch(batch.frames, batch.targets)), model(changed)
    for pa, pb in ((a.coarse, b.coarse), (a.fine[0], b.fine[0])):
        torch.testing.assert_close(pa.pred[:, : j + 1], pb.pred[:, : j + 1], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(pa.queries[:, : j + 1], pb.queries[:, : j + 1], atol=1e-6, rtol=1e-5)
        assert (pa.pred[:, j + 1] - pb.pred[:, j + 1]).abs().max() > 1e-6


def test_clips_in_a_batch_do_not_interact(setup):
    """Per-token normalisation: a clip's result does not depend on the other clips of its batch."""
    model, _, batch = setup
    both = model(Batch(batch.frames, batch.targets)).fine[0].pred[:1]
    alone = model(Batch(batch.frames[:1], batch.targets[:1])).fine[0].pred
    torch.testing.assert_close(both, alone, atol=1e-5, rtol=1e-4)


def test_autoregressive_cache_equals_recompute(setup):
    model, _, batch = setup
    cached, cached_s = ar_scores(model, batch, use_cache=True)
    fresh, fresh_s = ar_scores(model, batch, use_cache=False)
    torch.testing.assert_close(cached.hidden, fresh.hidden, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cached_s.caption_sum, fresh_s.caption_sum, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached_s.recon, fresh_s.recon, atol=1e-5, rtol=1e-4)


def test_fine_pass_equals_autoregressive_fed_the_coarse_queries(setup):
    model, _, batch = setup
    out = model(batch, caption=True)
    _, (fine,) = score(model, out, batch, BOTH)
    ar, ar_s = ar_scores(model, batch, queries=out.fine[0].queries)
    torch.testing.assert_close(ar.hidden, out.fine[0].hidden, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ar_s.recon, fine.recon, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ar_s.caption_sum, fine.caption_sum, atol=1e-4, rtol=1e-4)


def test_caption_labels_eos_counts_padding_never(setup):
    model, tok, batch = setup
    out = model(batch, recon=False, caption=True)
    coarse, _ = score(model, out, batch, ("caption",))
    t = batch.frames.shape[1]
    for row in range(2):
        n = int(batch.caption_mask[row].sum())
        ids = batch.caption_ids[row, :n]
        assert ids[-1].item() == tok.eos_token_id  # eos is a target
        # the state at video_end predicts caption token 0, the state at token i predicts token i+1 (eos last)
        logits = model.llm.lm_head(out.coarse.hidden[row, t + 1 : t + 1 + n])
        expected = F.cross_entropy(logits, ids, reduction="sum")
        torch.testing.assert_close(coarse.caption_sum[row], expected, atol=1e-4, rtol=1e-5)
        assert coarse.caption_count[row].item() == n
    assert (batch.caption_mask.sum(1) != batch.caption_mask.shape[1]).any(), "the test needs one padded caption"


def test_padding_does_not_change_the_loss(setup):
    model, tok, batch = setup
    row = int(batch.caption_mask.sum(1).argmin())
    n = int(batch.caption_mask[row].sum())
    single = Batch(
        batch.frames[row : row + 1], None, batch.caption_ids[row : row + 1, :n], batch.caption_mask[row : row + 1, :n]
    )
    a = score(model, model(single, recon=False, caption=True), single, ("caption",))[0].caption_sum
    b = score(model, model(batch, recon=False, caption=True), batch, ("caption",))[0].caption_sum[row]
    torch.testing.assert_close(a[0], b, atol=1e-4, rtol=1e-5)
    assert IGNORE == -100


def test_multi_fine_iterations(setup):
    model, _, batch = setup
    out = model(batch, caption=True, fine_iterations=3)
    assert len(out.fine) == 3
    assert not torch.equal(out.fine[0].queries, out.fine[1].queries)
    _, fine = score(model, out, batch, BOTH)
    assert all(s.recon is not None and s.caption_sum is not None for s in fine)


def test_generation_modes_and_sampling(setup):
    model, tok, batch = setup
    for mode in ("coarse", "fine", "autoregressive"):
        ids = model.generate(batch.frames, mode=mode, max_new_tokens=5)
        assert ids.shape[0] == 2 and 1 <= ids.shape[1] <= 5
    a = model.generate(batch.frames, max_new_tokens=5, temperature=1.0, top_p=0.9, seed=3)
    b = model.generate(batch.frames, max_new_tokens=5, temperature=1.0, top_p=0.9, seed=3)
    assert torch.equal(a, b)


def test_top_p_keeps_the_smallest_set_that_reaches_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    seen = {int(sample(logits, 1.0, 0.7, g)) for _ in range(300)}
    assert seen == {0, 1}  # 0.5 < 0.7 so token 1 is needed; 0.8 >= 0.7 so token 2 is not
    assert int(sample(logits, 0.0, 1.0, g)) == 0


def test_deep_query_flag_is_honoured(tmp_path):
    """The reference once ignored deep_query=false (its BUG-010)."""
    for deep in (True, False):
        cfg = load_config("tiny", overrides=[f"model.deep_query={str(deep).lower()}", f"cache_dir={tmp_path}"])
        model, _ = build_model(cfg)
        assert model.encoder.deep is deep
        cache = model.encoder.encode(torch.randn(1, 3, 64, 64))
        _, att = model.encoder.attend(torch.randn(1, cfg.model.query_dim), cache, return_attention=True)
        assert att.weights.shape[2] == (cfg.model.dino.num_layers if deep else 1)


def test_compiled_parts_compute_the_same_loss_and_gradients_under_the_same_names(setup):
    """train.compile: every part compiled in place gives the uncompiled model's loss and gradients, and the
    parameters keep their names (a compiled run's checkpoint loads into an uncompiled model)."""
    _, _, batch = setup
    cfg = load_config("tiny", overrides=["data.num_frames=4"])
    models = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model, _ = build_model(cfg)
        if compiled:
            model.compile_parts(backend="aot_eager")  # dynamo and autograd traced, no code generated: fast
        out = model(batch, recon=True, caption=True)
        coarse, (fine,) = score(model, out, batch, BOTH)
        (coarse.recon_loss + fine.recon_loss + fine.caption_loss).backward()
        models.append(model)
    plain, compiled = models
    assert list(compiled.state_dict()) == list(plain.state_dict())
    grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    assert len(grads) > 10 and any(n.startswith("llm.model.") for n in grads)
    for n, p in compiled.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4, msg=n)
