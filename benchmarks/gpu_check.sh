#!/usr/bin/env bash
# The prepared GPU check (issue 15, item 3): one run on one H100/H200-class GPU, under 8 minutes,
# that ends in one Markdown table (stage, status, seconds, key figures).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]         # OUT_DIR: $1, else $OUT, else ./gpu_check_out
#
# Stages, in order (limit: the stage's own timeout; estimate: its expected time on an H100):
#
#   stage          limit  estimate  what
#   (wheels          60 s     10 s  only with GPU_CHECK_WHEELS: pip install them, see below)
#   env              60 s     10 s  python, torch, triton, the GPUs; genossm and its imports
#   tokenize         60 s      5 s  genossm tokenize the embedded chr20 slice (2 Mb) into a store
#   scan_tests      210 s     90 s  tests/test_scan_triton.py + test_scan_s6_triton.py compiled on
#                                   the GPU (GENOSSM_TEST_DEVICE=cuda, TRITON_INTERPRET=0) against
#                                   the float64 reference on CPU; pytest -n 8 where xdist is there
#   train_bf16      120 s     40 s  genossm train --config config/models/cpu.yaml --max-steps 50
#                                   --device cuda: precision auto = bf16 autocast on CUDA
#   scan_ssd        120 s     45 s  benchmarks/scan_gpu.py: Mamba-2 scan, triton vs torch,
#                                   L = 2^16..2^20, bf16 and fp32: ms, bandwidth / copy bandwidth
#   scan_s6          90 s     40 s  benchmarks/scan_gpu.py --s6: Mamba-1 scan at 2^17 and 2^20
#   long_context    150 s     50 s  benchmarks/train.py --long: d_model 256 x 16 layers, L = 2^17
#                                   and 2^20, bf16 autocast, checkpointing (1 warm-up + 3 steps)
#   score_4k         75 s     35 s  benchmarks/score.py --device cuda, window 4,096, 100 records
#   score_32k        75 s     30 s  the same at window 32,768, one repeat
#   context parallelism over the GPUs present, N = torch.cuda.device_count():
#     N >= 2:
#   cp_single        90 s     30 s  genossm train, fp32, 10 steps of 2 windows of 65,536 on 1 GPU
#   cp_ranks        150 s     45 s  the same under torchrun --nproc-per-node N --context-parallel N
#   cp_compare       30 s      5 s  losses at every step and final weights equal (<= 1e-4 rel)?
#     N <= 1 (genossm/distributed.py puts rank r on cuda:r, so two ranks cannot share one GPU):
#   cp_cpu_gloo     120 s     45 s  benchmarks/context_parallel.py on CPU (gloo): one step at
#                                   L = 65,536 with R = 1, 2, 4; losses of R = 2, 4 equal R = 1?
#
# The estimates add up to about 6.5 minutes. Besides each stage's limit, the stages together get
# at most GPU_CHECK_BUDGET_S (default 450) seconds: a stage starts with at most what is left, and
# is SKIPPED when under 15 s are left, so the whole run stays under 8 minutes even when stages
# hang. A stage that fails or times out is marked so in the table and the next one runs.
#
# Output (at most 8 files, for the device tool's $OUT): OUT_DIR/table.md (rewritten after every
# stage, so a killed run still leaves its table) and one raw log per group of stages,
# OUT_DIR/{0_env,1_tests,2_train,3_scan,4_long,5_score,6_context_parallel}.log. Work files (the
# token store, model directories) go to a temporary directory, removed at the end.
#
# Environment: PYTHON (default python3: the one with CUDA torch; the repository is put on
# PYTHONPATH, genossm need not be installed, but its dependencies must be importable: zarr,
# numcodecs, isal, pysam, safetensors, pyyaml, tqdm; pytest and hypothesis for the tests);
# GPU_CHECK_WHEELS=DIR installs DIR/*.whl (pip --no-index --no-deps) into the work directory
# first, for a machine without them; GPU_CHECK_BUDGET_S; GPU_CHECK_NGPU (the GPU count, instead
# of asking torch); GPU_CHECK_WORK=DIR (work there and keep it); GPU_CHECK_DRY_RUN=1 (print
# every stage's command, tab-separated, run none of them: tests/test_gpu_check.py).

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${1:-${OUT:-./gpu_check_out}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
MIN_STAGE_S=15
DRY=${GPU_CHECK_DRY_RUN:-}
[[ $DRY == 0 ]] && DRY=

if [[ -n ${GPU_CHECK_WORK:-} ]]; then
    WORK=$GPU_CHECK_WORK
    mkdir -p "$WORK"
    WORK=$(cd "$WORK" && pwd)
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
fi

cd "$REPO"
PYTHONPATH_BEFORE=${PYTHONPATH:-}
export PYTHONPATH="$REPO${PYTHONPATH_BEFORE:+:$PYTHONPATH_BEFORE}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET           # every stage runs the Triton kernels compiled, on the GPU

LOG_ENV=$OUT_DIR/0_env.log
LOG_TESTS=$OUT_DIR/1_tests.log
LOG_TRAIN=$OUT_DIR/2_train.log
LOG_SCAN=$OUT_DIR/3_scan.log
LOG_LONG=$OUT_DIR/4_long.log
LOG_SCORE=$OUT_DIR/5_score.log
LOG_CP=$OUT_DIR/6_context_parallel.log
TABLE=$OUT_DIR/table.md
ROWS=$WORK/rows.tsv
STORE=$WORK/chr20.zarr
for f in "$LOG_ENV" "$LOG_TESTS" "$LOG_TRAIN" "$LOG_SCAN" "$LOG_LONG" "$LOG_SCORE" "$LOG_CP" \
         "$ROWS"; do
    : > "$f"
done

# --- the figures of each stage, read from its section of the log --------------------------------
cat > "$WORK/figures.py" <<'PYFIGURES'
"""figures.py STAGE LOG: the key figures of STAGE, read from its section of LOG (from the line
'### stage STAGE ' to the next '### stage '), on one line; '-' when there are none."""
import json
import re
import statistics
import sys


def section(text, stage):
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("### stage "):
            inside = line.startswith(f"### stage {stage} ")
            continue
        if inside:
            out.append(line)
    return out


def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def num(s):
    return float(s.replace(",", ""))


def isnum(s):
    try:
        num(s)
        return True
    except ValueError:
        return False


def env(lines):
    keep = [ln for ln in lines if ln.startswith(("gpus:", "versions:", "missing:"))]
    return "; ".join(keep)


def tokenize(lines):
    for ln in lines:
        m = re.search(r"with ([\d,]+) bases", ln)
        if m:
            return f"{m.group(1)} bases"
    return ""


def scan_tests(lines):
    figs = ""
    for ln in lines:
        if (re.search(r"\b\d+ (passed|failed|errors?|skipped)\b", ln)
                and re.search(r" in [\d.]+s", ln)):
            figs = ", ".join(f"{n} {w}" for n, w in re.findall(
                r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)", ln))
    failed = [ln.split()[1].split("::")[-1] for ln in lines
              if ln.startswith(("FAILED ", "ERROR "))]
    if failed:
        figs += "; failed: " + ", ".join(failed[:4]) + (" ..." if len(failed) > 4 else "")
    return figs


def train_bf16(lines):
    recs = []
    for ln in lines:
        if ln.startswith("{"):
            try:
                recs.append(json.loads(ln))
            except ValueError:
                pass
    train = [r for r in recs if r.get("split") == "train"]
    val = [r for r in recs if r.get("split") == "val"]
    if not train:
        return ""
    last = train[-1]
    # steps/s of each logged window (its tokens/s over the tokens of a step); the first
    # window holds the compilation
    rates = [r["tokens_per_s"] / r["tokens"] * r["step"] for r in train]
    steps_s = statistics.median(rates[1:] or rates)
    figs = [f"{last['step']} steps", f"{steps_s:.1f} steps/s (median of the windows after step "
            f"{train[0]['step']})", f"{last['step'] / last['elapsed_s']:.1f} steps/s overall",
            f"final train loss {last['loss']:.4f} ({last['bits_per_base']:.3f} bits/base)"]
    if val:
        figs.append(f"val {val[-1]['bits_per_base']:.3f} bits/base")
    for ln in lines:
        m = re.match(r'"precision": "(\w+)"', ln)
        if m:
            figs.append(f"precision {m.group(1)}"
                        + (" (bf16 autocast on CUDA)" if m.group(1) == "auto" else ""))
    return ", ".join(figs)


def scan_ssd(lines):
    figs, rows = [], []
    for ln in lines:
        m = re.match(r"device: (.*); copy bandwidth (\d+) GB/s", ln)
        if m:
            figs.append(f"{m.group(1)}, copy {m.group(2)} GB/s")
        c = cells(ln) if ln.startswith("|") else []
        if len(c) == 10 and c[2] in ("fwd", "fwd+bwd"):
            rows.append(c)
    bw = [(num(c[6]), c) for c in rows if isnum(c[6])]
    if bw:
        best, c = max(bw, key=lambda t: t[0])
        figs.append(f"best triton BW/copy {best:.2f} ({c[0]} {c[1]} {c[2]})")
    for c in rows:
        if c[2] == "fwd+bwd" and c[1] == "2^20" and isnum(c[5]):
            figs.append(f"{c[0]} 2^20 fwd+bwd triton {c[3]} ms, torch/triton {c[5]}x")
    diffs = [num(c[9]) for c in rows if isnum(c[9])]
    if diffs:
        figs.append(f"max rel diff triton vs torch {max(diffs):.1e}")
    oom = sum("OOM" in c for c in rows)
    if oom:
        figs.append(f"{oom} OOM")
    return "; ".join(figs)


def scan_s6(lines):
    figs, diffs = [], []
    for ln in lines:
        c = cells(ln) if ln.startswith("|") else []
        if len(c) == 11 and c[0] in ("bf16", "fp16", "fp32") and c[1].startswith("2^"):
            figs.append(f"{c[0]} {c[1]}: {c[5]} Mtok/s fwd+bwd" if c[3] != "OOM"
                        else f"{c[0]} {c[1]}: OOM")
            if isnum(c[8]):
                diffs.append(num(c[8]))
    if diffs:
        figs.append(f"max diff vs 1 segment {max(diffs):.1e}")
    return "; ".join(figs)


def long_context(lines):
    figs = []
    for ln in lines:
        m = re.match(r"L = +([\d,]+): +([\d,]+) tokens/s, peak GPU memory ([\d.na]+) GiB", ln)
        if m:
            length = int(num(m.group(1)))
            name = f"2^{length.bit_length() - 1}" if length & (length - 1) == 0 else m.group(1)
            figs.append(f"{name}: {m.group(2)} tokens/s, {m.group(3)} GiB")
        m = re.match(r"tokens/s at L = .*: ([\d.]+)$", ln)
        if m:
            figs.append(f"ratio longest/shortest {m.group(1)}")
    return "; ".join(figs)


def score(lines):
    figs = []
    for ln in lines:
        m = re.match(r"(\d+) records, (\d+) scored alt alleles, window (\d+)", ln)
        if m:
            figs.append(f"{m.group(1)} records, window {m.group(3)}")
        m = re.match(r"\s+(prefix reuse|naive)\s+([\d.]+) s\s+([\d.]+) variants/s", ln)
        if m:
            figs.append(f"{m.group(1)} {m.group(3)} variants/s")
        m = re.match(r"ratio reuse / naive \(speed-up\): ([\d.]+)x", ln)
        if m:
            figs.append(f"speed-up {m.group(1)}x")
    return ", ".join(figs)


def cp_cpu_gloo(lines):
    rows = []
    for ln in lines:
        c = cells(ln) if ln.startswith("|") else []
        if len(c) == 7 and c[0].isdigit():
            rows.append(c)
    if not rows:
        return ""
    figs = []
    base = [c for c in rows if c[0] == "1"]
    if base:
        ref = num(base[0][2])
        others = [c for c in rows if c[0] != "1"]
        if others:
            # 6 decimals printed: equal within 1e-4 relative, or the last printed digit
            same = all(abs(num(c[2]) - ref) <= 1e-4 * abs(ref) + 1.5e-6 for c in others)
            figs.append(f"losses of R = {', '.join(c[0] for c in others)} equal to R = 1: "
                        f"{'yes' if same else 'no'} ({', '.join(c[2] for c in rows)})")
    figs += [f"R {c[0]}: peak RSS/rank {c[4]} MiB (x{c[5]}), sent+received {c[6]}"
             for c in rows if c[0] != "1"]
    return "CPU/gloo, 1 GPU: " + "; ".join(figs)


def train_summary(lines):
    for ln in lines:
        m = re.search(r"wrote .*: ([\d,]+) parameters, (\d+) steps, ([\d,]+) tokens in "
                      r"(\S+ s)", ln)
        if m:
            return f"{m.group(2)} steps, {m.group(3)} tokens in {m.group(4)}"
    return ""


def cp_compare(lines):
    for ln in lines:
        if ln.startswith("context parallel"):
            return ln.strip()
    return ""


PARSERS = {"env": env, "tokenize": tokenize, "scan_tests": scan_tests, "train_bf16": train_bf16,
           "scan_ssd": scan_ssd, "scan_s6": scan_s6, "long_context": long_context,
           "score_4k": score, "score_32k": score, "cp_cpu_gloo": cp_cpu_gloo,
           "cp_single": train_summary, "cp_ranks": train_summary, "cp_compare": cp_compare}


def main(stage, log):
    with open(log, errors="replace") as fh:
        lines = section(fh.read(), stage)
    try:
        figs = PARSERS.get(stage, lambda lines: "")(lines)
    except Exception as e:  # a figure missing, never the check
        figs = f"(figures unreadable: {type(e).__name__}: {e})"
    if not figs:  # a stage that stopped before its figures: its last words
        said = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("### ")]
        figs = f"last line: {said[-1][:200]}" if said else ""
    figs = " ".join((figs or "-").replace("|", "/").split())
    print(figs[:600])


if __name__ == "__main__":
    main(*sys.argv[1:3])
PYFIGURES

# --- running a stage, and the table ---------------------------------------------------------------
T_START=$SECONDS
FAILURES=0
STATUS=ok
SECS=0

now() { date +%s.%N; }
note() { printf '[gpu_check %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# stage NAME LIMIT_S LOG CMD...: run CMD under its own timeout (at most what is left of the
# budget), its output appended to LOG after a '### stage NAME ' line; sets STATUS and SECS.
# Then `finish NAME LOG` records the row (after anything the caller adds to the log).
stage() {
    local name=$1 limit=$2 log=$3
    shift 3
    local left=$((BUDGET - (SECONDS - T_START)))
    printf '### stage %s (limit %s s): %s\n' "$name" "$limit" "$*" >> "$log"
    SECS=0
    if [[ -n $DRY ]]; then
        printf 'DRY\t%s\t%s' "$name" "$limit"
        printf '\t%s' "$@"
        printf '\n'
        STATUS=dry
        return 0
    fi
    if ((left < MIN_STAGE_S)); then
        STATUS="SKIPPED (budget: ${left} s left)"
        echo "$STATUS" >> "$log"
        return 0
    fi
    if ((limit > left)); then
        limit=$left
    fi
    note "stage $name: start (limit $limit s)"
    local t0 rc=0
    t0=$(now)
    timeout -k 10 "$limit" "$@" >> "$log" 2>&1 < /dev/null || rc=$?
    SECS=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    if ((rc == 124 || rc == 137)); then
        STATUS="TIMEOUT (limit $limit s)"
    elif ((rc != 0)); then
        STATUS="FAILED (exit $rc)"
    else
        STATUS=ok
    fi
    printf '### end of stage %s: %s after %s s\n' "$name" "$STATUS" "$SECS" >> "$log"
    note "stage $name: $STATUS after $SECS s"
}

finish() {
    local name=$1 log=$2 figs
    figs=$("$PY" "$WORK/figures.py" "$name" "$log" 2>/dev/null) || figs="-"
    case $STATUS in ok | dry | SKIPPED*) ;; *) FAILURES=$((FAILURES + 1)) ;; esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$STATUS" "$SECS" "${figs:--}" >> "$ROWS"
    write_table
}

write_table() {
    {
        echo "## genossm GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        echo "GPU: ${GPU_NAME:-?}; commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null \
            || echo '?'); stage time $((SECONDS - T_START)) s of a budget of $BUDGET s"
        echo
        echo "| stage | status | seconds | key figures |"
        echo "| --- | --- | --- | --- |"
        local n s t f
        while IFS=$'\t' read -r n s t f; do
            echo "| $n | $s | $t | $f |"
        done < "$ROWS"
    } > "$TABLE"
}

# --- the stages ---------------------------------------------------------------------------------
note "output in $OUT_DIR, work files in $WORK; budget $BUDGET s"

if [[ -n ${GPU_CHECK_WHEELS:-} ]]; then
    stage wheels 60 "$LOG_ENV" "$PY" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --target "$WORK/site" "$GPU_CHECK_WHEELS"/*.whl
    finish wheels "$LOG_ENV"
    export PYTHONPATH="$REPO:$WORK/site${PYTHONPATH_BEFORE:+:$PYTHONPATH_BEFORE}"
fi

cat > "$WORK/env.py" <<'PYENV'
"""What the check runs on: the GPUs (their count goes to argv[1]) and the modules it needs."""
import importlib
import platform
import sys

import torch

n = torch.cuda.device_count()
names = [torch.cuda.get_device_name(i) for i in range(n)]
print(f"gpus: {n} x {names[0] if names else 'none'}"
      + (f" ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)" if n else ""))
with open(sys.argv[1], "w") as fh:
    fh.write(f"{n}\n{names[0] if names else 'none'}\n")
import triton  # noqa: E402

print(f"versions: python {platform.python_version()}, torch {torch.__version__} (CUDA "
      f"{torch.version.cuda}), triton {triton.__version__}")
missing = []
for name in ("numpy", "yaml", "tqdm", "safetensors", "zarr", "numcodecs", "isal", "pysam",
             "pytest", "hypothesis", "genossm", "genossm.cli", "genossm.train", "genossm.score"):
    try:
        importlib.import_module(name)
    except Exception as e:  # report every one
        missing.append(name)
        print(f"cannot import {name}: {type(e).__name__}: {e}")
try:
    importlib.import_module("xdist")
    print("pytest-xdist: yes")
except ImportError:
    print("pytest-xdist: no (the tests run in one process)")
if missing:
    print("missing: " + ", ".join(missing) + " (carry them as wheels: GPU_CHECK_WHEELS)")
sys.exit(1 if missing or not n else 0)
PYENV
stage env 60 "$LOG_ENV" "$PY" "$WORK/env.py" "$WORK/ngpu"
finish env "$LOG_ENV"
{ nvidia-smi -L 2>&1 || true; } >> "$LOG_ENV"

if [[ -n ${GPU_CHECK_NGPU:-} ]]; then
    NGPU=$GPU_CHECK_NGPU
elif [[ -s $WORK/ngpu ]]; then
    NGPU=$(head -n 1 "$WORK/ngpu")
    GPU_NAME=$(sed -n 2p "$WORK/ngpu")
else
    NGPU=$({ nvidia-smi -L 2>/dev/null || true; } | grep -c '^GPU ' || true)
fi
NGPU=${NGPU:-0}
GPU_NAME="${GPU_NAME:-?} x $NGPU"
write_table

stage tokenize 60 "$LOG_ENV" "$PY" -m genossm tokenize config/data/chr20_b37_1-2000000.fa.gz \
    -o "$STORE" -q
finish tokenize "$LOG_ENV"

# 1. the Triton scan tests on the GPU
XDIST=()
if [[ -z $DRY ]] && "$PY" -c "import xdist" 2>/dev/null; then
    XDIST=(-n 8)
fi
stage scan_tests 210 "$LOG_TESTS" env GENOSSM_TEST_DEVICE=cuda TRITON_INTERPRET=0 \
    "$PY" -m pytest tests/test_scan_triton.py tests/test_scan_s6_triton.py -q \
    -p no:cacheprovider --durations=10 ${XDIST[@]+"${XDIST[@]}"}
finish scan_tests "$LOG_TESTS"

# 2. bf16 autocast training, 50 steps (precision auto: bf16 autocast on CUDA)
stage train_bf16 120 "$LOG_TRAIN" "$PY" -m genossm train "$STORE" -o "$WORK/train_bf16" \
    --config config/models/cpu.yaml --max-steps 50 --device cuda -q
if [[ -f $WORK/train_bf16/metrics.jsonl ]]; then     # the figures come from these
    cat "$WORK/train_bf16/metrics.jsonl" >> "$LOG_TRAIN"
    grep -o '"precision": "[a-z0-9]*"' "$WORK/train_bf16/config.json" >> "$LOG_TRAIN" || true
fi
finish train_bf16 "$LOG_TRAIN"

# 3. scan speed and bandwidth: Mamba-2 (SSD) and Mamba-1 (S6)
stage scan_ssd 120 "$LOG_SCAN" "$PY" benchmarks/scan_gpu.py --log2-lengths 16 17 18 19 20 \
    --dtypes bf16 fp32 --reps 5
finish scan_ssd "$LOG_SCAN"
stage scan_s6 90 "$LOG_SCAN" "$PY" benchmarks/scan_gpu.py --s6 --s6-log2-lengths 17 20 \
    --dtypes bf16 fp32 --reps 3
finish scan_s6 "$LOG_SCAN"

# 4. the longest-context step: d_model 256 x 16 layers at 2^17 and 2^20 (steps // 10 timed)
stage long_context 150 "$LOG_LONG" "$PY" benchmarks/train.py --long --device cuda \
    --lengths 131072 1048576 --d-model 256 --n-layer 16 --steps 30
finish long_context "$LOG_LONG"

# 5. scoring variants/s (random-init d_model 128 x 4 model, the embedded indel calls)
stage score_4k 75 "$LOG_SCORE" "$PY" benchmarks/score.py --device cuda --window 4096 \
    --limit 100 --repeats 2
finish score_4k "$LOG_SCORE"
stage score_32k 75 "$LOG_SCORE" "$PY" benchmarks/score.py --device cuda --window 32768 \
    --limit 100 --repeats 1
finish score_32k "$LOG_SCORE"

# 6. context parallelism over the GPUs present
if ((NGPU >= 2)); then
    # cpu.yaml in fp32 (bf16 rounding would differ between the shard boundaries), every step
    # logged, no validation, no checkpoint but the last
    sed -e 's/^log_every:.*/log_every: 1/' -e 's/^eval_every:.*/eval_every: 0/' \
        -e 's/^checkpoint_every:.*/checkpoint_every: 100000/' config/models/cpu.yaml \
        > "$WORK/cp.yaml"
    echo "precision: fp32" >> "$WORK/cp.yaml"
    cat > "$WORK/cp_compare.py" <<'PYCOMPARE'
"""cp_compare.py SINGLE RANKS R: the training losses at every step and the final weights of the
context-parallel run equal those of the single-GPU run (<= 1e-4 relative)?"""
import json
import sys
from pathlib import Path

from safetensors.torch import load_file


def losses(d):
    lines = Path(d, "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r.get("split") == "train"}


single, ranks, r = sys.argv[1], sys.argv[2], sys.argv[3]
a, b = losses(single), losses(ranks)
loss_diff = max((abs(a[s] - b[s]) / abs(a[s]) for s in a if s in b), default=float("inf"))
wa, wb = load_file(f"{single}/model.safetensors"), load_file(f"{ranks}/model.safetensors")
w_diff = max(((wa[k].double() - wb[k].double()).abs().max()
              / wa[k].double().abs().max().clamp_min(1e-12)).item() for k in wa) \
    if wa.keys() == wb.keys() else float("inf")
equal = sorted(a) == sorted(b) and loss_diff <= 1e-4 and w_diff <= 1e-4
print(f"context parallel R = {r} vs one GPU: {len(a)} steps, max rel loss diff {loss_diff:.1e}, "
      f"max rel weight diff {w_diff:.1e}; equal: {'yes' if equal else 'no'}")
sys.exit(0 if equal else 1)
PYCOMPARE
    cp_args=("$STORE" --config "$WORK/cp.yaml" --max-steps 10 --seq-len 65536 --batch-size 2
             --device cuda -q)
    stage cp_single 90 "$LOG_CP" "$PY" -m genossm train -o "$WORK/cp_single" "${cp_args[@]}"
    finish cp_single "$LOG_CP"
    stage cp_ranks 150 "$LOG_CP" "$PY" -m torch.distributed.run --standalone \
        --nproc-per-node "$NGPU" -m genossm train -o "$WORK/cp_ranks" "${cp_args[@]}" \
        --context-parallel "$NGPU"
    finish cp_ranks "$LOG_CP"
    stage cp_compare 30 "$LOG_CP" "$PY" "$WORK/cp_compare.py" "$WORK/cp_single" \
        "$WORK/cp_ranks" "$NGPU"
    finish cp_compare "$LOG_CP"
else
    echo "context parallelism: $NGPU GPU(s); genossm/distributed.py gives rank r cuda:r, so" \
         "two ranks cannot share the one GPU: the CPU/gloo benchmark instead" >> "$LOG_CP"
    stage cp_cpu_gloo 120 "$LOG_CP" "$PY" benchmarks/context_parallel.py --length 65536 \
        --ranks 1 2 4
    finish cp_cpu_gloo "$LOG_CP"
fi

write_table
echo
cat "$TABLE"
if ((FAILURES)); then
    note "$FAILURES stage(s) failed or timed out; raw output in $OUT_DIR"
    exit 1
fi
note "all stages ok; raw output in $OUT_DIR"
