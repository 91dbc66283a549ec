"""The `foveal` command line. Every subcommand resolves a RunConfig (preset -> YAML -> flags -> key=value overrides)
and calls one library function; `python -m foveal` and `torchrun -m foveal` work the same."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, RunConfig, load_config
from .data.export import CODECS, FRAME_FORMATS
from .heads import HEADS


def _add_config_args(p: argparse.ArgumentParser, default_preset: str | None = "tiny") -> None:
    p.add_argument("--preset", default=None, help=f"named preset (default {default_preset})")
    p.add_argument("--config", default=None, help="YAML run config (e.g. a run folder's config.yaml)")
    p.add_argument("--data", default=None, help="'synthetic', a manifest (.csv/.jsonl) or a folder of frame folders")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget per run")
    p.add_argument("--objective", choices=["recon", "caption", "joint"], default=None)
    p.add_argument("--coarse-weight", type=float, default=None, help="0 = the seed's protocol (fine loss only)")
    p.add_argument("--fine-iterations", type=int, default=None)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None)
    p.add_argument("--target", choices=["vae", "dino"], default=None)
    p.add_argument("--dino", default=None, help="DINOv2 weights: hub id or folder (default: the preset's)")
    p.add_argument("--llm", default=None, help="LLM weights: hub id, folder, .gguf or smollm2-gguf")
    p.add_argument("--vae", default=None, help="VAE weights: hub id or folder")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (WANDB_MODE=offline works)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (CI)")
    p.add_argument("--overwrite", action="store_true", help="start afresh where a run already has checkpoints")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-4 data.num_frames=16")


def config_from_args(args: argparse.Namespace, **extra) -> RunConfig:
    o: dict = {"model": {}, "data": {}, "train": {}}
    flags = {
        ("data", "source"): args.data,
        ("train", "seed"): args.seed,
        ("train", "steps"): args.steps,
        ("train", "minutes"): args.minutes,
        ("train", "objective"): args.objective,
        ("train", "coarse_weight"): args.coarse_weight,
        ("train", "fine_iterations"): args.fine_iterations,
        ("train", "precision"): args.precision,
        ("model", "target"): args.target,
    }
    for (section, key), value in flags.items():
        if value is not None:
            o[section][key] = value
    for name in ("dino", "llm", "vae"):
        if getattr(args, name):
            o["model"].setdefault(name, {})["source"] = getattr(args, name)
            if name == "llm":
                o["model"]["llm"]["tokenizer"] = args.llm
    if args.wandb:
        o["train"]["wandb"] = True
    if getattr(args, "overwrite", False):
        o["overwrite"] = True
    for key, value in extra.items():
        o[key] = value
    return load_config(args.preset, args.config, [o, *args.overrides])


# ---------------------------------------------------------------------------------------------------------------------


def cmd_compare(args) -> None:
    from .compare import compare

    heads = _heads(args.heads) if args.heads else list(HEADS)
    cfg = config_from_args(args, out_dir=args.out)
    rows = compare(cfg, heads, args.out, args.quiet, args.seeds, args.controls, args.summarize_only)
    if rows:
        print(Path(args.out, "summary.md").read_text())
        print(f"wrote {args.out}/summary.md, summary.json, comparison.png, report.html and <head>/results.json")


def _heads(text: str) -> list[str]:
    heads = text.split(",")
    for h in heads:
        if h not in HEADS:
            raise ConfigError(f"--heads: unknown head {h!r}; registered: {', '.join(HEADS)}")
    return heads


def cmd_bench_science(args) -> None:
    from .science import bench_science

    objectives = args.objectives.split(",")
    for o in objectives:
        if o not in ("recon", "caption", "joint"):
            raise ConfigError(f"--objectives: unknown objective {o!r}; choose from recon, caption, joint")
    args.preset = args.preset or "where"
    cfg = config_from_args(args, out_dir=args.out)
    rows = bench_science(cfg, _heads(args.heads), objectives, args.out, args.seeds, args.quiet, args.summarize_only)
    if rows:
        print(Path(args.out, "summary.md").read_text())
        print(f"wrote {args.out}/summary.md, summary.json and <objective>/<head>[-coarse-only]/results.json")


def cmd_train(args) -> None:
    from .train import train

    extra = {"resume": True} if args.resume else {}
    if args.out:
        extra["out_dir"] = args.out
    cfg = config_from_args(args, **extra)
    results = train(cfg, quiet=args.quiet)
    if results:
        kind = results["ratio_kind"]
        print(
            f"{results['head']}: {results['steps']} steps, final {kind} ratio {results['final_ratio']:.4f}, "
            f"held-out {results['heldout_ratio']:.4f}; run folder {cfg.out_dir}"
        )


def cmd_heads(args) -> None:
    import torch

    from .build import target_shape
    from .heads import build_head

    h_dim, latent, where = args.h_dim or 576, args.latent or "4x32x32", ""
    if args.preset or args.target or args.overrides:  # the sizes the model of this config would build
        cfg = load_config(
            args.preset, None, [{"model": {"target": args.target}} if args.target else {}, *args.overrides]
        )
        m = cfg.model
        c, s, _ = target_shape(cfg, m.dino.hidden_size, m.dino.patch_size)
        h_dim, latent = args.h_dim or m.llm.hidden_size, args.latent or f"{c}x{s}x{s}"
        where = f" ({cfg.preset} preset, target {m.target}"
        if m.target == "dino":
            where += f": {m.dino.hidden_size}-wide patch features on the {s}x{s} patch grid"
            where += f", PCA to {m.dino_target.pca} channels" if m.dino_target.pca else ""
            where += ", CLS appended" if m.dino_target.cls else ""
        where += ")"
    c, s, s2 = (int(v) for v in latent.split("x"))
    if s != s2:
        raise ConfigError(f"--latent: expected CxSxS with a square grid, got {latent}")
    print(f"heads at h_dim={h_dim}, target {c}x{s}x{s}{where}:")
    for name in HEADS:
        with torch.device("meta"):  # counting needs no memory, even for the 500M-parameter MLP on full DINO features
            n = sum(p.numel() for p in build_head(name, h_dim, c, s).parameters())
        print(f"  {name:<20} {n:>12,} parameters")


def cmd_caption(args) -> None:
    import torch

    from .inference import caption_clips, load_clip, load_run

    cfg, model, tokenizer = load_run(args.checkpoint)
    items = [load_clip(v, cfg) for v in args.video]
    frames = torch.stack([it["frames"] for it in items])
    modes = ["coarse", "fine", "autoregressive"] if args.mode == "all" else [args.mode]
    for mode in modes:
        captions = caption_clips(
            model, tokenizer, frames, mode, args.max_new_tokens, args.temperature, args.top_p, args.seed
        )
        for video, text in zip(args.video, captions):
            print(f"[{mode}] {video}: {text}")


def cmd_eval(args) -> None:
    import json

    from .config import replace
    from .inference import evaluate_modes, load_run

    cfg, model, tokenizer = load_run(args.checkpoint)
    if args.data:
        cfg = replace(cfg, data={"source": args.data})
    s = evaluate_modes(cfg, model, tokenizer)
    print(f"held-out clips: {s['clips']} ({cfg.data.source})")
    print("| Loss | coarse | coarse->fine | autoregressive | ratio coarse/fine [95% CI] | AR vs fine |")
    print("|---|---|---|---|---|---|")
    for kind in ("caption", "recon"):
        if kind in s:
            k = s[kind]
            lo, hi = k["ratio_ci"]
            print(
                f"| {kind} | {k['loss_coarse']:.4f} | {k['loss_fine']:.4f} | {k['loss_autoregressive']:.4f} | "
                f"{k['ratio']:.4f} [{lo:.4f}, {hi:.4f}] | {100 * k['train_inference_gap']:+.2f}% |"
            )
    if args.json:
        print(json.dumps(s))


def cmd_info(args) -> None:
    from .info import describe

    print(describe(config_from_args(args)))


def cmd_data_synth(args) -> None:
    import time

    from .data.export import write_synthetic

    t0 = time.time()
    manifest = write_synthetic(args.out, args.videos, args.frames, args.size, args.codec, args.fps, args.seed)
    print(f"wrote {args.videos} synthetic clips ({args.codec}) and {manifest} in {time.time() - t0:.1f} s")
    print(f"use them with: foveal train --data {manifest}")


def cmd_precompute(args) -> None:
    from .precompute import precompute

    cfg = config_from_args(args)
    stats = precompute(cfg, quiet=args.quiet)
    tr, ho = stats["train"], stats["heldout"]
    encoded, cached = tr["encoded"] + ho["encoded"], tr["from_cache"] + ho["from_cache"]
    seconds = tr["seconds"] + ho["seconds"]
    rate = f" in {seconds:.1f} s ({encoded / seconds:.2f} clips/s)" if encoded else ""
    print(
        f"latent cache {stats['cache']}: {tr['clips']} train + {ho['clips']} held-out clips, latents "
        f"{'x'.join(map(str, tr['latent_shape']))} per clip; {encoded} encoded now{rate}, {cached} were cached"
    )


def _index_or_mean(text: str, flag: str) -> int | None:
    if text == "mean":
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{flag}: expected an integer or 'mean', got {text!r}") from None


def cmd_viz(args) -> None:
    from .viz import visualize

    layer, head = _index_or_mean(args.layer, "--layer"), _index_or_mean(args.head, "--head")
    for paths in visualize(args.checkpoint, args.video, args.out, layer, head, args.decode):
        print("wrote " + ", ".join(str(p) for p in paths.values()))


def cmd_report(args) -> None:
    from .report import write_report

    print(f"wrote {write_report(args.folder, args.clips)}")


def cmd_bench(args) -> None:
    import json

    import torch

    from .bench import bench, format_table

    if args.threads:
        torch.set_num_threads(args.threads)
    o: dict = {"model": {}, "data": {}, "train": {}}
    for (section, key), value in {
        ("model", "head"): args.head,
        ("data", "num_frames"): args.frames,
        ("train", "batch_size"): args.batch,
        ("train", "precision"): args.precision,
    }.items():
        if value is not None:
            o[section][key] = value
    if args.trainable_encoder:
        o["model"]["dino"] = {"freeze": False}
    if args.encoder_cache:
        o["train"]["encoder_cache"] = True
    cfg = load_config(args.preset, args.config, [o, *args.overrides])
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    result = bench(
        cfg, args.steps, args.warmup, args.compare_naive, torch.device(args.device) if args.device else None, log
    )
    print(json.dumps(result) if args.json else format_table(result))


def cmd_config(args) -> None:
    import yaml

    print(yaml.safe_dump(config_from_args(args).to_dict(), sort_keys=False), end="")


def _at_least_1(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="foveal", description="Foveated video-language models: where to look.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compare", help="train every prediction head under the same budget; print the table")
    _add_config_args(p)
    p.add_argument("--heads", default=None, help=f"comma-separated (default all: {','.join(HEADS)})")
    p.add_argument("--out", default="runs/compare", help="output folder")
    p.add_argument("--seeds", type=_at_least_1, default=1, help="train each head N times (seed, seed+1, ...)")
    p.add_argument("--controls", action="store_true", help="also train a coarse-only model per head (fair baseline)")
    p.add_argument("--summarize-only", action="store_true", help="train nothing: rebuild the tables from --out")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "bench-science",
        help="the seed's experiment on the where-to-look benchmark: per head, recon-only vs joint, with controls",
    )
    _add_config_args(p, default_preset="where")
    p.add_argument("--heads", default="film,spatial_film", help="comma-separated (default film,spatial_film)")
    p.add_argument("--objectives", default="recon,joint", help="comma-separated (default recon,joint)")
    p.add_argument("--seeds", type=_at_least_1, default=1, help="train each model N times (seed, seed+1, ...)")
    p.add_argument("--out", default="runs/bench-science", help="output folder")
    p.add_argument("--summarize-only", action="store_true", help="train nothing: rebuild the summary from --out")
    p.set_defaults(func=cmd_bench_science)

    p = sub.add_parser("train", help="train one model; writes a run folder")
    _add_config_args(p)
    p.add_argument("--out", default=None, help="run folder (default: the config's out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("heads", help="list the registered heads with their parameter counts")
    p.add_argument("--h-dim", type=int, default=None, help="LLM width (default 576, or the preset's)")
    p.add_argument("--latent", default=None, help="CxSxS of the predicted grid (default 4x32x32, or the preset's)")
    p.add_argument("--preset", default=None, help="sizes from this preset's config (its LLM width and target grid)")
    p.add_argument("--target", choices=["vae", "dino"], default=None, help="the preset's target (default its own)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. model.dino_target.pca=16")
    p.set_defaults(func=cmd_heads)

    p = sub.add_parser("caption", help="caption clips with a trained checkpoint")
    p.add_argument("--checkpoint", required=True, help="a checkpoint file or a run folder")
    p.add_argument("--video", nargs="+", required=True, help="video files, or synthetic:<i> for held-out clip i")
    p.add_argument("--mode", choices=["coarse", "fine", "autoregressive", "all"], default="fine")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("eval", help="held-out losses in every inference mode and the train/inference gap")
    p.add_argument("--checkpoint", required=True, help="a checkpoint file or a run folder")
    p.add_argument("--data", default=None, help="data source (default: the run's own held-out clips)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="what a config builds: sources, parameter counts, dims, latent and patch grid")
    _add_config_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("precompute", help="VAE-encode every clip once into the latent cache (training reads it)")
    _add_config_args(p)
    p.set_defaults(func=cmd_precompute)

    p = sub.add_parser("data", help="data tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("synth", help="write synthetic clips as video files (or frame folders) + manifest.csv")
    p.add_argument("--out", required=True, help="output folder (videos/ or frames/, manifest.csv)")
    p.add_argument("--videos", type=int, default=64, help="number of clips")
    p.add_argument("--frames", type=int, default=8, help="frames per clip")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels")
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0, help="data.seed: which synthetic clips")
    p.add_argument(
        "--codec",
        default="h264",
        choices=[*CODECS, *FRAME_FORMATS],
        help="h264: near-lossless .mp4 (default); h264-420: playable anywhere, lossy; ffv1: lossless .mkv; "
        "vp9: .webm; mpeg4: .avi; png / jpg: frame folders",
    )
    p.set_defaults(func=cmd_data_synth)

    p = sub.add_parser("viz", help="attention maps and next-frame predictions of clips, as PNG grids and GIFs")
    p.add_argument("--checkpoint", required=True, help="a checkpoint file or a run folder")
    p.add_argument("--video", nargs="+", required=True, help="video files, or synthetic:<i> for held-out clip i")
    p.add_argument("--out", default=None, help="output folder (default: <run folder>/viz)")
    p.add_argument("--layer", default="-1", help="encoder layer whose attention is drawn (default -1: the last; mean)")
    p.add_argument("--head", default="mean", help="attention head (default: the mean over heads)")
    p.add_argument(
        "--decode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="latents through the VAE decoder (default: when the VAE has pretrained weights; else latent channels)",
    )
    p.set_defaults(func=cmd_viz)

    p = sub.add_parser("report", help="(re)write report.html of a run or compare folder")
    p.add_argument("folder", help="a run folder (results.json) or a compare folder")
    p.add_argument(
        "--clips", type=int, default=None, help="held-out clips in the gallery (default: train.report_clips)"
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="time a training step: median, FLOPs, MFU, peak memory; --compare-naive")
    p.add_argument("--preset", default=None, help="named preset (default tiny; the reference sizes: full)")
    p.add_argument("--config", default=None, help="YAML run config")
    p.add_argument("--head", choices=sorted(HEADS), default=None)
    p.add_argument("--batch", type=int, default=None, help="clips per step (default the config's train.batch_size)")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default data.num_frames)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None)
    p.add_argument("--trainable-encoder", action="store_true", help="train DINOv2 too (default: the config's)")
    p.add_argument("--encoder-cache", action="store_true", help="frozen encoder: patch K/V cached per clip")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median, min, max over these)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first; the last one measures peak memory")
    p.add_argument("--compare-naive", action="store_true", help="also time the step with each optimisation undone")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's: one per core)")
    p.add_argument("--device", default=None, help="cpu | cuda (default cuda when available)")
    p.add_argument("--json", action="store_true", help="print one JSON object (progress goes to stderr)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.llm.num_layers=4")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("config", help="print the resolved config as YAML (a starting point for --config)")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    args = parser.parse_args(argv)
    from .allocator import keep_large_buffers
    from .checkpoint import CheckpointError
    from .run_folder import RunFolderError, os_error_line
    from .train import TrainingError

    keep_large_buffers()

    try:
        args.func(args)
    except ConfigError as e:
        print(f"foveal: config error: {e}", file=sys.stderr)
        return 2
    except (TrainingError, FileNotFoundError, CheckpointError, RunFolderError) as e:
        print(f"foveal: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if os_error_line(e) is None:
            raise
        print(f"foveal: error: {os_error_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
