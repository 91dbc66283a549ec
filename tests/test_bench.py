"""`foveal bench`: the JSON it prints, the FLOP count of the CPU attention kernels, and that every naive variant it
times computes the same loss and gradients as the optimised step (so a speed-up is for the same maths)."""

import contextlib
import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from foveal.analysis.bench import CPU_FLOPS, NAIVE, Step, Variant, patched, softmax_attention, undo_all
from foveal.cli import main
from foveal.config import load_config
from foveal.model import fused as fused_module
from foveal.model.foveated import FoveatedVLM
from foveal.train.hardware import processor, slow_bf16

SAME_MATHS = [
    "per-frame attend", "SDPA query attend", "SDPA encoder", "unfused encoder linears", "materialised attention",
    "head per pass", "foreach AdamW",
]  # fmt: skip
FROZEN_ONLY = {"unfused encoder linears"}
SMALL = ["data.num_frames=4", "train.batch_size=2", "model.llm.num_layers=2", "model.dino.num_layers=2"]
KEYS = [
    "preset",
    "head",
    "precision",
    "frozen_encoder",
    "batch",
    "frames",
    "step_s_median",
    "step_s_min",
    "step_s_max",
    "peak_mem_mib",
    "flops_per_step",
    "achieved_flops_per_s",
    "peak_flops_per_s",
    "mfu",
    "frames_per_s",
]


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    cfg = load_config(
        "tiny", overrides=[*SMALL, "model.head=cross_attention", f"cache_dir={tmp_path_factory.mktemp('c')}"]
    )
    return Step(cfg, torch.device("cpu"))


def test_bench_json_has_the_keys_and_sane_values(capsys, cache_dir):
    rc = main(["bench", "--steps", "1", "--warmup", "1", "--json", "--compare-naive", f"cache_dir={cache_dir}", *SMALL])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert set(KEYS) <= set(r)
    assert (r["preset"], r["head"], r["precision"], r["frozen_encoder"], r["batch"], r["frames"]) == (
        "tiny", "film", "fp32", True, 2, 4,
    )  # fmt: skip
    assert 0 < r["step_s_min"] <= r["step_s_median"] <= r["step_s_max"] and r["cpu_s_median"] > 0
    assert r["frames_per_s"] == pytest.approx(2 * 4 / r["step_s_median"])
    assert r["achieved_flops_per_s"] == pytest.approx(r["flops_per_step"] / r["step_s_median"])
    assert r["mfu"] == pytest.approx(r["achieved_flops_per_s"] / r["peak_flops_per_s"])
    assert 1e9 < r["peak_flops_per_s"] < 1e16
    assert 100 < r["peak_mem_mib"] < 8192  # a torch process holding a tiny model
    # the FiLM head alone, B*T = 8 samples: its conv encoder (3 convs of 3x3 at S*S positions) once per sample, its
    # decoder (as many FLOPs) once per pass and sample; forward + 2x backward
    s, c = 8, 4
    stack = s * s * 9 * (c * 64 + 64 * 128 + 128 * 256) * 2
    assert r["flops_per_step"] > 8 * (1 + 2) * stack * 3
    names = [v["name"] for v in r["variants"]]
    assert names == [*SAME_MATHS, "all naive"]  # fp32 applies to bf16 only
    assert all(v["step_s_median"] > 0 and v["slowdown"] > 0 for v in r["variants"])


def test_bf16_compare_names_each_rows_precision_and_pairs_them_like_for_like(capsys, cache_dir):
    args = ["bench", "--steps", "1", "--warmup", "1", "--compare-naive", "--precision", "bf16", "--json"]
    assert main([*args, f"cache_dir={cache_dir}", *SMALL]) == 0
    r = json.loads(capsys.readouterr().out)
    precision = {v["name"]: v["precision"] for v in r["variants"]}
    assert precision == {**dict.fromkeys([*SAME_MATHS, "all naive"], "bf16"), "fp32": "fp32", "all naive, fp32": "fp32"}
    assert set(r["peak_flops_per_s_by_precision"]) == {"bf16", "fp32"}
    for v in r["variants"]:
        peak = r["peak_flops_per_s_by_precision"][v["precision"]]
        assert v["mfu"] == pytest.approx(r["flops_per_step"] / v["step_s_median"] / peak)


@pytest.mark.parametrize(
    "flags, hardware",
    [("fpu avx512f amx_bf16 avx512_bf16", "AMX"), ("avx512f avx512_bf16", "AVX-512 BF16"), ("sse2", "none")],
)
def test_the_processor_line_names_the_bf16_hardware(tmp_path, flags, hardware):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert processor(torch.device("cpu"), str(info)) == {"name": "AMD EPYC 9B14", "bf16_hardware": hardware}


@pytest.mark.parametrize(
    "flags, precision, warned",
    [("avx2 fma", "bf16", True), ("avx512f avx512_bf16", "bf16", False), ("amx_bf16", "bf16", False),
     ("avx2 fma", "fp32", False)],
)  # fmt: skip
def test_bf16_on_a_cpu_without_bf16_hardware_is_warned_of_and_the_warning_names_the_fix(
    tmp_path, flags, precision, warned
):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: {flags}\n")
    warning = slow_bf16(precision, torch.device("cpu"), str(info))
    assert (warning is not None) == warned
    if warned:
        assert "AMD EPYC 7B13" in warning and "train.precision=fp32" in warning


def test_flops_include_the_cpu_attention_kernels(step):
    """The optimised forward (CPU SDPA kernels and the encoder's fused oneDNN linears, counted by our formulas) and
    the materialised one (plain matmuls and linears, counted by torch) do the same matmuls, so the counts agree
    exactly; without the formulas SDPA and the fused linears would count 0."""
    with FlopCounterMode(display=False, custom_mapping=CPU_FLOPS) as fused:
        step.loss()
    plain = contextlib.ExitStack()
    plain.enter_context(patched(F, "scaled_dot_product_attention", softmax_attention))
    plain.enter_context(patched(fused_module, "fusable", lambda x: False))
    with plain, FlopCounterMode(display=False) as materialised:
        step.loss()
    with FlopCounterMode(display=False) as uncounted:
        step.loss()
    assert fused.get_total_flops() == materialised.get_total_flops()
    assert uncounted.get_total_flops() < fused.get_total_flops()


def grads(step) -> tuple[torch.Tensor, dict]:
    step.opt.zero_grad(set_to_none=True)
    loss = step.loss()
    loss.backward()
    out = {n: p.grad.clone() for n, p in step.model.named_parameters() if p.grad is not None}
    step.opt.zero_grad(set_to_none=True)
    return loss.detach(), out


@pytest.fixture(scope="module")
def trainable_step(tmp_path_factory):
    cfg = load_config(
        "tiny", overrides=[*SMALL, "model.dino.freeze=false", f"cache_dir={tmp_path_factory.mktemp('c')}"]
    )
    return Step(cfg, torch.device("cpu"))


@pytest.mark.parametrize("which", ["step", "trainable_step"])
def test_naive_variants_compute_the_same_loss_and_gradients(which, request):
    step = request.getfixturevalue(which)
    ref_loss, ref_grads = grads(step)
    same = [v for v in NAIVE if v.same_loss and v.applies(step)]
    assert [v.name for v in same] == [n for n in SAME_MATHS if which == "step" or n not in FROZEN_ONLY]
    everything = Variant("all naive", "", lambda s: undo_all(s, same))
    for v in [*same, everything]:
        with v.enter(step):
            loss, g = grads(step)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6, msg=v.name)
        assert g.keys() == ref_grads.keys()
        for name in ref_grads:
            torch.testing.assert_close(g[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=f"{v.name}: {name}")
    assert "read" not in vars(step.model) and "_attend_deep" not in vars(step.model.encoder)  # restored
    assert F.scaled_dot_product_attention is not softmax_attention


def test_the_bench_caches_the_encoder_only_when_asked(step, tmp_path):
    """A preset's encoder_cache `auto` (tiny's) is for compare's models sharing clips; the bench times the uncached
    step unless `--encoder-cache` (true) asks for the cached one."""
    assert load_config("tiny").train.encoder_cache == "auto" and step.cache is None
    cfg = load_config("tiny", overrides=[*SMALL, "train.encoder_cache=true", f"cache_dir={tmp_path}"])
    cached = Step(cfg, torch.device("cpu"))
    assert cached.cache is not None and len(cached.cache) == cfg.train.batch_size


def test_the_bench_compiles_the_model_only_when_asked(cache_dir, monkeypatch, capsys):
    """`--compile` (train.compile=true) times the compiled parts and says so; without it nothing is compiled.
    Recorded, not compiled, here (test_model.py checks what compiling computes)."""
    calls = []
    monkeypatch.setattr(FoveatedVLM, "compile_parts", lambda self: calls.append(self.training))
    args = ["bench", "--steps", "1", "--warmup", "1", "--json", "--compile", f"cache_dir={cache_dir}", *SMALL]
    assert main(args) == 0
    assert calls == [True] and json.loads(capsys.readouterr().out)["compiled"] is True
    Step(load_config("tiny", overrides=[*SMALL, f"cache_dir={cache_dir}"]), torch.device("cpu"))
    assert calls == [True]


def test_softmax_attention_matches_sdpa_with_masks_and_gqa():
    q, k, v = torch.randn(2, 6, 5, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    mask = torch.rand(5, 7) > 0.3
    mask[:, 0] = True  # every query sees something
    for kw in ({"enable_gqa": True}, {"enable_gqa": True, "attn_mask": mask}, {"enable_gqa": True, "scale": 0.3}):
        torch.testing.assert_close(softmax_attention(q, k, v, **kw), F.scaled_dot_product_attention(q, k, v, **kw))
    qs = torch.randn(2, 2, 7, 8)
    torch.testing.assert_close(
        softmax_attention(qs, k, v, is_causal=True), F.scaled_dot_product_attention(qs, k, v, is_causal=True)
    )


def test_foreach_variant_changes_only_the_optimiser_implementation(step):
    """The fused (default) and foreach AdamW updates agree; the variant restores the flags afterwards."""
    flags = lambda: [(g["foreach"], g["fused"]) for g in step.opt.param_groups]  # noqa: E731
    before = flags()
    params = [p for p in step.model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    copy = lambda state: {k: {n: t.clone() for n, t in s.items()} for k, s in state.items()}  # noqa: E731
    state = copy(step.opt.state)
    step()
    fused = [p.detach().clone() for p in params]
    with torch.no_grad():  # rewind weights and optimiser state, then take the same step with foreach
        for p, s in zip(params, start):
            p.copy_(s)
    step.opt.state.clear()
    step.opt.state.update(
        {k: {n: (t.clone() if torch.is_tensor(t) else t) for n, t in s.items()} for k, s in state.items()}
    )
    foreach = next(v for v in NAIVE if v.name == "foreach AdamW")
    with foreach.enter(step):
        assert all(g["foreach"] and not g["fused"] for g in step.opt.param_groups)
        step()
    for a, b in zip(fused, params):
        torch.testing.assert_close(b.detach(), a, rtol=1e-5, atol=1e-7)
    assert flags() == before == [(None, True)] * len(before)


def test_allocator_tuning_is_on_by_default_and_can_be_turned_off():
    """glibc: tuned unless FOVEAL_MALLOC=default or the user set a MALLOC_* threshold (their choice wins)."""
    import os
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    code = "from foveal.train.allocator import keep_large_buffers; print(keep_large_buffers())"

    def tuned(**env) -> str:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "FOVEAL_MALLOC"))}
        out = subprocess.run([sys.executable, "-c", code], env=clean | env, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    assert tuned() == "True"
    assert tuned(FOVEAL_MALLOC="default") == "False"
    assert tuned(MALLOC_TRIM_THRESHOLD_="131072") == "False"


def test_startup_bench_names_a_failing_train_in_one_line(capsys):
    assert main(["bench", "--startup", "train.no_such_key=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("foveal: config error: bench --startup: `foveal train train.no_such_key=1` failed:")
    assert "no_such_key" in err[-1]
