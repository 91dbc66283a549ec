"""Replay every case of issue 14 from the command line, in temp folders; one line per case, no raw traceback.

    python scripts/reliability_cases.py            # all cases (about two minutes on 2 cores)
    python scripts/reliability_cases.py lock data  # only the cases whose name contains one of these words

Each case runs `python -m foveal ...` (or, where a failure has to be injected, a few lines of Python around
`foveal.cli.main`) and prints: case | expected | observed | PASS or FAIL. Exit status 1 when any case fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHONPATH = f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
ENV = {**os.environ, "PYTHONPATH": PYTHONPATH, "OMP_NUM_THREADS": "1"}
TINY = [
    "data.train_clips=16",
    "data.heldout_clips=8",
    "data.num_frames=4",
    "train.batch_size=2",
    "train.grad_accum=2",
    "train.steps=4",
    "train.warmup_steps=1",
    "train.ckpt_every=2",
    "train.tensorboard=false",
    "train.report_clips=0",
]
TMP = Path(tempfile.mkdtemp(prefix="foveal-reliability-"))
CACHE = TMP / "cache"


def foveal(*args, timeout=300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "foveal", *map(str, args)]
    return subprocess.run(cmd, cwd=TMP, env=ENV, capture_output=True, text=True, timeout=timeout)


def python(code: str, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=TMP, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def train(run: Path, *extra) -> subprocess.CompletedProcess:
    return foveal("train", "--quiet", *TINY, f"out_dir={run}", f"cache_dir={CACHE}", *extra)


def line(p: subprocess.CompletedProcess, *words: str) -> str:
    """The stderr line that says it (the first with one of words, else the last), and the exit status."""
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    hit = next((ln for ln in lines if any(w in ln for w in words)), lines[-1] if lines else "(no message)")
    tb = " [RAW TRACEBACK]" if "Traceback" in p.stderr else ""
    return f"rc {p.returncode}: {hit.strip()[:150]}{tb}"


def clean(p: subprocess.CompletedProcess) -> bool:
    return "Traceback" not in p.stderr


_BASE: list[Path] = []


def fresh_run(name: str) -> Path:
    """A copy of one finished 4-step run (checkpoints at 2 and 4)."""
    if not _BASE:
        base = TMP / "base"
        p = train(base)
        if p.returncode:
            raise RuntimeError(f"the base run failed: {line(p)}")
        _BASE.append(base)
    run = TMP / name
    shutil.copytree(_BASE[0], run)
    return run


def plant_pickle(path: Path, marker: Path) -> None:
    code = (
        f"import torch\nclass M:\n  def __reduce__(self): return (open, ({str(marker)!r}, 'w'))\n"
        f"torch.save({{'model': M(), 'config': {{}}, 'step': 99}}, {str(path)!r})"
    )
    subprocess.run([sys.executable, "-c", code], env=ENV, check=True)


def manifest_of(folder: Path, n: int = 3) -> Path:
    p = foveal("data", "synth", "--out", folder, "--videos", n, "--frames", 4, "--size", 32, "--codec", "png")
    if p.returncode:
        raise RuntimeError(line(p))
    return folder / "manifest.csv"


DATA = ["--quiet", "data.num_frames=4", "model.frame_size=32", "data.heldout_clips=1", f"cache_dir={CACHE}"]

# ---------------------------------------------------------------------------------------------------------------------
# the cases: each returns (expected, observed, passed)


def case_pickle_eval():
    run, marker = fresh_run("pickle-eval"), TMP / "pwned-eval"
    planted = run / "checkpoints" / "step-0000099.pt"
    plant_pickle(planted, marker)
    p = foveal("eval", "--checkpoint", planted)
    ok = not marker.exists() and p.returncode == 1 and "refusing to load" in p.stderr and clean(p)
    return "refused in one line, no code runs", line(p, "refusing") + f"; ran code: {marker.exists()}", ok


def case_pickle_resume():
    run, marker = fresh_run("pickle-resume"), TMP / "pwned-resume"
    plant_pickle(run / "checkpoints" / "step-0000099.pt", marker)
    plant_pickle(run / "checkpoints" / "step-0000098.safetensors", marker)
    p = train(run, "resume=true", "train.steps=5")
    ok = not marker.exists() and p.returncode == 0 and "ignoring" in p.stderr and clean(p)
    return "planted files named and skipped, resumes", line(p, "ignoring") + f"; ran code: {marker.exists()}", ok


def case_flipped_bytes():
    run = fresh_run("flipped")
    newest = run / "checkpoints" / "step-0000004.safetensors"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    p = train(run, "resume=true", "train.steps=5")
    ok = p.returncode == 0 and "sha256" in p.stderr and "falling back to" in p.stderr and clean(p)
    return "checksum names the file, falls back to step 2", line(p, "sha256"), ok


def case_truncated_eval():
    run = fresh_run("truncated")
    newest = run / "checkpoints" / "step-0000004.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    p = foveal("eval", "--checkpoint", run)
    ok = p.returncode == 0 and "step-0000004" in p.stderr and "falling back to" in p.stderr and clean(p)
    return "names the bad file, evaluates step 2", line(p, "falling back"), ok


def case_disk_full():
    run = TMP / "enospc"
    argv = ["train", "--quiet", *TINY, f"out_dir={run}", f"cache_dir={CACHE}"]
    code = f"""
import errno, sys
import foveal.train.checkpoint as c
def full(f, tensors, metadata):
    f.write(b"x" * 4096)
    raise OSError(errno.ENOSPC, "No space left on device")
c._write_file = full
from foveal.cli import main
sys.exit(main({argv!r}))
"""
    p = python(code)
    temps = [x.name for x in run.rglob("*") if ".tmp" in x.name]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    ok = p.returncode == 1 and len(lines) == 1 and "ENOSPC" in lines[0] and not temps
    return "one ENOSPC line, no temp file left", line(p, "ENOSPC") + f"; temp files: {len(temps)}", ok


def case_torn_metrics_and_stale_temps():
    run = fresh_run("torn")
    (run / "checkpoints" / "step-0000004.safetensors").unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')
    stale = run / "checkpoints" / ".step-0000004.safetensors.tmp-99999"
    stale.write_bytes(b"\0" * 1_000_000)
    p = train(run, "resume=true")
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    ok = p.returncode == 0 and not stale.exists() and steps == [0, 1, 2, 3] and clean(p)
    return "resumes; temp removed; metrics steps 0-3", line(p, "stale") + f"; steps {steps}", ok


def case_nan_config():
    p = foveal("config", "train.lr=.nan")
    ok = p.returncode == 2 and "train.lr: must be a finite number" in p.stderr and clean(p)
    return "ConfigError naming train.lr", line(p, "config error"), ok


def case_nan_weights():
    run = TMP / "nan-weights"
    argv = ["train", "--quiet", *TINY, "train.ckpt_every=100", "train.max_nonfinite=2", f"out_dir={run}"]
    argv.append(f"cache_dir={CACHE}")
    code = f"""
import sys
import foveal.train.loop as tr
real = tr.make_optimizer
def nan_lr(model, t, device):
    opt, sched = real(model, t, device)
    for g in opt.param_groups:
        g["lr"] = float("nan")
    sched.base_lrs = [float("nan")] * len(sched.base_lrs)
    return opt, sched
tr.make_optimizer = nan_lr
from foveal.cli import main
sys.exit(main({argv!r}))
"""
    p = python(code)
    saved = list((run / "checkpoints").glob("step-*")) if (run / "checkpoints").exists() else []
    ok = p.returncode == 1 and "not finite" in p.stderr and not saved and clean(p)
    return "NaN weights not saved as 'good'", line(p, "not finite") + f"; checkpoints: {len(saved)}", ok


def case_second_writer():
    run = TMP / "locked"
    first = subprocess.Popen(
        [sys.executable, "-m", "foveal", "train", "--quiet", *TINY, "train.steps=400", "train.ckpt_every=1000"]
        + [f"out_dir={run}", f"cache_dir={CACHE}"],
        cwd=TMP,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text()) and time.time() < deadline:
            time.sleep(0.1)
        t0 = time.time()
        p = train(run, "resume=true", "train.steps=400")
        took = time.time() - t0
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    ok = p.returncode == 1 and "in use" in p.stderr and f"pid {first.pid}" in p.stderr and took < 60 and clean(p)
    return "second process fails at once naming the first", line(p, "in use") + f" ({took:.0f} s)", ok


def case_stale_lock():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = TMP / "stale-lock"
    run.mkdir()
    (run / ".lock").write_text(f"{dead.pid}\n")
    p = train(run, "train.steps=2")
    ok = p.returncode == 0 and f"left by pid {dead.pid}" in p.stderr and clean(p)
    return "taken over with a message", line(p, "took over"), ok


def _resume_refused(key_value: str):
    run = fresh_run(f"resume-{key_value.split('=')[0]}")
    before = (run / "config.yaml").read_bytes()
    p = foveal("train", "--quiet", "--out", run, "--resume", key_value)
    key = key_value.split("=")[0]
    ok = p.returncode == 2 and f"resume: {key}=" in p.stderr and (run / "config.yaml").read_bytes() == before
    return f"refused naming {key}; config.yaml untouched", line(p, "resume:"), ok and clean(p)


def case_resume_head():
    return _resume_refused("model.head=mlp")


def case_resume_lr():
    return _resume_refused("train.lr=0.5")


def case_resume_shape():
    return _resume_refused("data.num_frames=8")


def case_resume_safe_changes():
    run = fresh_run("resume-steps")
    p = foveal("train", "--quiet", "--out", run, "--resume", "--steps", 6, "train.ckpt_every=3")
    rows = (run / "resumes.jsonl").read_text().splitlines() if (run / "resumes.jsonl").exists() else []
    changes = json.loads(rows[-1])["changes"] if rows else {}
    ok = p.returncode == 0 and changes == {"train.ckpt_every": [2, 3], "train.steps": [4, 6]} and clean(p)
    return "own config + steps/ckpt_every, recorded", f"rc {p.returncode}; resumes.jsonl: {changes}", ok


def case_float_spellings():
    cfg = TMP / "float.yaml"
    cfg.write_text("train:\n  lr: 3e-4\n")
    a, b = foveal("config", "train.lr=3e-4"), foveal("config", "--config", cfg)
    ok = a.returncode == b.returncode == 0 and "lr: 0.0003" in a.stdout and "lr: 0.0003" in b.stdout
    return "3e-4 is a float (flag and file)", f"rc {a.returncode}/{b.returncode}", ok


def case_yaml_errors():
    bad, lst = TMP / "bad.yaml", TMP / "list.yaml"
    bad.write_text("train:\n  lr: [1, 2\n")
    lst.write_text("- train\n")
    ps = [foveal("config", "--config", bad), foveal("config", "--config", lst), foveal("config", "train.lr=[1,")]
    want = [f"{bad}:3:1", f"{lst}:1:1", "at column"]
    ok = all(p.returncode == 2 and w in p.stderr and len(p.stderr.strip().splitlines()) == 1 for p, w in zip(ps, want))
    return "one line each: file:line:col", " | ".join(line(p, "error")[:60] for p in ps), ok


def case_too_few_clips():
    m = manifest_of(TMP / "three")
    run = TMP / "few"
    p = foveal("train", "--data", m, "--out", run, *DATA, "train.batch_size=4")
    ok = p.returncode == 2 and "fewer than one global batch" in p.stderr and not run.exists() and clean(p)
    return "numbers and keys, before the model/folder", line(p, "global batch"), ok


def case_missing_data():
    run = TMP / "missing-data"
    p = foveal("train", "--quiet", "--data", TMP / "missing.csv", "--out", run)
    ok = p.returncode == 2 and "does not exist" in p.stderr and not run.exists() and clean(p)
    return "fails before the run folder exists", line(p, "does not exist") + f"; folder made: {run.exists()}", ok


def case_png16():
    folder = TMP / "png16" / "clip"
    folder.mkdir(parents=True)
    code = f"""
import numpy as np
from PIL import Image
from foveal.data.video import read_images
p = {str(folder / "frame_000.png")!r}
Image.fromarray(np.full((8, 8), 128 * 257, dtype=np.uint16)).save(p)
print(int(read_images([p])[0].mean()))
"""
    p = python(code)
    return "16-bit 128*257 reads as 128", f"read as {p.stdout.strip() or line(p)}", p.stdout.strip() == "128"


def _precompute(manifest: Path) -> subprocess.CompletedProcess:
    return foveal("precompute", "--data", manifest, *DATA)


def case_dir_named_like_video():
    m = manifest_of(TMP / "dirvideo")
    (m.parent / "x.mp4").mkdir()
    with open(m, "a") as f:
        f.write("x,x.mp4,,\n")
    p = _precompute(m)
    ok = p.returncode == 0 and "folder named like a video" in p.stderr
    return "skipped with its own reason", line(p, "x.mp4"), ok


def case_manifest_header():
    m = manifest_of(TMP / "noheader")
    rows = m.read_text().splitlines()[1:]
    (m.parent / "noheader.csv").write_text("\n".join(r.split(",", 1)[1] for r in rows) + "\n")
    p = _precompute(m.parent / "noheader.csv")
    ok = p.returncode == 2 and "no 'path' or 'videoid' column" in p.stderr and clean(p)
    return "clear error: header missing", line(p, "column"), ok


def case_unknown_columns():
    m = manifest_of(TMP / "unknown")
    lines = m.read_text().splitlines()
    (m.parent / "extra.csv").write_text("\n".join([lines[0] + ",captoin"] + [x + ",typo" for x in lines[1:]]) + "\n")
    p = _precompute(m.parent / "extra.csv")
    ok = p.returncode == 0 and p.stderr.count("unknown column") == 1 and "captoin" in p.stderr
    return "one warning naming the column", line(p, "unknown column"), ok


def case_non_utf8():
    m = manifest_of(TMP / "latin1")
    text = m.read_text().splitlines()
    (m.parent / "latin1.csv").write_bytes(("\n".join(text[:-1] + [text[-1] + " café"]) + "\n").encode("latin-1"))
    p = _precompute(m.parent / "latin1.csv")
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    ok = p.returncode == 2 and len(lines) == 1 and "not UTF-8" in lines[0]
    return "one line naming the file and the fix", line(p, "UTF-8"), ok


def case_two_spellings():
    m = manifest_of(TMP / "spellings", 4)
    (m.parent / "sub").mkdir()
    first = m.read_text().splitlines()[1].split(",")[1]
    rows = ["path", first, f"./{first}", f"sub/../{first}", str(m.parent / first)]
    rows += [r.split(",")[1] for r in m.read_text().splitlines()[2:]]
    (m.parent / "dups.csv").write_text("\n".join(rows) + "\n")
    p = _precompute(m.parent / "dups.csv")
    ok = p.returncode == 0 and "3 train + 1 held-out clips" in p.stdout  # 4 = 7 rows less 3 spellings of one file
    got = next((x for x in p.stdout.splitlines() if "held-out clips" in x), line(p))
    return "4 clips (3 duplicate spellings dropped)", got.strip()[:150], ok


def case_heldout_stable():
    m = manifest_of(TMP / "split", 20)
    code = f"""
from foveal.config import load_config
from foveal.data.video import file_datasets
def sides(seed):
    d = load_config("tiny", overrides=["data.source={m}", "data.num_frames=4", "data.heldout_clips=5",
                                       "data.train_clips=0", f"data.seed={{seed}}"]).data
    tr, ho = file_datasets(d, 32)
    return {{c.name: "train" for c in tr.clips}} | {{c.name: "held" for c in ho.clips}}, tr, ho
before, tr, ho = sides(0)
broken = ho.clips[:2] + tr.clips[:3]
for c in broken:
    (c.path / "frame_000.png").write_bytes(b"broken")
after, _, _ = sides(1)
moved = [n for n in after if after[n] != before[n]]
print(len(moved), len(after))
"""
    p = python(code)
    out = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else line(p)
    return "no clip changes side when 5 fail", f"moved, kept: {out}", out == "0 15"


def case_compare_resume():
    out = TMP / "cmp-resume"
    args = ["compare", "--heads", "film,mlp", "--out", out, *TINY, f"cache_dir={CACHE}"]
    first = foveal(*args, "--quiet")
    film = (out / "film" / "results.json").stat().st_mtime_ns if first.returncode == 0 else None
    (out / "mlp" / "results.json").unlink(missing_ok=True)  # mlp cut short after its step-2 checkpoint
    (out / "mlp" / "checkpoints" / "step-0000004.safetensors").unlink(missing_ok=True)
    p = foveal(*args, "--resume")
    kept = film is not None and (out / "film" / "results.json").stat().st_mtime_ns == film
    ok = p.returncode == 0 and kept and "resumed from" in p.stderr and (out / "summary.md").exists() and clean(p)
    return "finished head kept, the other resumed", f"rc {p.returncode}; film kept: {kept}", ok


def case_compare_torchrun():
    out = TMP / "cmp-ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "foveal"]
    cmd += ["compare", "--heads", "film,mlp", "--quiet", "--out", str(out), *TINY, "train.batch_size=1"]
    p = subprocess.run([*cmd, f"cache_dir={CACHE}"], cwd=TMP, env=ENV, capture_output=True, text=True, timeout=300)
    heads = [r["head"] for r in json.loads((out / "summary.json").read_text())] if p.returncode == 0 else []
    ok = heads == ["film", "mlp"] and clean(p)
    return "2 ranks train both heads, no hang", f"rc {p.returncode}; heads {heads}", ok


def case_clip_breaks_after_probing():
    code = (
        "import os\nfrom foveal.config import load_config\nfrom foveal.data.dataset import Collator, build_datasets\n"
        "from foveal.evaluation.evaluate import make_batch\nfrom foveal.model.build import build_model\n"
        f"cfg = load_config('tiny', overrides=['data.source={manifest_of(TMP / 'breaks', 4)}', 'data.heldout_clips=1',"
        f" 'data.num_frames=4', 'model.frame_size=32', 'cache_dir={CACHE}'])\n"
        "model, tok = build_model(cfg)\ntrain, held = build_datasets(cfg)\nmodel.target.prepare(model, [train, held])\n"
        "broken, standin = train.clips[0], train.clips[1]\n"
        "[f.write_bytes(b'not a png') for f in broken.frames]\n"
        "raw = Collator(tok)([train[0]])\ntargets = model.target(make_batch(raw, 'cpu', False), None)\n"
        "print(raw['keys'] == [standin.key], bool((targets[0] == model.target.store[standin.key]).all()))\n"
    )
    p = python(code)
    ok = p.returncode == 0 and p.stdout.split() == ["True", "True"] and clean(p)
    return "stand-in clip's own targets", f"rc {p.returncode}: served, own targets = {p.stdout.split()}", ok


CASES = [(name[5:], fn) for name, fn in list(globals().items()) if name.startswith("case_")]


def main(argv: list[str]) -> int:
    chosen = [(n, f) for n, f in CASES if not argv or any(w in n for w in argv)]
    failed = 0
    print(f"{'case':<32} | {'expected':<46} | observed | result")
    for name, fn in chosen:
        try:
            expected, observed, ok = fn()
        except Exception as e:  # the case itself could not run: say so in one line
            expected, observed, ok = "-", f"case error: {type(e).__name__}: {str(e).splitlines()[0][:120]}", False
        failed += not ok
        print(f"{name:<32} | {expected:<46} | {observed} | {'PASS' if ok else 'FAIL'}", flush=True)
    print(f"{len(chosen) - failed} of {len(chosen)} cases pass (work folder {TMP})")
    if not failed:
        shutil.rmtree(TMP, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
