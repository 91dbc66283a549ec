"""The `foveal` command line. Every subcommand resolves a RunConfig (preset -> YAML -> flags -> key=value overrides)
and calls one library function; `python -m foveal` and `torchrun -m foveal` work the same."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, RunConfig, load_config
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
        print(f"wrote {args.out}/summary.md, summary.json, comparison.png and <head>/results.json")


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
    from .heads import build_head

    c, s, s2 = (int(v) for v in args.latent.split("x"))
    if s != s2:
        raise ConfigError(f"--latent: expected CxSxS with a square grid, got {args.latent}")
    print(f"heads at h_dim={args.h_dim}, target {c}x{s}x{s}:")
    for name in HEADS:
        n = sum(p.numel() for p in build_head(name, args.h_dim, c, s).parameters())
        print(f"  {name:<20} {n:>12,} parameters")


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
    p.add_argument("--h-dim", type=int, default=576)
    p.add_argument("--latent", default="4x32x32", help="CxSxS of the predicted grid")
    p.set_defaults(func=cmd_heads)

    p = sub.add_parser("config", help="print the resolved config as YAML (a starting point for --config)")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ConfigError as e:
        print(f"foveal: config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
