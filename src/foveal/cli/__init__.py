"""The `foveal` command line: one sub-parser per command (commands.py holds what each does). `python -m foveal`
and `torchrun -m foveal` work the same."""

from __future__ import annotations

import argparse
import os
import sys

from foveal import __version__, log
from foveal.analysis.compare import CONTROL_CHOICES
from foveal.cli.commands import (
    add_config_args,
    cmd_bench,
    cmd_bench_science,
    cmd_caption,
    cmd_compare,
    cmd_config,
    cmd_data_shard,
    cmd_data_synth,
    cmd_eval,
    cmd_export,
    cmd_heads,
    cmd_info,
    cmd_precompute,
    cmd_report,
    cmd_study,
    cmd_train,
    cmd_viz,
)
from foveal.config import ConfigError
from foveal.data.export import CODECS, FRAME_FORMATS
from foveal.model.heads import HEADS
from foveal.model.pretrained import PretrainedError
from foveal.model.targets import TARGETS
from foveal.train.allocator import keep_large_buffers
from foveal.train.checkpoint import CheckpointError
from foveal.train.optim import TrainingError
from foveal.train.run_folder import RunFolderError, os_error_line


def at_least_1(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="train every prediction head under the same budget; print the table")
    add_config_args(p)
    p.add_argument("--heads", default=None, help=f"comma-separated (default all: {','.join(HEADS)})")
    p.add_argument("--out", default="runs/compare", help="output folder")
    p.add_argument("--seeds", type=at_least_1, default=1, help="train each head N times (seed, seed+1, ...)")
    p.add_argument(
        "--controls",
        nargs="?",
        const="all",
        default="reference",
        choices=CONTROL_CHOICES,
        help="control models: reference (default: an oracle-look, a prev-only and a dense reader model for the first "
        "head; the dense reader reads train.dense_control_tokens pooled tokens per frame), all (--controls alone: a "
        "coarse-only, an oracle, a prev-only and a dense reader model for every head), none",
    )
    p.add_argument(
        "--sweep",
        action="append",
        metavar="KEY=V1,V2",
        help="compare at every value of a config key (repeat for several keys: their grid), e.g. --sweep "
        "train.lr=1e-4,3e-4; each grid point in <out>/<key>=<value>[,...]/, its values a column of the tables",
    )
    p.add_argument("--summarize-only", action="store_true", help="train nothing: rebuild the tables from --out")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted comparison: finished runs kept, the others resumed",
    )
    p.set_defaults(func=cmd_compare)


def add_bench_science(sub) -> None:
    p = sub.add_parser(
        "bench-science",
        help="the reference study's experiment on the where-to-look data: per head, recon-only vs joint, with controls",
    )
    add_config_args(p, default_preset="where")
    p.add_argument("--heads", default="film,spatial_film", help="comma-separated (default film,spatial_film)")
    p.add_argument("--objectives", default="recon,joint", help="comma-separated (default recon,joint)")
    p.add_argument("--seeds", type=at_least_1, default=1, help="train each model N times (seed, seed+1, ...)")
    p.add_argument("--out", default="runs/bench-science", help="output folder")
    p.add_argument("--summarize-only", action="store_true", help="train nothing: rebuild the summary from --out")
    p.set_defaults(func=cmd_bench_science)


def add_study(sub) -> None:
    p = sub.add_parser(
        "study",
        help="the reference study's five rows (+ an oracle-look positive control) under its protocol and with both "
        "paths trained; one table",
    )
    add_config_args(p, default_preset="look")
    p.add_argument("--seeds", type=at_least_1, default=3, help="models per cell (seed, seed+1, ...; default 3)")
    p.add_argument("--out", default="runs/study", help="output folder")
    p.add_argument("--summarize-only", action="store_true", help="train nothing: rebuild the table from --out")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study: finished runs kept")
    p.set_defaults(func=cmd_study)


def add_export(sub) -> None:
    p = sub.add_parser("export", help="a trained run as a Hugging Face style folder (config.json, model.safetensors)")
    p.add_argument("run", help="a run folder (its newest valid checkpoint) or a checkpoint file")
    p.add_argument("out", help="the folder to write; foveal.load(out) reads it back")
    p.set_defaults(func=cmd_export)


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train one model; writes a run folder")
    add_config_args(p)
    p.add_argument("--out", default=None, help="run folder (default: the config's out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    p.set_defaults(func=cmd_train)


def add_heads(sub) -> None:
    p = sub.add_parser("heads", help="list the registered heads with their parameter counts")
    p.add_argument("--h-dim", type=int, default=None, help="LLM width (default 576, or the preset's)")
    p.add_argument("--latent", default=None, help="CxSxS of the predicted grid (default 4x32x32, or the preset's)")
    p.add_argument("--preset", default=None, help="sizes from this preset's config (its LLM width and target grid)")
    p.add_argument("--target", choices=sorted(TARGETS), default=None, help="the preset's target (default its own)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. model.dino_target.pca=16")
    p.set_defaults(func=cmd_heads)


def add_caption(sub) -> None:
    p = sub.add_parser("caption", help="caption clips with a trained checkpoint")
    p.add_argument("--checkpoint", required=True, help="a checkpoint file or a run folder")
    p.add_argument("--video", nargs="+", required=True, help="video files, or synthetic:<i> for held-out clip i")
    p.add_argument("--mode", choices=["coarse", "fine", "autoregressive", "all"], default="fine")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_caption)


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="held-out losses in every inference mode and the train/inference gap")
    p.add_argument("--checkpoint", required=True, help="a checkpoint file or a run folder")
    p.add_argument("--data", default=None, help="data source (default: the run's own held-out clips)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)


def add_info(sub) -> None:
    p = sub.add_parser("info", help="what a config builds: sources, parameter counts, dims, latent and patch grid")
    add_config_args(p, training=False)
    p.set_defaults(func=cmd_info)


def add_precompute(sub) -> None:
    p = sub.add_parser("precompute", help="VAE-encode every clip once into the latent cache (training reads it)")
    add_config_args(p, training=False)
    p.set_defaults(func=cmd_precompute)


def add_data(sub) -> None:
    p = sub.add_parser("data", help="data tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("synth", help="write synthetic clips as video files (or frame folders) + manifest.csv")
    p.add_argument("--out", required=True, help="output folder (videos/ or frames/, manifest.csv)")
    p.add_argument("--videos", type=at_least_1, default=64, help="number of clips")
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
    p = data_sub.add_parser(
        "shard", help="cut the clips of --data (train and held-out) into tar shards of decoded frames; resumable"
    )
    p.add_argument("--out", required=True, help="output folder (shards.json + <split>-NNNNNN.tar); train with --data")
    p.add_argument("--shard-size", type=at_least_1, default=256, help="clips per shard")
    p.add_argument("--jobs", type=at_least_1, default=os.cpu_count() or 1, help="shards written at once (processes)")
    add_config_args(p, training=False)
    p.set_defaults(func=cmd_data_shard)


def add_viz(sub) -> None:
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


def add_report(sub) -> None:
    p = sub.add_parser("report", help="(re)write report.html of a run or compare folder")
    p.add_argument("folder", help="a run folder (results.json) or a compare folder")
    p.add_argument(
        "--clips", type=int, default=None, help="held-out clips in the gallery (default: train.report_clips)"
    )
    p.add_argument("--screenshot", default=None, metavar="PNG", help="also draw the page to PNG (headless Chromium)")
    p.set_defaults(func=cmd_report)


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time a training step: median, FLOPs, MFU, peak memory; --compare-naive")
    p.add_argument("--preset", default=None, help="named preset (default tiny; the reference sizes: full)")
    p.add_argument("--config", default=None, help="YAML run config")
    p.add_argument("--head", choices=sorted(HEADS), default=None)
    p.add_argument("--batch", type=int, default=None, help="clips per step (default the config's train.batch_size)")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default data.num_frames)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None)
    p.add_argument("--trainable-encoder", action="store_true", help="train DINOv2 too (default: the config's)")
    p.add_argument("--encoder-cache", action="store_true", help="frozen encoder: K/V cached per clip (else off)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model's parts (train.compile=true)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median, min, max over these)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first; the last one measures peak memory")
    p.add_argument("--compare-naive", action="store_true", help="also time the step with each optimisation undone")
    p.add_argument(
        "--startup",
        action="store_true",
        help="instead: time `foveal train --steps 2` with an empty, then a warm target cache (fresh processes)",
    )
    p.add_argument(
        "--data-scale",
        action="store_true",
        help="instead: start-up to the first step and peak RSS of `foveal train` over manifests of --rows rows",
    )
    p.add_argument("--rows", default="1000,100000,1000000", help="--data-scale: manifest sizes, comma-separated")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's: one per core)")
    p.add_argument("--device", default=None, help="cpu | cuda (default cuda when available)")
    p.add_argument("--json", action="store_true", help="print one JSON object (progress goes to stderr)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.llm.num_layers=4")
    p.set_defaults(func=cmd_bench)


def add_config(sub) -> None:
    p = sub.add_parser("config", help="print the resolved config as YAML (a starting point for --config)")
    add_config_args(p)
    p.set_defaults(func=cmd_config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foveal", description="Foveated video-language models: where to look.")
    parser.add_argument("--version", action="version", version=f"foveal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        add_compare,
        add_bench_science,
        add_study,
        add_train,
        add_export,
        add_heads,
        add_caption,
        add_eval,
        add_info,
        add_precompute,
        add_data,
        add_viz,
        add_report,
        add_bench,
        add_config,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log.setup(quiet=getattr(args, "quiet", False))
    keep_large_buffers()
    try:
        args.func(args)
    except ConfigError as e:
        print(f"foveal: config error: {e}", file=sys.stderr)
        return 2
    except (TrainingError, FileNotFoundError, CheckpointError, RunFolderError, PretrainedError) as e:
        print(f"foveal: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if os_error_line(e) is None:
            raise
        print(f"foveal: error: {os_error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "foveal: interrupted; what was written is kept (finished runs, checkpoints): --resume goes on",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
