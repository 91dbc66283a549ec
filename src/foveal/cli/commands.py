"""The `foveal` subcommands: each resolves a RunConfig (preset -> YAML -> flags -> key=value overrides) and calls
one library function. Results go to stdout, progress to stderr (logging)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
import yaml

from foveal.analysis.bench import bench, format_table
from foveal.analysis.compare import compare
from foveal.analysis.datascale import data_scale_bench, format_data_scale
from foveal.analysis.inference import caption_clips, evaluate_modes, load_clip, load_run
from foveal.analysis.info import describe
from foveal.analysis.precompute import precompute
from foveal.analysis.report import screenshot, write_report
from foveal.analysis.science import bench_science
from foveal.analysis.startup import format_startup, startup_bench
from foveal.analysis.study import run_study
from foveal.analysis.viz import visualize
from foveal.api import load
from foveal.config import PROTOCOLS, ConfigError, RunConfig, leaves, load_config, parse_sweep, replace
from foveal.data.dataset import build_datasets
from foveal.data.export import write_synthetic
from foveal.data.shards import write_shards
from foveal.jsonio import strict_json
from foveal.model.build import target_shape
from foveal.model.heads import HEADS, build_head
from foveal.model.targets import TARGETS
from foveal.objectives import OBJECTIVES
from foveal.train import distributed
from foveal.train.loop import train

log = logging.getLogger(__name__)

# flag -> config key, for every command that takes it (one table: config_from_args and bench read it)
FLAGS = {
    "data": "data.source",
    "seed": "train.seed",
    "steps": "train.steps",
    "minutes": "train.minutes",
    "objective": "train.objective",
    "coarse_weight": "train.coarse_weight",
    "fine_iterations": "train.fine_iterations",
    "precision": "train.precision",
    "target": "model.target",
    "head": "model.head",
    "frames": "data.num_frames",
    "batch": "train.batch_size",
}


CONFIG_FLAGS = ("data", "seed", "steps", "minutes", "objective", "coarse_weight", "fine_iterations", "precision")
CONFIG_FLAGS += ("target",)
BENCH_FLAGS = ("head", "frames", "batch", "precision")  # bench's --steps counts timed steps, not train.steps


def flag_overrides(args: argparse.Namespace, flags=CONFIG_FLAGS) -> dict:
    """The flags given on the command line as a nested override dict."""
    o: dict = {}
    for flag in flags:
        key = FLAGS[flag]
        value = getattr(args, flag, None)
        if value is not None:
            section, name = key.split(".")
            o.setdefault(section, {})[name] = value
    return o


WANDB_FLAGS = {
    "project": "project (default foveal)",
    "entity": "entity: a team or user (default yours)",
    "name": "run name (default the run folder's; compare: <head>[/seed-<s>])",
    "group": "group (compare: default its output folder's name)",
    "tags": "tags, comma-separated",
}


def add_config_args(p: argparse.ArgumentParser, default_preset: str | None = "tiny", training: bool = True) -> None:
    """The config flags; training=False (info, precompute) leaves out those that only a training run reads."""
    p.add_argument("--preset", default=None, help=f"named preset (default {default_preset})")
    p.add_argument("--config", default=None, help="YAML run config (e.g. a run folder's config.yaml)")
    p.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default=None,
        help="training protocol layered over the preset: foveal (default) or seed (the reference study's own: fine "
        "loss only, lr 3e-5, no clipping, ...; `foveal config --protocol seed` shows every key it sets)",
    )
    p.add_argument("--data", default=None, help="'synthetic', a manifest (.csv/.jsonl) or a folder of frame folders")
    p.add_argument("--seed", type=int, default=None, help="train.seed: init and data order (default the preset's, 0)")
    p.add_argument("--objective", choices=sorted(OBJECTIVES), default=None, help="train.objective (default recon)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None, help="autocast (default fp32)")
    p.add_argument("--target", choices=sorted(TARGETS), default=None, help="what the head predicts (default vae)")
    p.add_argument("--dino", default=None, help="DINOv2 weights: hub id or folder (default: the preset's)")
    p.add_argument("--llm", default=None, help="LLM weights: hub id, folder, .gguf or smollm2-gguf")
    p.add_argument("--vae", default=None, help="VAE weights: hub id or folder")
    if training:
        add_training_args(p)
    p.add_argument("--quiet", action="store_true", help="warnings only, no progress bars (CI)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-4 data.num_frames=16")


def add_training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default the preset's train.steps)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget per run (default none)")
    p.add_argument(
        "--coarse-weight",
        type=float,
        default=None,
        help="loss = fine + this x coarse (default 1); 0 = the fine loss only (--protocol seed sets the rest of the "
        "reference study's recipe)",
    )
    p.add_argument("--fine-iterations", type=int, default=None, help="0 = the coarse-only control (default 1)")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (WANDB_MODE=offline works)")
    for key, what in WANDB_FLAGS.items():
        p.add_argument(f"--wandb-{key}", default=None, help=f"W&B {what} (implies --wandb)")
    p.add_argument("--overwrite", action="store_true", help="start afresh where a run already has checkpoints")


def config_from_args(args: argparse.Namespace, **extra) -> RunConfig:
    o = flag_overrides(args)
    for name in ("dino", "llm", "vae"):
        if getattr(args, name, None):
            o.setdefault("model", {}).setdefault(name, {})["source"] = getattr(args, name)
            if name == "llm":
                o["model"]["llm"]["tokenizer"] = args.llm
    chosen = {k: getattr(args, f"wandb_{k}", None) for k in WANDB_FLAGS}
    if getattr(args, "wandb", False) or any(v is not None for v in chosen.values()):
        o.setdefault("train", {})["wandb"] = True
    for key, value in chosen.items():
        if value is not None:
            o["train"][f"wandb_{key}"] = [t for t in value.split(",") if t] if key == "tags" else value
    if getattr(args, "overwrite", False):
        o["overwrite"] = True
    if getattr(args, "protocol", None):
        o["protocol"] = args.protocol
    return load_config(args.preset, args.config, [o | extra, *args.overrides])


def parse_heads(text: str) -> list[str]:
    heads = text.split(",")
    if not all(h.strip() for h in heads):
        raise ConfigError(
            f"--heads {text!r}: an empty name; give heads comma-separated (e.g. --heads film,mlp), or "
            f"drop the flag for all of them ({','.join(HEADS)})"
        )
    for h in heads:
        HEADS.get_class(h)
    return heads


def parse_sweeps(texts: list[str] | None) -> dict[str, list]:
    """Every --sweep KEY=V1,V2 -> {key: values}; a key given twice is an error."""
    sweep: dict[str, list] = {}
    for text in texts or []:
        key, values = parse_sweep(text)
        if key in sweep:
            raise ConfigError(f"--sweep {key} is given twice; list all its values in one flag: --sweep {key}=V1,V2")
        sweep[key] = values
    return sweep


# ---------------------------------------------------------------------------------------------------------------------
# the commands


def cmd_compare(args) -> None:
    heads = parse_heads(args.heads) if args.heads is not None else list(HEADS)
    sweep = parse_sweeps(args.sweep)
    cfg = config_from_args(args, out_dir=args.out, **({"resume": True} if args.resume else {}))
    rows = compare(cfg, heads, args.out, args.seeds, args.controls, args.summarize_only, sweep)
    if rows:
        runs = "<key>=<value>[,...]/<head>" if sweep else "<head>"
        print(Path(args.out, "summary.md").read_text())
        print(f"wrote {args.out}/summary.md, summary.json, comparison.png, report.html and {runs}/results.json")


def cmd_bench_science(args) -> None:
    objectives = args.objectives.split(",")
    for o in objectives:
        OBJECTIVES.get_class(o)
    args.preset = args.preset or "where"
    cfg = config_from_args(args, out_dir=args.out)
    rows = bench_science(cfg, parse_heads(args.heads), objectives, args.out, args.seeds, args.summarize_only)
    if rows:
        print(Path(args.out, "summary.md").read_text())
        print(f"wrote {args.out}/summary.md, summary.json and <objective>/<head>[-coarse-only]/results.json")


STUDY_STEPS = 90  # the study's default budget: 54 models within 30 minutes on 2 cores (README, "The study's table")


def cmd_study(args) -> None:
    if args.protocol is not None:
        raise ConfigError("study: --protocol: the study runs every protocol itself (its arms); drop the flag")
    args.preset = args.preset or "look"
    args.steps = args.steps or (None if args.config else STUDY_STEPS)
    extra = {"resume": True} if args.resume else {}
    configs = {}
    for protocol in ("seed", "foveal"):
        args.protocol = protocol
        configs[protocol] = config_from_args(args, **extra)
    study = run_study(configs, args.out, args.seeds, args.summarize_only)
    if study:
        print(study["text"])
        print(f"wrote {args.out}/study.md, study.json and <arm>/<row>/[seed-<s>/]results.json")


def cmd_train(args) -> None:
    extra = {"resume": True} if args.resume else {}
    if args.out:
        extra["out_dir"] = args.out
    cfg = config_from_args(args, **extra)
    results = train(cfg)
    if results:
        write_report(cfg.out_dir)
        kind = results["ratio_kind"]
        print(
            f"{results['head']}: {results['steps']} steps, final {kind} ratio {results['final_ratio']:.4f}, "
            f"held-out {results['heldout_ratio']:.4f}; run folder {cfg.out_dir}"
        )


def cmd_export(args) -> None:
    folder = load(args.run).save_pretrained(args.out)
    print(
        f"wrote {folder}: config.json, model.safetensors and the tokenizer; load it with foveal.load({str(folder)!r})"
    )


def cmd_heads(args) -> None:
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
    parts = latent.split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts) or parts[1] != parts[2]:
        raise ConfigError(f"--latent: expected CxSxS (channels x a square grid), e.g. 4x32x32; got {latent!r}")
    c, s, _ = (int(v) for v in parts)
    print(f"heads at h_dim={h_dim}, target {c}x{s}x{s}{where}:")
    for name in HEADS:
        with torch.device("meta"):  # counting needs no memory, even for the 500M-parameter MLP on full DINO features
            n = sum(p.numel() for p in build_head(name, h_dim, c, s).parameters())
        print(f"  {name:<20} {n:>12,} parameters")


def cmd_caption(args) -> None:
    cfg, model, tokenizer = load_run(args.checkpoint)
    items = [load_clip(v, cfg) for v in args.video]
    frames = torch.stack([it["frames"] for it in items])
    if cfg.train.objective == "recon":
        log.warning(
            f"note: {args.checkpoint} was trained for reconstruction only: its caption path was never trained, so "
            "these captions say nothing about the model (train with --objective caption or joint)"
        )
    modes = ["coarse", "fine", "autoregressive"] if args.mode == "all" else [args.mode]
    for mode in modes:
        captions = caption_clips(
            model, tokenizer, frames, mode, args.max_new_tokens, args.temperature, args.top_p, args.seed
        )
        for video, text in zip(args.video, captions):
            print(f"[{mode}] {video}: {text}")
    for video, item in zip(args.video, items):  # the clip's own caption, where it has one
        if item.get("caption"):
            print(f"[true] {video}: {item['caption']}")


def cmd_eval(args) -> None:
    cfg, model, tokenizer = load_run(args.checkpoint)
    if args.data:
        cfg = replace(cfg, data={"source": args.data})
    s = evaluate_modes(cfg, model, tokenizer)
    if args.json:  # stdout is the JSON alone, for jq and pipes
        print(strict_json(s, indent=None))
        return
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


def cmd_info(args) -> None:
    print(describe(config_from_args(args)))


def cmd_data_synth(args) -> None:
    t0 = time.time()
    manifest = write_synthetic(args.out, args.videos, args.frames, args.size, args.codec, args.fps, args.seed)
    print(f"wrote {args.videos} synthetic clips ({args.codec}) and {manifest} in {time.time() - t0:.1f} s")
    print(f"use them with: foveal train --data {manifest}")


def cmd_data_shard(args) -> None:
    cfg = config_from_args(args)
    t0 = time.time()
    train, heldout = build_datasets(cfg)
    out = Path(args.out)
    index = write_shards({"train": train, "heldout": heldout}, out, cfg.data, cfg.model.frame_size, args.shard_size,
                         args.jobs)  # fmt: skip
    clips = {split: sum(n for _, n in shards) for split, shards in index["splits"].items()}
    seconds = time.time() - t0
    print(f"wrote {out / 'shards.json'}: {clips['train']} train + {clips['heldout']} held-out clips in {seconds:.1f} s")
    print(f"train on them with: foveal train --data {out}")


def cmd_precompute(args) -> None:
    stats = precompute(config_from_args(args))
    if not distributed.is_main():
        return
    tr, ho = stats["train"], stats["heldout"]
    encoded, cached = tr["encoded"] + ho["encoded"], tr["from_cache"] + ho["from_cache"]
    seconds = tr["seconds"] + ho["seconds"]
    rate = f" in {seconds:.1f} s ({encoded / seconds:.2f} clips/s)" if encoded else ""
    rate += f" by {stats['ranks']} ranks" if stats["ranks"] > 1 else ""
    print(
        f"latent cache {stats['cache']}: {tr['clips']} train + {ho['clips']} held-out clips, latents "
        f"{'x'.join(map(str, tr['latent_shape']))} per clip; {encoded} encoded now{rate}, "
        f"{cached} were cached"
    )


def index_or_mean(text: str, flag: str) -> int | None:
    if text == "mean":
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{flag}: expected an integer or 'mean', got {text!r}") from None


def cmd_viz(args) -> None:
    layer, head = index_or_mean(args.layer, "--layer"), index_or_mean(args.head, "--head")
    for paths in visualize(args.checkpoint, args.video, args.out, layer, head, args.decode):
        print("wrote " + ", ".join(str(p) for p in paths.values()))


def cmd_report(args) -> None:
    page = write_report(args.folder, args.clips)
    print(f"wrote {page}")
    if args.screenshot:
        print(f"wrote {screenshot(page, Path(args.screenshot))}")


def cmd_bench(args) -> None:
    train_args = [*(["--preset", args.preset] if args.preset else []), *args.overrides]
    say = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    if args.startup:  # a first result's start-up, cold vs warm target cache (each in its own process)
        result = startup_bench(train_args, say)
        print(json.dumps(result) if args.json else format_startup(result))
        return
    if args.data_scale:  # start-up and memory against the manifest's length (fresh processes)
        result = data_scale_bench(train_args, row_counts(args.rows), say)
        print(json.dumps(result) if args.json else format_data_scale(result))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    o = flag_overrides(args, BENCH_FLAGS)
    if args.trainable_encoder:
        o.setdefault("model", {})["dino"] = {"freeze": False}
    if args.encoder_cache:
        o.setdefault("train", {})["encoder_cache"] = True
    if args.compile:
        o.setdefault("train", {})["compile"] = True
    cfg = load_config(args.preset, args.config, [o, *args.overrides])
    device = torch.device(args.device) if args.device else None
    result = bench(cfg, args.steps, args.warmup, args.compare_naive, device, say)
    print(json.dumps(result) if args.json else format_table(result))


def row_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 20:
        raise ConfigError(f"--rows: {text!r}; give manifest sizes >= 20, comma-separated, e.g. 1000,100000")
    return tuple(sorted(counts))


def cmd_config(args) -> None:
    cfg = config_from_args(args)
    sets = leaves(PROTOCOLS[cfg.protocol])
    if sets:  # what the protocol layer set (a later file or flag may have changed some: the YAML below is final)
        print(f"# protocol {cfg.protocol} sets: " + ", ".join(f"{k}={v}" for k, v in sets.items()))
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
