"""Trained run folders -> one row per head: every number a typed Estimate (value, 95% interval, what it is over).

One seed: a metric's interval is the paired bootstrap over held-out clips ("clips"); N seeds: the mean and the
Student-t interval of the N per-seed values ("seeds"). Every metric of every seed is aggregated the same way, so
no table cell comes from the first seed alone.
"""

from __future__ import annotations

import numpy as np

from foveal.evaluation.stats import (
    NAN,
    Estimate,
    diff_estimate,
    gain_captured,
    oracle_headroom,
    ratio_estimate,
    seeds_estimate,
)
from foveal.evaluation.summary import steered
from foveal.model.foveated import FIRST_STEERED

# the reference's table fields and the run's description, read from the first seed (the same for every seed)
DESCRIPTION = ("head", "steps", "params", "coarse_weight", "seed", "ratio_kind", "objective", "preset", "protocol")
DESCRIPTION += ("target", "target_loss", "frame_gap", "target_shape", "target_features")
NAN_ESTIMATE = Estimate(NAN)


def _value(x) -> Estimate:
    return Estimate(float(x))


def _interval(d: dict, n: int) -> Estimate:
    """A held-out summary's {"value", "ci"} entry."""
    lo, hi = d["ci"]
    return Estimate(d["value"], lo, hi, "clips", d.get("n", n))


def heldout_metrics(held: dict) -> dict[str, Estimate]:
    """The ratios, shares and caption controls of one run's held-out summary."""
    n, m = held.get("clips", 0), {}
    for kind in ("recon", "caption"):
        s = held.get(kind, {})
        if "ratio" in s:
            m[f"{kind}_ratio"] = Estimate(s["ratio"], *s["ratio_ci"], "clips", n)
            m[f"{kind}_fine_better"] = _value(s["fine_better_share"])
        for path in ("coarse", "fine"):
            if f"video_other_minus_{path}" in s:
                m[f"caption_video_other_minus_{path}"] = _interval(s[f"video_other_minus_{path}"], n)
        if "ratio_all_frames" in s:
            m[f"{kind}_ratio_all_frames"] = Estimate(s["ratio_all_frames"], *s["ratio_all_frames_ci"], "clips", n)
        for look in ("oracle_eval", "shuffled"):
            if f"ratio_{look}" in s:
                m[f"{kind}_ratio_{look}"] = _interval(s[f"ratio_{look}"], n)
    recon = held.get("recon", {})
    for key in ("mse_fine_steered", "cos_fine_steered"):
        if key in recon:
            m[key] = _value(recon[key])
    return m


def slot_metrics(held: dict) -> dict[str, Estimate]:
    """Each path's caption CE at each slot (caption_slot<j>_<path>), as the held-out summary's interval."""
    n = held.get("clips", 0)
    return {
        f"caption_slot{s['slot']}_{p}": _interval(e, n)
        for s in held.get("caption_slots", [])
        for p, e in s["ce"].items()
    }


def slot_rows(held: dict) -> list[dict]:
    """What describes each slot (the same held-out clips for every seed): index, word, distinct tokens, chance,
    the paths scored there."""
    keys = ("slot", "word", "distinct", "chance", "fixed")
    return [{k: s[k] for k in keys} | {"paths": list(s["ce"])} for s in held.get("caption_slots", [])]


def control_metrics(held: dict) -> tuple[dict[str, Estimate], dict[str, list]]:
    """Copy-last, the h-ablation and where the queries look (with the per-layer attention lists)."""
    n, m, layers = held.get("clips", 0), {}, {}
    c = held.get("controls", {})
    if c:
        m["copy_last"] = _value(c["copy_last"])
        for path in ("coarse", "fine"):
            if path in c:
                m[f"loss_{path}"] = _value(c[path]["loss"])
                for key in ("h_zero", "h_other"):
                    m[f"{key}_minus_{path}"] = _interval(c[path][f"{key}_minus_loss"], n)
    copy = held.get("copy_last", {})
    for path in ("fine", "coarse"):  # > 1: the path beats copying the previous frame; < 1: worse than copying
        if f"mse_copy_over_{path}" in copy:
            value, ci = copy[f"mse_copy_over_{path}"], copy[f"mse_copy_over_{path}_ci"]
            m[f"mse_copy_over_{path}"] = Estimate(value, *ci, "clips", n)
    if "mse_copy_over_fine" in copy:
        m["copy_last_mse"], m["copy_last_cos"] = _value(copy["mse"]), _value(copy["cos"])
    a = held.get("attention", {})
    if "chance" in a:
        m["attention_chance"] = _value(a["chance"])
    for path in ("coarse", "fine"):
        if path in a:
            m[f"entropy_{path}"] = _value(a[path]["entropy"])
        if "mean" in a.get(path, {}):
            m[f"attention_{path}"] = _value(a[path]["mean"])
            layers[path] = a[path]["per_layer"]
    if "fine_minus_coarse" in a:
        m["attention_fine_minus_coarse"] = _interval(a["fine_minus_coarse"], n)
    p = held.get("probes", {})
    if p:
        m["probe_colour_chance"] = _value(p["colour_chance"])
    for path in ("coarse", "fine", "oracle_eval"):
        for key in ("position_r2", "colour_accuracy"):
            if key in p.get(path, {}):
                m[f"probe_{key}_{path}"] = _value(p[path][key])
    return m, layers


def coarse_only_metrics(arrays: dict, control: dict, seed: int) -> dict[str, Estimate]:
    """The fair baseline: a model that only ever had q_static, on the same held-out clips."""
    m = {}
    if "recon_fine" in arrays:
        only, fine = steered(control["recon_coarse"]), steered(arrays["recon_fine"])
        m["loss_coarse_only"] = _value(only.mean())
        m["recon_coarse_only_over_fine"] = ratio_estimate(only, fine, seed)
    if "caption_fine" in arrays:
        m["caption_coarse_only_over_fine"] = ratio_estimate(control["caption_coarse"], arrays["caption_fine"], seed)
    if "attention_coarse" in control:
        m["attention_coarse_only"] = _value(control["attention_coarse"][:, 1:].mean())
    if "attention_coarse_entropy" in control:
        m["entropy_coarse_only"] = _value(control["attention_coarse_entropy"][:, 1:].mean())
    return m


def look_metrics(
    arrays: dict, oracle, prev_only, seed: int, reference: dict | None = None, dense: dict | None = None
) -> dict[str, Estimate]:
    """The trained control models against the coarse path of the model they were trained beside (this one, or
    `reference`: the reference head's main run, whose controls this head borrows), steered frames, the same
    held-out clips: coarse / oracle-look model (the ceiling), coarse / prev-only model (the floor: h a constant),
    coarse / dense reader (what k pooled tokens per frame give), the oracle's own ratio, and the share of the
    oracle's gain this model's learned looks capture, where the oracle has headroom (else NaN: "no headroom")."""
    m = {}
    for kind in ("recon", "caption"):
        if f"{kind}_coarse" not in arrays:
            continue
        per_clip = steered if kind == "recon" else (lambda x: x)  # noqa: E731
        coarse = per_clip(arrays[f"{kind}_coarse"])
        beside = coarse if reference is None else per_clip(reference[f"{kind}_coarse"])
        if oracle is not None and f"{kind}_fine" in oracle:
            best = per_clip(oracle[f"{kind}_fine"])
            m[f"{kind}_oracle_ratio"] = ratio_estimate(beside, best, seed)
            m[f"{kind}_oracle_own_ratio"] = ratio_estimate(per_clip(oracle[f"{kind}_coarse"]), best, seed)
            m[f"{kind}_oracle_gain"] = diff_estimate(beside, best, seed)
            if f"{kind}_fine" in arrays:
                fine = per_clip(arrays[f"{kind}_fine"])
                gain = gain_captured(coarse, fine, best, None if reference is None else beside, seed=seed)
                m[f"{kind}_gain_captured"] = gain if oracle_headroom(beside, best, seed) else Estimate(NAN)
        if prev_only is not None and kind == "recon":
            m["recon_prev_only_ratio"] = ratio_estimate(beside, steered(prev_only["recon_coarse"]), seed)
            m["loss_prev_only"] = _value(steered(prev_only["recon_coarse"]).mean())
        if dense is not None and f"{kind}_coarse" in dense:  # its one pass is its coarse pass
            m[f"{kind}_dense_ratio"] = ratio_estimate(beside, per_clip(dense[f"{kind}_coarse"]), seed)
            m[f"loss_{kind}_dense"] = _value(per_clip(dense[f"{kind}_coarse"]).mean())
    if oracle is not None and "region_fine" in oracle:
        m["region_oracle"] = _value(np.nanmean(oracle["region_fine"][:, FIRST_STEERED:]))
    for path in ("coarse", "fine"):
        if f"region_{path}" in arrays:
            m[f"region_{path}"] = _value(np.nanmean(arrays[f"region_{path}"][:, FIRST_STEERED:]))
    return m


def flops_metrics(result: dict, dense_result: dict | None) -> dict[str, Estimate]:
    """Forward FLOPs per clip (results.json, one held-out batch) of this model and of the dense reader beside it."""
    m = {}
    for suffix, r in (("", result), ("_dense", dense_result)):
        flops = (r or {}).get("flops_per_clip")
        if flops:
            m[f"flops_per_clip{suffix}"] = _value(flops["forward"])
            m[f"flops_per_clip{suffix}_encoder"] = _value(flops["encoder"])
    return m


def run_metrics(
    result: dict, arrays: dict, control: dict | None, seed: int = 0, oracle=None, prev_only=None, reference=None,
    dense: tuple[dict, dict] | None = None,
) -> dict:  # fmt: skip
    """One trained model (and its control models' held-out arrays, where trained; the dense reader's results and
    arrays) -> {"metrics": name -> Estimate, "layers", "step_ratios", "result"}."""
    held = result["heldout"]
    m = {
        "final_ratio": _value(result["final_ratio"]),
        "ratio_above_1": _value(result["ratio_above_1"]),
        "loss_fine_train": _value(result["loss_fine"]),
        "loss_coarse_train": _value(result["loss_coarse"]),
    }
    m |= {k: _value(v) for k, v in result.items() if k.startswith("final_") and k != "final_ratio"}
    m |= heldout_metrics(held) | slot_metrics(held)
    controls, layers = control_metrics(held)
    m |= controls
    if control is not None:
        m |= coarse_only_metrics(arrays, control, seed)
    dense_result, dense_arrays = dense or (None, None)
    m |= look_metrics(arrays, oracle, prev_only, seed, reference, dense_arrays)
    m |= flops_metrics(result, dense_result)
    return {"metrics": m, "layers": layers, "step_ratios": result["step_ratios"], "result": result}


def aggregate(runs: list[dict]) -> dict:
    """Per metric: one run -> its own estimate; N runs -> the mean and t-interval of the per-seed values."""
    metrics = {}
    for name in runs[0]["metrics"]:
        values = [r["metrics"][name] for r in runs if name in r["metrics"]]
        metrics[name] = values[0] if len(values) == 1 else seeds_estimate([v.value for v in values])

    layers = {
        path: np.mean([r["layers"][path] for r in runs if path in r["layers"]], axis=0).tolist()
        for path in runs[0]["layers"]
    }
    results = [r["result"] for r in runs]
    first = results[0]
    kind = first.get("ratio_kind", "recon")
    return {
        **{k: first[k] for k in DESCRIPTION if k in first},
        "final_ratio": metrics["final_ratio"].value,
        "ratio_above_1": metrics["ratio_above_1"].value,
        "min_ratio": min(r["min_ratio"] for r in results),
        "max_ratio": max(r["max_ratio"] for r in results),
        "loss_fine": metrics["loss_fine_train"].value,
        "loss_coarse": metrics["loss_coarse_train"].value,
        "heldout_ratio": metrics.get(f"{kind}_ratio", NAN_ESTIMATE).value,
        "nonfinite_steps": sum(r.get("nonfinite_steps", 0) for r in results),
        "seeds": len(runs),
        "clips": first["heldout"].get("clips", 0),
        "metrics": {k: v.as_dict() for k, v in metrics.items()},
        "attention_layers": layers,
        "caption_slots": slot_rows(first["heldout"]),
        "step_ratios": runs[0]["step_ratios"],
    }
