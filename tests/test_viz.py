"""`foveal viz`: the maps drawn are the forward's own attention, land where the query looks, and the CLI writes them."""

import json

import numpy as np
import pytest
import torch

from foveal.analysis.viz import load_clip
from foveal.cli import main
from foveal.config import load_config, replace
from foveal.data.frames import encoder_input
from foveal.evaluation.pictures import Clip, analyse, draw_attention, headline, patch_maps, row_frames, summary
from foveal.evaluation.plotting import figure_pixels, subplots
from foveal.model.backbones import build_vae
from foveal.model.build import build_model
from foveal.train.checkpoint import atomic_save, model_state


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = load_config("tiny", overrides=["data.num_frames=4", f"cache_dir={tmp_path_factory.mktemp('c')}"])
    model, _ = build_model(cfg)
    vae = build_vae(cfg.model.vae, cfg.model.frame_size, cfg.train.seed)
    return cfg, model.eval(), vae


def test_maps_are_the_softmax_the_forward_used(tiny):
    """Weights over CLS + patches sum to 1; the map drawn is exactly weights[1:]; and per layer, weights @ cached
    values equal what that layer's output projection received during the very forward that returned them (the
    coarse pass's attend, then the fine pass's)."""
    cfg, model, vae = tiny
    clip = load_clip("synthetic:0", cfg)
    layers = model.encoder.dino.encoder.layer
    seen: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [
        layer.attention.o_proj.register_forward_hook(
            lambda mod, args, out, i=i: seen[i].append(args[0].detach()) if args[0].shape[1] == 1 else None
        )  # query reads are [N, 1, D]; the patch encode is [N, P, D]
        for i, layer in enumerate(layers)
    ]
    try:
        view = analyse(model, cfg, clip, vae)
    finally:
        for h in hooks:
            h.remove()
    t, g = len(clip.frames), view.grid
    cache = model.encoder.encode(encoder_input(clip.frames))
    for p_index, name in enumerate(("coarse", "fine")):
        w = view.attention[name]  # [T, L, heads, P]
        assert w.shape == (t, len(layers), model.encoder.num_heads, 1 + g * g)
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5, rtol=0)
        for i, v in enumerate(cache.values):  # v [T, heads, P, hd]
            mixed = (w[:, i, :, None, :] @ v).squeeze(2).flatten(1)  # [T, heads*hd]: heads merged as in o_proj
            torch.testing.assert_close(mixed, seen[i][p_index][:, 0], atol=1e-5, rtol=1e-4)
        maps, cls = patch_maps(w, g)  # the default: last layer, mean over heads
        torch.testing.assert_close(maps, w[:, -1].mean(1)[:, 1:].reshape(t, g, g))
        torch.testing.assert_close(cls, w[:, -1].mean(1)[:, 0])
        torch.testing.assert_close(maps.sum((1, 2)) + cls, torch.ones(t), atol=1e-5, rtol=0)
        one, _ = patch_maps(w, g, layer=1, head=2)
        torch.testing.assert_close(one, w[:, 1, 2, 1:].reshape(t, g, g))
    assert not torch.allclose(view.attention["coarse"], view.attention["fine"])  # two different queries


def test_a_coarse_only_model_is_drawn_with_its_fine_column_marked_untrained(tiny):
    """A coarse-only control (train.fine_iterations=0) has no fine pass of its own: viz still draws both columns (the
    report's gallery covers every run) and says the fine one was never trained; the coarse column is unchanged."""
    cfg, model, vae = tiny
    clip = load_clip("synthetic:0", cfg)
    normal = analyse(model, cfg, clip, vae)
    control = analyse(model, replace(cfg, train={"fine_iterations": 0}), clip, vae)
    assert normal.fine_trained and not control.fine_trained
    torch.testing.assert_close(control.attention["coarse"], normal.attention["coarse"])
    assert set(control.losses) == {"coarse", "fine", "copy"}
    assert "never trained" in headline(control, -1, None) and "never trained" not in headline(normal, -1, None)


def test_a_query_trained_to_look_at_an_object_peaks_there(tmp_path):
    """One square in the top-right (rows 1-2, columns 6-7 of a 9x9 grid of 7 px patches; 64 px frames leave a 1 px
    remainder the encoder drops). A static query trained to attend to it gives maps peaked there, in grid and in
    pixel coordinates; a transposed or shifted map would peak elsewhere."""
    overrides = [
        "data.num_frames=3",
        "model.dino.patch_size=7",
        "model.dino.init_std=0.02",
        f"cache_dir={tmp_path / 'c'}",
    ]
    cfg = load_config("tiny", overrides=overrides)
    model, _ = build_model(cfg)
    model.eval()
    last = model.encoder.dino.encoder.layer[-1].attention
    with torch.no_grad():  # a random encoder (init std 0.02) attends almost uniformly; a pretrained one can focus
        last.q_proj.weight.mul_(5.0)
        last.k_proj.weight.mul_(5.0)
    frames = torch.full((3, 3, 64, 64), 20, dtype=torch.uint8)
    frames[:, :, 7:21, 42:56] = 235
    box = np.array([42.0, 7.0, 56.0, 21.0])
    clip = Clip(frames, "square", boxes=np.stack([box] * 3))
    on_object = torch.zeros(9, 9, dtype=torch.bool)
    on_object[1:3, 6:8] = True
    target = torch.cat([torch.zeros(1, dtype=torch.bool), on_object.flatten()])  # CLS first

    cache = model.encode(encoder_input(frames)[None])
    opt = torch.optim.Adam([model.q_static], lr=0.1)
    for _ in range(40):
        _, att = model.encoder.attend(model.q_static.expand(3, -1), cache, return_attention=True)
        share = att.weights[:, 0, -1].mean(1)[:, target].sum(-1)  # last layer, mean over heads: [T]
        loss = -share.clamp_min(1e-9).log().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    view = analyse(model, cfg, clip)  # no VAE: attention only
    maps, _ = patch_maps(view.attention["coarse"], view.grid)
    assert view.grid == 9 and maps.shape == (3, 9, 9)
    for m in maps:
        r, c = divmod(int(m.argmax()), 9)
        assert on_object[r, c], (r, c)
        assert m[on_object].sum() > 0.5 * m.sum()  # most of the patch mass, not a lucky argmax
    s = summary(view)
    assert s["coarse"]["peak_on_target"] == [True] * 3
    assert not view.losses and not view.pictures


def test_overlay_covers_only_the_patches_the_encoder_reads():
    """256 px frames with 14 px patches: an 18x18 grid over 252 px; the last 4 px stay uncovered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    m = torch.zeros(18, 18)
    m[2, 15] = 1.0
    draw_attention(ax, torch.zeros(3, 256, 256, dtype=torch.uint8), m, 14, 1.0)
    frame_img, heat = ax.get_images()
    assert frame_img.get_extent() == [0, 256, 256, 0]
    assert heat.get_extent() == [0, 252, 252, 0]
    peak = ax.lines[-1].get_xydata()[0]
    assert tuple(peak) == (15.5 * 14, 2.5 * 14)  # x from the column, y from the row
    plt.close(fig)


def _write_video(path, frames: int = 20):
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 72, "yuv420p"
        for i in range(frames):
            img = np.full((72, 96, 3), 20, np.uint8)
            img[20:40, 4 * i : 4 * i + 16] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_viz_cli_writes_grid_gif_and_numbers(tiny, tmp_path, capsys):
    from PIL import Image

    cfg, model, _ = tiny
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    state, frozen = model_state(model)
    state = {"model": state, "frozen_fingerprint": frozen, "config": cfg.to_dict()}
    atomic_save(state, run / "checkpoints/step-1.safetensors")
    video = tmp_path / "moving.mp4"
    _write_video(video)

    ckpt = str(run / "checkpoints/step-1.safetensors")
    code = main(["viz", "--checkpoint", ckpt, "--video", "synthetic:2", str(video), "--decode"])  # VAE decoder
    assert code == 0, capsys.readouterr().err
    out = run / "viz"  # the default: <run folder>/viz
    for name, boxes in (("synthetic-2", True), ("moving", False)):
        grid = Image.open(out / f"{name}.png")
        assert grid.size[0] > 800 and grid.size[1] > 600
        gif = Image.open(out / f"{name}.gif")
        assert gif.n_frames == cfg.data.num_frames
        assert Image.open(out / f"{name}_layers.png").size[1] > 600
        numbers = json.loads((out / f"{name}.json").read_text())
        assert len(numbers["fine"]["cls_share"]) == cfg.data.num_frames
        assert ("peak_on_target" in numbers["fine"]) == boxes
        assert set(numbers["mse"]) == {"coarse", "fine", "copy"}
        assert numbers["mse"]["fine"][1] > 0 and numbers["mse_next_mean"]["copy"] > 0
    assert main(["viz", "--checkpoint", str(run), "--video", "synthetic:0", "--layer", "9"]) == 2
    assert "--layer: 9 is out of range" in capsys.readouterr().err


def test_video_frames_are_sampled_evenly_and_resized(tiny, tmp_path):
    cfg, _, _ = tiny
    video = tmp_path / "moving.mp4"
    _write_video(video, frames=13)
    clip = load_clip(str(video), cfg)
    assert clip.frames.shape == (4, 3, 64, 64) and clip.frames.dtype == torch.uint8
    # the bright bar moves right 4 px a frame: frames 0, 4, 8, 12 of 13 are picked
    columns = clip.frames[:, 0].float().mean(1).argmax(-1)
    assert (columns.diff() > 0).all()


def test_the_gif_rows_are_the_grid_rows_under_its_headline():
    """On a grid whose rows are solid known colours (with a colourbar beside row 0, as draw_row adds), each GIF frame
    is the title band, then that row and no other: its dominant colour is the row's, the others' are absent."""
    colours = [(255, 0, 0), (0, 160, 0), (0, 0, 255)]
    fig, axes = subplots(3, 2, figsize=(4, 6), squeeze=False, layout="constrained")
    for row, colour in zip(axes, colours):
        for ax in row:
            ax.imshow(np.full((4, 4, 3), colour, np.uint8))
            ax.set_title("t")
    fig.colorbar(axes[0, 0].images[0], ax=list(axes[0]))
    fig.suptitle("headline")
    pixels = figure_pixels(fig)
    frames = row_frames(fig, pixels)
    assert len(frames) == 3 and len({f.shape for f in frames}) == 1
    headline_box = fig.suptitle("headline").get_window_extent(fig.canvas.get_renderer())
    below = int(pixels.shape[0] - headline_box.y0)  # image rows from the top to the headline's bottom
    assert (pixels[:below] < 128).any()  # the headline's ink
    for t, frame in enumerate(frames):
        assert np.array_equal(frame[:below], pixels[:below])  # every frame under the same headline
        flat = frame.reshape(-1, 3)
        share = {i: np.all(flat == c, axis=1).mean() for i, c in enumerate(colours)}
        assert share[t] > 0.2 and all(share[i] == 0 for i in share if i != t), (t, share)
