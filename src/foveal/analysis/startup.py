"""`foveal bench --startup`: time to a first result, `foveal train --steps 2` with an empty target cache and then
with the cache that run filled (each in a fresh process, as a user runs it), and their ratio. Lazily encoded targets
keep start-up from growing with the dataset: the cold run must stay within 3x of the warm one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from foveal.config import ConfigError


def timed_train(args: list[str], cache: Path, out: Path) -> float:
    """Seconds for one `foveal train` process (import, data, model, target preparation, 2 steps, evaluation)."""
    command = [sys.executable, "-m", "foveal", "train", "--quiet", "--steps", "2", "--out", str(out), *args]
    command.append(f"cache_dir={cache}")
    env = {**os.environ, "FOVEAL_CACHE": str(cache)}
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"bench --startup: `foveal train {' '.join(args)}` failed: {last}")
    return seconds


def startup_bench(args: list[str], say=print) -> dict:
    """args: what follows `foveal train` (preset, overrides). Cold: an empty cache; warm: the same cache again."""
    with tempfile.TemporaryDirectory(prefix="foveal-startup-") as tmp:
        cache = Path(tmp) / "cache"
        say("bench --startup: foveal train --steps 2 with an empty target cache ...")
        cold = timed_train(args, cache, Path(tmp) / "cold")
        say(f"  {cold:.1f} s; again with the cache it filled ...")
        warm = timed_train(args, cache, Path(tmp) / "warm")
    return {"cold_s": round(cold, 1), "warm_s": round(warm, 1), "cold_over_warm": round(cold / warm, 2)}


def format_startup(r: dict) -> str:
    verdict = "within" if r["cold_over_warm"] <= 3 else "OVER"
    return (
        f"foveal train --steps 2: empty cache {r['cold_s']:.1f} s, warm cache {r['warm_s']:.1f} s, "
        f"cold / warm {r['cold_over_warm']:.2f}x ({verdict} the 3x bound)"
    )
