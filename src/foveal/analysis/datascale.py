"""`foveal bench --data-scale`: start-up to the first training step and peak RSS with manifests of 1k, 100k and
1M rows (each a fresh `foveal train --steps 1` process, as a user runs it), and the data path's own throughput.

The rows point at a few real videos through symlinked folders: distinct ids and distinct paths, as a real
manifest's are, so the listing, de-duplication and held-out split see every row; training reads real frames.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from foveal.config import ConfigError, load_config
from foveal.data.export import write_synthetic
from foveal.data.lazy import lazy_datasets
from foveal.jsonio import load_numbers

ROWS = (1_000, 100_000, 1_000_000)
VIDEOS = 16  # real files behind the rows
READ_CLIPS = 32  # clips timed for the data path's throughput


def write_rows(root: Path, counts: tuple[int, ...]) -> dict[int, Path]:
    """root/rows-<n>.csv for each n: row i is id v<i> at links/<i // VIDEOS>/clip_<i mod VIDEOS>.mp4, each links/
    entry a symlink to the folder of the VIDEOS real videos (256 px, 8 frames): a distinct path per row, one
    symlink per VIDEOS rows."""
    videos = write_synthetic(root / "real", VIDEOS, frames=8, size=256).parent / "videos"
    (root / "links").mkdir()
    for j in range(-(-max(counts) // VIDEOS)):
        os.symlink(videos, root / "links" / f"{j:06d}")
    manifests = {}
    for n in counts:
        manifests[n] = root / f"rows-{n}.csv"
        with manifests[n].open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["videoid", "path", "caption"])
            out.writerows(
                (f"v{i:07d}", f"links/{i // VIDEOS:06d}/clip_{i % VIDEOS:05d}.mp4", "a clip") for i in range(n)
            )
    return manifests


def timed_start(manifest: Path, args: list[str], tmp: Path) -> dict:
    """One `foveal train --steps 1` over manifest: its own start-up figures and its peak RSS (wait4's rusage)."""
    out = tmp / f"run-{manifest.stem}"
    command = [sys.executable, "-m", "foveal", "train", "--quiet", "--steps", "1", "--out", str(out), *args]
    command += [f"data.source={manifest}", "data.validate=lazy", "data.heldout_clips=8", "data.train_clips=0"]
    command.append(f"cache_dir={tmp / 'cache'}")  # lazy at every size: the same listing rules (eager mode would
    #                                                 resolve the symlinks and keep VIDEOS clips)
    with open(tmp / "stderr.txt", "w") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        last = ((tmp / "stderr.txt").read_text().strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"bench --data-scale: `foveal train` over {manifest.name} failed: {last}")
    startup = load_numbers(out / "results.json")["startup"]
    return {"to_first_step_s": startup["seconds"][0], "rss_at_first_step_mib": startup["peak_rss_mib"][0],
            "process_s": round(wall, 1), "peak_rss_mib": usage.ru_maxrss // 1024}  # fmt: skip


def read_rates(manifest: Path, sizes: tuple[int, ...]) -> dict[int, float]:
    """Clips per second one process probes, decodes and resizes to each frame size, over READ_CLIPS clips."""
    overrides = [f"data.source={manifest}", "data.validate=lazy", "data.heldout_clips=1", "data.train_clips=0"]
    train, _ = lazy_datasets(load_config("tiny", overrides=overrides).data, sizes[0])
    train[0]  # imports and codecs warm
    rates = {}
    for size in sizes:
        train.frame_size = size
        t0 = time.perf_counter()
        for i in range(1, READ_CLIPS + 1):
            train[i]
        rates[size] = round(READ_CLIPS / (time.perf_counter() - t0), 1)
    return rates


def data_scale_bench(args: list[str], counts: tuple[int, ...] = ROWS, say=print) -> dict:
    """args: what follows `foveal train` (preset, overrides)."""
    with tempfile.TemporaryDirectory(prefix="foveal-data-scale-") as tmp:
        tmp = Path(tmp)
        say(f"bench --data-scale: writing manifests of {', '.join(map(str, counts))} rows ...")
        manifests = write_rows(tmp, counts)
        rows = []
        for n in counts:
            say(f"  foveal train --steps 1 over {n} rows ...")
            rows.append({"rows": n, **timed_start(manifests[n], args, tmp)})
        rates = read_rates(manifests[min(counts)], (64, 256))
    first = rows[0]
    for r in rows:
        r["time_vs_first"] = round(r["to_first_step_s"] / first["to_first_step_s"], 2)
        r["rss_vs_first"] = round(r["peak_rss_mib"] / first["peak_rss_mib"], 2)
    return {"rows": rows, "clips_per_s_per_worker": rates, "cpu": os.cpu_count()}


def format_data_scale(r: dict) -> str:
    lines = [
        "| manifest rows | to first step | RSS at first step | process | peak RSS | time / RSS vs the first |",
        "|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        lines.append(
            f"| {x['rows']:,} | {x['to_first_step_s']:.1f} s | {x['rss_at_first_step_mib']} MiB "
            f"| {x['process_s']:.1f} s | {x['peak_rss_mib']} MiB "
            f"| {x['time_vs_first']:.2f}x / {x['rss_vs_first']:.2f}x |"
        )
    rates = r["clips_per_s_per_worker"]
    lines.append(
        f"data path alone (lazy probe + decode + resize, 8 frames of a 256 px h264 video, one process): "
        f"{rates[64]:.1f} clips/s to 64 px, {rates[256]:.1f} clips/s to 256 px"
    )
    return "\n".join(lines)
