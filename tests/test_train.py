"""Training infrastructure: exact resume after SIGKILL, atomic checkpoints, DDP equivalence, guards, config errors."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import foveal.model.heads as heads
from conftest import tiny_overrides
from foveal.cli import main
from foveal.config import ConfigError, load_config
from foveal.data.dataset import build_datasets, micro_batch
from foveal.data.latent_cache import LatentCache
from foveal.model.backbones import fingerprint
from foveal.model.build import build_model
from foveal.model.foveated import FoveatedVLM
from foveal.model.targets.vae import encode_latents
from foveal.train.checkpoint import atomic_save, load_checkpoint, load_model_state, strip_prefixes
from foveal.train.loop import TrainingError, train
from foveal.train.optim import param_groups

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_cli(args, cwd, env_extra=None, wait=True):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "foveal", *args]
    if wait:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "step_s"} for r in rows]  # wall time is the only thing that differs


def test_sigkill_then_resume_is_bit_identical(tmp_path, cache_dir):
    common = [
        "train",
        "--quiet",
        *tiny_overrides(**{"train.steps": 8, "train.ckpt_every": 1}),
        f"cache_dir={cache_dir}",
    ]
    ref = run_cli([*common, f"out_dir={tmp_path / 'ref'}"], tmp_path)
    assert ref.returncode == 0, ref.stderr

    run = tmp_path / "killed"
    kill_after = random.Random().randint(1, 6)  # a random step, as the issue asks
    proc = run_cli([*common, f"out_dir={run}"], tmp_path, wait=False)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines())
        if done and done >= kill_after:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "results.json").exists(), "the run finished before it could be killed"
    resumed = run_cli([*common, f"out_dir={run}", "resume=true"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr

    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "step-0000008.safetensors")
    b = load_checkpoint(run / "checkpoints" / "step-0000008.safetensors")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert metrics(tmp_path / "ref") == metrics(run)
    assert [r["step"] for r in metrics(run)] == list(range(8))


def test_crash_during_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    import foveal.train.checkpoint as ck

    path = tmp_path / "ckpt.safetensors"
    atomic_save({"w": torch.ones(3)}, path)

    def broken_write(f, tensors, metadata):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ck, "_write_file", broken_write)
    with pytest.raises(ck.CheckpointError):
        atomic_save({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]  # the temp file is gone


def test_load_strips_ddp_and_compile_prefixes(tiny_cfg):
    model, _ = build_model(tiny_cfg())
    state = {f"module._orig_mod.{k}": v.clone() + 1 for k, v in model.state_dict().items()}
    assert set(strip_prefixes(state)) == set(model.state_dict())
    load_model_state(model, {"model": state}, check_frozen=False)
    k = "q_static"
    torch.testing.assert_close(model.state_dict()[k], state[f"module._orig_mod.{k}"])


def test_train_compile_compiles_the_parts_before_training(tiny_cfg, monkeypatch):
    """train.compile=true compiles the model's parts (test_model.py: same loss, gradients and names); off, nothing
    is compiled. Recorded, not compiled, here: compiling takes longer than this run."""
    calls = []
    monkeypatch.setattr(FoveatedVLM, "compile_parts", lambda self: calls.append(self.training))
    train(tiny_cfg(**{"train.steps": 1, "train.compile": "false"}))
    assert calls == []
    train(tiny_cfg(**{"train.steps": 1, "train.compile": "true", "overwrite": "true"}))
    assert calls == [True]


def test_param_groups_put_every_new_module_in_the_connector(tiny_cfg):
    cfg = tiny_cfg()
    model, _ = build_model(cfg)
    groups = param_groups(model, cfg.train)
    by_id = {id(p): g["name"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    new = [n for n in named if not n.startswith(("encoder.dino.", "llm."))]
    assert any(n.startswith("encoder.query_output_proj") for n in new)  # the layer the reference misfiled
    for n in new:
        assert by_id[id(named[n])].startswith("connector"), n
    for n, p in named.items():
        if n.startswith("llm."):
            assert by_id[id(p)].startswith("backbone")
        if n.startswith("encoder.dino."):  # frozen: in no group
            assert id(p) not in by_id
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["connector"] == cfg.train.lr and lrs["backbone"] == cfg.train.backbone_lr


def nan_on_call(monkeypatch, bad) -> None:
    """The film head returns NaN on the calls for which bad(call number) is true (2 calls per step here)."""
    calls = {"n": 0}
    original = heads.FiLMHead.predict

    def flaky(self, h, prev):
        calls["n"] += 1
        out = original(self, h, prev)
        return out * float("nan") if bad(calls["n"]) else out

    monkeypatch.setattr(heads.FiLMHead, "predict", flaky)


def test_nan_is_skipped_and_counted(tiny_cfg, monkeypatch):
    nan_on_call(monkeypatch, lambda n: n == 3)  # one micro-batch of step 1
    cfg = tiny_cfg(**{"train.steps": 4})
    results = train(cfg)
    assert results["nonfinite_steps"] == 1
    assert results["steps"] == 3  # the skipped step has no ratio
    rows = [json.loads(x) for x in (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped_nonfinite", 0) for r in rows] == [0, 1, 0, 0]


def test_consecutive_nans_stop_with_a_checkpoint_of_the_last_good_weights(tiny_cfg, monkeypatch):
    nan_on_call(monkeypatch, lambda n: n > 2)  # every step after the first
    cfg = tiny_cfg(**{"train.steps": 10, "train.max_nonfinite": 3, "train.ckpt_every": 100})
    with pytest.raises(TrainingError, match="3 consecutive"):
        train(cfg)
    ckpts = sorted((Path(cfg.out_dir) / "checkpoints").glob("step-*.safetensors"))
    assert ckpts, "no checkpoint written"
    state = load_checkpoint(ckpts[-1])
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert state["step"] == 3  # steps 1, 2, 3 were skipped; the weights are those after step 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.bogus=1", "unknown key train.bogus"),
        ("train.lr=fast", "train.lr: expected a number"),
        ("data.num_frames=1", "data.num_frames: must be >= 2"),
        ("model.head=unet", "model.head: 'unet' is not allowed"),
        ("train.batch_size=0", "train.batch_size: must be >= 1"),
        ("model.frame_size=60", "not divisible by the VAE downsampling"),
        ("model.frame_size=4", "smaller than one patch"),
        ("train.precision=fp8", "train.precision"),
        ("train.objective=contrastive", "train.objective"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides=[override])


def test_cli_reports_config_errors_cleanly(capsys):
    assert main(["train", "train.steps=0"]) == 2
    assert "train.steps: must be >= 1" in capsys.readouterr().err


def test_ranks_read_disjoint_slices_of_the_same_global_batch():
    for k in range(12):
        single = micro_batch(k, 20, 4, seed=1)
        r0, r1 = micro_batch(k, 20, 2, seed=1, rank=0, world=2), micro_batch(k, 20, 2, seed=1, rank=1, world=2)
        assert not set(r0) & set(r1)
        assert sorted(r0 + r1) == sorted(single)


def test_run_writes_only_inside_its_run_and_cache_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        "tiny", overrides=[*tiny_overrides(**{"train.tensorboard": True}), "out_dir=run", "cache_dir=cache"]
    )
    train(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run"]
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_rank_ddp_equals_one_rank_with_the_doubled_batch(tmp_path, cache_dir):
    """Launched on one node (--standalone) and as two simulated nodes meeting by c10d rendezvous, as a multi-node
    job is launched (the README's command)."""
    common = ["train", "--quiet", *tiny_overrides(**{"train.steps": 4}), f"cache_dir={cache_dir}"]
    one = run_cli([*common, "train.batch_size=2", f"out_dir={tmp_path / 'one'}"], tmp_path)
    assert one.returncode == 0, one.stderr
    run = [sys.executable, "-m", "torch.distributed.run"]
    rdzv = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}"]
    launches = {"standalone": [[*run, "--standalone", "--nproc_per_node=2"]], "nodes": [[*run, *rdzv]] * 2}
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    for name, nodes in launches.items():
        cmd = ["-m", "foveal", *common, "train.batch_size=1", f"out_dir={tmp_path / name}"]
        procs = [
            subprocess.Popen([*node, *cmd], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True) for node in nodes
        ]
        errors = [p.communicate(timeout=300)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), errors[0][-3000:]
        a, b = metrics(tmp_path / "one"), metrics(tmp_path / name)
        assert len(a) == len(b) == 4
        for ra, rb in zip(a, b):
            for key in ("loss", "recon_coarse", "recon_fine"):
                assert ra[key] == pytest.approx(rb[key], rel=1e-4), (name, key, ra["step"])


def test_a_fresh_run_never_mixes_with_an_earlier_one(tiny_cfg):
    cfg = tiny_cfg(**{"train.steps": 2})
    train(cfg)
    with pytest.raises(TrainingError, match="--resume to continue it, --overwrite"):
        train(cfg)
    again = train(
        load_config(
            "tiny",
            overrides=[
                *tiny_overrides(**{"train.steps": 3}),
                f"out_dir={cfg.out_dir}",
                f"cache_dir={cfg.cache_dir}",
                "resume=latest",
            ],
        ),
    )
    assert again["steps"] == 3  # two from the first run, one more
    fresh = load_config(
        "tiny",
        overrides=[
            *tiny_overrides(**{"train.steps": 2}),
            f"out_dir={cfg.out_dir}",
            f"cache_dir={cfg.cache_dir}",
            "overwrite=true",
        ],
    )
    assert train(fresh)["steps"] == 2


def test_weight_decay_reaches_every_weight_matrix(tiny_cfg):
    """Transposed convolutions and nn.MultiheadAttention's packed input projection are weight matrices too (the
    spatial transformer head has both); biases, norms and learned tokens are not decayed."""
    cfg = tiny_cfg(**{"model.head": "spatial_transformer"})
    model, _ = build_model(cfg)
    decay = {id(p) for g in param_groups(model, cfg.train) if g["weight_decay"] > 0 for p in g["params"]}
    named = dict(model.named_parameters())
    assert id(model.head.unembed.weight) in decay  # ConvTranspose2d
    assert id(model.head.blocks[0].self_attn.in_proj_weight) in decay
    assert id(model.head.blocks[0].multihead_attn.in_proj_weight) in decay
    for name in ("head.unembed.bias", "head.norm.weight", "q_static", "z_init", "head.pos_embed"):
        assert id(named[name]) not in decay, name


def test_a_skipped_step_still_advances_the_schedule_and_best_follows_the_step_loss(tiny_cfg, monkeypatch):
    nan_on_call(monkeypatch, lambda n: n == 3)  # step 1 is skipped
    cfg = tiny_cfg(**{"train.steps": 4, "train.warmup_steps": 4, "train.ckpt_every": 1})
    train(cfg)
    rows = [json.loads(x) for x in (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in rows if "lr" in r}
    # linear warm-up over 4 steps: the lr after step s is lr * (s + 2) / 4, whether or not step 1 updated
    assert lrs == pytest.approx({s: cfg.train.lr * min(1.0, (s + 2) / 4) for s in (0, 2, 3)})
    best = json.loads((Path(cfg.out_dir) / "checkpoints" / "best.json").read_text())
    losses = {r["step"] + 1: r["loss"] for r in rows if "loss" in r}  # checkpoint of step s holds s steps
    assert best["metric"] == pytest.approx(losses[best["step"]])  # the same kind of number at every save
    assert best["metric"] == pytest.approx(min(losses.values()))


@pytest.mark.slow
def test_compare_under_torchrun_trains_every_head_and_rank_0_writes_the_tables(tmp_path, cache_dir):
    """Every rank takes part in every run (a rank that left after the first head hung the others)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "foveal"]
    args = ["compare", "--heads", "film,mlp", "--quiet", "--out", str(tmp_path / "cmp")]
    over = [*tiny_overrides(**{"train.steps": 2, "train.batch_size": 1}), f"cache_dir={cache_dir}"]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([*torchrun, *args, *over], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    rows = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert [r["head"] for r in rows] == ["film", "mlp"] and all(r["steps"] == 2 for r in rows)


def test_compare_resumes_where_it_stopped(tmp_path, cache_dir, logs):
    """An interrupted comparison: the finished head is kept as it is, the other continues from its checkpoint."""
    args = ["compare", "--heads", "film,mlp", "--out", str(tmp_path / "cmp")]
    over = [*tiny_overrides(**{"train.steps": 4, "train.ckpt_every": 2}), f"cache_dir={cache_dir}"]
    assert main([*args, "--quiet", *over]) == 0
    film = (tmp_path / "cmp" / "film" / "results.json").stat().st_mtime_ns
    mlp = tmp_path / "cmp" / "mlp"
    (mlp / "results.json").unlink()  # mlp was cut short: its step-4 checkpoint is gone too, step 2 remains
    (mlp / "checkpoints" / "step-0000004.safetensors").unlink()
    logs()
    assert main([*args, "--resume", *over]) == 0
    said = logs()
    assert "film: finished earlier, kept" in said.replace(str(tmp_path / "cmp") + "/", "")
    assert "resumed from" in said and "step 2" in said
    phases = ["mlp: 16 training + 8 held-out clips; building the model", "mlp: preparing the vae target"]
    phases += ["mlp: held-out evaluation on 8 clips", "report: writing"]  # no silent phase
    assert all(p in said for p in phases) and said.index(phases[0]) < said.index(phases[2]), said
    assert (tmp_path / "cmp" / "film" / "results.json").stat().st_mtime_ns == film
    assert json.loads((mlp / "results.json").read_text())["steps"] == 4
    assert [r["head"] for r in json.loads((tmp_path / "cmp" / "summary.json").read_text())] == ["film", "mlp"]


def test_outside_a_terminal_training_logs_a_progress_line_every_n_steps(tiny_cfg, logs):
    """No progress bar shows in a log file (nohup, Slurm): train.log_every gives one line per N steps instead."""
    logs()
    train(tiny_cfg(**{"train.steps": 4, "train.log_every": 2}))
    lines = [line for line in logs().splitlines() if ": step " in line]
    assert [line.split(",")[0] for line in lines] == ["film: step 2/4", "film: step 4/4"], lines
    assert all("recon ratio" in line and "s/step" in line for line in lines)


def test_vae_latents_are_encoded_lazily_only_for_the_clips_a_run_touches(tmp_path, logs):
    """Start-up does not grow with the dataset: 2 steps x 2 x 2 clips touch 8 of the 64 training clips; those and
    the held-out clips are encoded (bit for bit as `foveal precompute` encodes them) and nothing else."""
    over = tiny_overrides(**{"train.steps": 2, "data.train_clips": 64})
    cfg = load_config("tiny", overrides=[*over, f"out_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}"])
    logs()
    train(cfg)
    assert f"vae target: {8 + 8} clips encoded so far, 0 read from the cache" in logs()
    model, _ = build_model(cfg)
    vae = model.target.build_vae()
    cache = LatentCache(cfg.cache_path, fingerprint(vae))
    train_set, heldout_set = build_datasets(cfg)
    keys = [train_set[i]["key"] for i in range(len(train_set))]
    held = [heldout_set[i]["key"] for i in range(len(heldout_set))]
    cached = [k for k in keys if LatentCache.entry(k) in cache.index]
    assert len(cached) == 8 and not cache.missing(held) and len(cache.index) == 8 + len(held)
    first = next(i for i, k in enumerate(keys) if k in cached)
    assert torch.equal(cache.get([keys[first]])[0], encode_latents(vae, train_set[first]["frames"]))
