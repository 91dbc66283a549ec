#!/usr/bin/env bash
# The README's GPU row: `foveal bench` of the full preset on one CUDA GPU, bf16, with and without torch.compile,
# frozen and trainable encoder, at the preset's batch (2 clips) and at batches that fill the chip.
# Each measurement is one process under a time limit, so one that fails or hangs leaves the others' results.
#   usage: scripts/bench_gpu.sh OUT_DIR [key=value ...]     (extra overrides go to every run)
#   env:   FOVEAL (the command, default `python -m foveal`), LIMIT (seconds per run, default 240), DEVICE (cuda),
#          PRESET (default full), BATCHES (the larger batches, default "16 64")
# Writes OUT_DIR/<name>.json (bench --json) and <name>.log; prints one line per run as it ends.
set -u
out=${1:?usage: scripts/bench_gpu.sh OUT_DIR [key=value ...]}
shift
mkdir -p "$out"
foveal=${FOVEAL:-python -m foveal}
preset=${PRESET:-full}

run() {  # name, then bench flags
    local name=$1 start=$SECONDS
    shift
    if timeout "${LIMIT:-240}" $foveal bench --preset "$preset" --precision bf16 --device "${DEVICE:-cuda}" --json "$@" \
        >"$out/$name.json" 2>"$out/$name.log"; then
        echo "$name: done in $((SECONDS - start)) s"
    else
        echo "$name: FAILED (rc $?) after $((SECONDS - start)) s; the end of $out/$name.log:"
        tail -n 5 "$out/$name.log"
    fi
}

big=${BATCHES:-16 64}
last=${big##* }
run film-frozen --steps 20 --warmup 3 "$@"
run film-trainable --trainable-encoder --steps 20 --warmup 3 "$@"
run "film-frozen-b$last" --batch "$last" --steps 10 --warmup 3 "$@"
run film-frozen-compile --compile --steps 20 --warmup 3 "$@"
run film-trainable-compile --trainable-encoder --compile --steps 20 --warmup 3 "$@"
run cross-frozen --head cross_attention --steps 20 --warmup 3 "$@"
run "film-trainable-b$last" --batch "$last" --trainable-encoder --steps 10 --warmup 3 "$@"
run "film-frozen-b$last-compile" --batch "$last" --compile --steps 10 --warmup 3 "$@"
for b in ${big% *}; do
    [ "$b" = "$last" ] || run "film-frozen-b$b" --batch "$b" --steps 10 --warmup 3 "$@"
done

# one table of every run that finished; MFU against the peak measured in the same run and, where DATASHEET_TFLOPS
# is given (the vendor's dense bf16 figure, e.g. 989 for an H100 or H200 SXM), against that too
python3 - "$out" "${DATASHEET_TFLOPS:-}" <<'PY' | tee "$out/summary.md"
import json, pathlib, sys
out, sheet = pathlib.Path(sys.argv[1]), float(sys.argv[2] or "nan")
rows = []
for path in sorted(out.glob("*.json"), key=lambda p: p.stat().st_mtime):
    try:
        rows.append((path.stem, json.loads(path.read_text())))
    except ValueError:
        pass  # that run failed: its log says why
print("| run | clips | ms/step | clips/s | GFLOP/step | TFLOP/s | MFU (measured peak) | MFU (datasheet) | peak GiB |")
print("|---|---|---|---|---|---|---|---|---|")
for name, r in rows:
    tflops = r["achieved_flops_per_s"] / 1e12
    print(f"| {name} | {r['batch']} | {r['step_s_median'] * 1e3:.1f} | {r['clips_per_s']:.1f} | "
          f"{r['flops_per_step'] / 1e9:.0f} | {tflops:.1f} | {100 * r['mfu']:.1f} % | {100 * tflops / sheet:.1f} % | "
          f"{r['peak_mem_mib'] / 1024:.1f} |")
if rows:
    r = rows[0][1]
    peaks = ", ".join(f"{x['peak_flops_per_s'] / 1e12:.0f}" for _, x in rows)
    print(f"\n{r['processor']['name']}; bf16 matmul peak measured in each run ({r['peak_matmul_size']}^3): {peaks} TFLOP/s")
PY
