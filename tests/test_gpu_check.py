"""benchmarks/gpu_check.sh, the prepared GPU check, checked without a GPU: the script parses
(``bash -n``); its dry run (GPU_CHECK_DRY_RUN=1, every stage's command printed, none run) lists
the stages in issue 15's order for one GPU and for two; every command names files that exist and
options that its program's ``--help`` lists; the helper programs it writes run (the environment
report, the context-parallel comparison, its config); and its figures parser reads the key
figures out of each stage's output, in the formats the benchmarks print."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import scan_harness

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STAGES = ["env", "tokenize", "scan_tests", "train_bf16", "scan_ssd", "scan_s6", "long_context",
          "score_4k", "score_32k"]


def test_script_parses():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    """{GPUs: (commands as {stage: argv}, work directory, output directory)} of dry runs with
    one GPU and with two."""
    runs = {}
    for gpus in (1, 2):
        base = tmp_path_factory.mktemp(f"dry{gpus}")
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "GPU_CHECK_DRY_RUN": "1",
               "GPU_CHECK_NGPU": str(gpus), "GPU_CHECK_WORK": str(base / "work"),
               "PYTHON": sys.executable, "HOME": str(base)}
        proc = subprocess.run(["bash", str(SCRIPT), str(base / "out")], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        commands = {}
        for line in proc.stdout.splitlines():
            if line.startswith("DRY\t"):
                _, name, limit, *argv = line.split("\t")
                assert int(limit) > 0
                commands[name] = argv
        runs[gpus] = commands, base / "work", base / "out"
    return runs


def test_stages_in_order_and_the_table(dry):
    one, _, out = dry[1]
    assert list(one) == [*STAGES, "cp_cpu_gloo"]
    two, _, _ = dry[2]
    assert list(two) == [*STAGES, "cp_single", "cp_ranks", "cp_compare"]
    # at most 8 files, all of them at the top: what the device tool brings back from $OUT
    files = sorted(p.name for p in out.rglob("*"))
    assert len(files) <= 8 and all(p.parent == out for p in out.rglob("*")), files
    rows = [line for line in (out / "table.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith(("| stage", "| ---"))]
    assert [r.split("|")[1].strip() for r in rows] == list(one)


def test_the_tests_run_on_the_gpu(dry):
    argv = dry[1][0]["scan_tests"]
    assert argv[:3] == ["env", "GENOSSM_TEST_DEVICE=cuda", "TRITON_INTERPRET=0"]
    assert "tests/test_scan_triton.py" in argv and "tests/test_scan_s6_triton.py" in argv


def _program(argv):
    """(the command that prints the help of ``argv``'s program, the options ``argv`` gives it,
    the rest when it launches another: torchrun's ``-m genossm ...``)."""
    argv = [a for a in argv if not re.fullmatch(r"[A-Z_]+=.*", a) and a != "env"]
    assert argv[0] == sys.executable
    if argv[1] == "-m" and argv[2] == "genossm":
        prog, args, rest = [sys.executable, "-m", "genossm", argv[3]], argv[4:], None
    elif argv[1] == "-m" and argv[2] == "torch.distributed.run":
        cut = argv.index("-m", 3)
        prog, args, rest = argv[:3], argv[3:cut + 1], [sys.executable, *argv[cut:]]
    elif argv[1] == "-m" and argv[2] == "pytest":
        prog, args, rest = None, [], None
    else:
        prog, args, rest = argv[:2], argv[2:], None
    return prog, [a for a in args if re.fullmatch(r"--?[a-z][\w-]*", a)], rest


def test_commands_name_files_and_options_that_exist(dry):
    commands = [argv for runs in dry.values() for argv in runs[0].values()]
    wanted = {}                        # help command -> options, over every stage
    for argv in commands:
        for arg in argv:                   # repository files named relative to the root
            if re.match(r"(benchmarks|tests|config)/", arg):
                assert (ROOT / arg).is_file(), arg
        while argv:
            prog, options, argv = _program(argv)
            if prog is None:
                continue
            if Path(prog[1]).is_absolute():  # a helper it writes to its work directory
                assert Path(prog[1]).is_file(), prog
                continue
            wanted.setdefault(tuple(prog), set()).update(options)
    assert len(wanted) >= 6, wanted
    procs = {prog: subprocess.Popen([*prog, "--help"], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for prog in wanted}
    for prog, proc in procs.items():
        text = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, (prog, text[-2000:])
        for option in wanted[prog]:
            assert re.search(rf"(^|[\s,\[]){re.escape(option)}([\s,=\]]|$)", text, re.M), \
                (prog, option)
    assert "--context-parallel" in wanted[(sys.executable, "-m", "genossm", "train")]
    # the scan benchmark's arguments parse in full (its choices too), without a GPU
    bench = scan_harness.load_gpu_benchmark()
    for argv in commands:
        if "benchmarks/scan_gpu.py" in argv:
            bench._parse(argv[argv.index("benchmarks/scan_gpu.py") + 1:])


def test_context_parallel_config_and_comparison(dry):
    import torch
    from safetensors.torch import save_file

    from genossm.train import load_train_config

    _, work, _ = dry[2]
    cfg = load_train_config(work / "cp.yaml")
    small = load_train_config(ROOT / "config" / "models" / "cpu.yaml")
    assert (cfg.precision, cfg.log_every, cfg.eval_every) == ("fp32", 1, 0)
    assert cfg.model == small.model and cfg.checkpoint_every > 10

    def model_dir(name, losses, weight):
        d = work / name
        d.mkdir()
        (d / "metrics.jsonl").write_text("".join(
            json.dumps({"split": "train", "step": i + 1, "loss": v}) + "\n"
            for i, v in enumerate(losses)))
        save_file({"w": torch.full((3,), weight)}, str(d / "model.safetensors"))
        return str(d)

    single = model_dir("single", [1.5, 1.4], 2.0)
    same = model_dir("same", [1.5 * (1 + 1e-6), 1.4], 2.0)
    off = model_dir("off", [1.5, 1.41], 2.0)
    for other, code, word in ((same, 0, "yes"), (off, 1, "no")):
        proc = subprocess.run([sys.executable, str(work / "cp_compare.py"), single, other, "2"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == code, proc.stderr
        assert proc.stdout.startswith("context parallel R = 2") and f"equal: {word}" in \
            proc.stdout


def test_environment_report(dry, tmp_path):
    """env.py on this machine: no GPU (exit 1), but every module the stages import is here."""
    _, work, _ = dry[1]
    proc = subprocess.run([sys.executable, str(work / "env.py"), str(tmp_path / "ngpu")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert "versions: python" in proc.stdout, proc.stdout + proc.stderr
    assert "missing:" not in proc.stdout, proc.stdout
    gpus = int((tmp_path / "ngpu").read_text().split()[0])
    assert proc.returncode == (0 if gpus else 1)


# --- the figures parser, on the output formats of the stages -------------------------------

def _header(*names):
    return "| " + " | ".join(names) + " |"


SSD_HEADER = _header("dtype", "length", "pass", "triton ms", "torch ms", "torch/triton",
                     "triton BW/copy", "triton peak MiB", "torch peak MiB", "max rel diff")
S6_HEADER = _header("dtype", "length", "segments", "fwd ms", "fwd+bwd ms", "fwd+bwd Mtok/s",
                    "peak MiB", "1 segment fwd+bwd ms", "diff vs 1 segment",
                    "mamba_ssm fwd+bwd ms", "diff vs mamba_ssm")
CP_HEADER = _header("R", "shard", "loss (summed over ranks)", "wall s (max rank)",
                    "peak RSS above baseline per rank, MiB (max)", "ratio to R = 1",
                    "sent + received per rank per step")
SAMPLES = {
    "env": """gpus: 1 x NVIDIA H200 (140 GiB)
versions: python 3.12.3, torch 2.11.0 (CUDA 13.0), triton 3.6.0
pytest-xdist: yes""",
    "tokenize": "genossm tokenize: wrote /tmp/w/chr20.zarr: 1 contigs with 2,000,000 bases "
                "(60,000 N, 0 of them from IUPAC codes)",
    "scan_tests": """........s..........................s.......
=========================== short test summary info ============================
SKIPPED [1] tests/test_scan_triton.py:124: interpreter only
FAILED tests/test_scan_triton.py::test_bfloat16_inputs - AssertionError: dy
1 failed, 31 passed, 2 skipped in 81.20s (0:01:21)""",
    "train_bf16": "genossm train: wrote /tmp/w/train_bf16: 56,216 parameters, 50 steps, 204,800 "
                  "tokens in 9 s (stopped by max_steps); train 1.9 bits/base\n" + "\n".join(
                      json.dumps({"split": "train", "step": s, "tokens": 4096 * s,
                                  "loss": 1.4 - s / 1000, "bits_per_base": 2.0 - s / 1000,
                                  "tokens_per_s": 4096 * (2 if s == 10 else 40),
                                  "elapsed_s": s / 10}) for s in (10, 20, 30, 40, 50))
                  + "\n" + json.dumps({"split": "val", "step": 50, "bits_per_base": 1.95})
                  + '\n"precision": "auto"',
    "scan_ssd": """device: NVIDIA H200; copy bandwidth 4300 GB/s; fp32 dot precision: ieee
batch 1, heads 2 x headdim 64, groups 1, dstate 64, chunk 256; min of 5 runs
""" + SSD_HEADER + """
|---|---|---|---|---|---|---|---|---|---|
| bf16 | 2^20 | fwd | 0.40 | 2.00 | 5.00 | 0.61 |  |  |  |
| bf16 | 2^20 | fwd+bwd | 1.50 | 9.00 | 6.00 | 0.48 | 900 | 4000 | 8.4e-03 |
| fp32 | 2^20 | fwd | 0.90 | 3.00 | 3.33 | 0.55 |  |  |  |
| fp32 | 2^20 | fwd+bwd | OOM | 12.00 | - | - |  | 5000 | - |""",
    "scan_s6": """Mamba-1 (S6): batch 1, 512 channels (headdim 1) x 16 states, checkpoint every 256
""" + S6_HEADER + """
|---|---|---|---|---|---|---|---|---|---|---|
| bf16 | 2^17 | 4 | 0.50 | 1.50 | 87.38 | 300 | 3.00 | 3.9e-07 | not installed | - |
| fp32 | 2^20 | 1 | OOM | | | | | | | |""",
    "long_context": """long context: d_model 256 x 16 layers (6,000,000 parameters), cuda
L =   131,072:  1,200,000 tokens/s, peak GPU memory 3.10 GiB
L = 1,048,576:  1,100,000 tokens/s, peak GPU memory 24.50 GiB
tokens/s at L = 1,048,576 / at L = 131,072: 0.92""",
    "score_4k": """100 records, 105 scored alt alleles, window 4096, batch 32, 16 threads, \
device cuda
  prefix reuse      2.00 s     50.00 variants/s     52.50 alleles/s  (runs: 2.00 s)
  naive             2.60 s     38.46 variants/s     40.38 alleles/s  (runs: 2.60 s)
ratio reuse / naive (speed-up): 1.30x (goal >= 1.8x); bases run naive / with reuse: 1.34""",
    "cp_cpu_gloo": CP_HEADER + """
| --- | --- | --- | --- | --- | --- | --- |
| 1 | 65,536 | 1.781314 | 14.2 | 871 | 1.00 | 0.00 MiB |
| 2 | 32,768 | 1.781315 | 13.5 | 792 | 0.91 | 0.56 MiB |""",
    "cp_compare": "context parallel R = 2 vs one GPU: 10 steps, max rel loss diff 3.0e-07, max "
                  "rel weight diff 1.0e-06; equal: yes",
}
EXPECTED = {
    "env": ["gpus: 1 x NVIDIA H200", "torch 2.11.0"],
    "tokenize": ["2,000,000 bases"],
    "scan_tests": ["1 failed, 31 passed, 2 skipped", "failed: test_bfloat16_inputs"],
    "train_bf16": ["50 steps", "40.0 steps/s (median", "10.0 steps/s overall",
                   "final train loss 1.3500",
                   "val 1.950 bits/base", "precision auto (bf16 autocast on CUDA)"],
    "scan_ssd": ["copy 4300 GB/s", "best triton BW/copy 0.61 (bf16 2^20 fwd)",
                 "bf16 2^20 fwd+bwd triton 1.50 ms, torch/triton 6.00x", "8.4e-03", "1 OOM"],
    "scan_s6": ["bf16 2^17: 87.38 Mtok/s", "fp32 2^20: OOM", "3.9e-07"],
    "long_context": ["2^17: 1,200,000 tokens/s, 3.10 GiB", "2^20: 1,100,000 tokens/s, 24.50 GiB",
                     "0.92"],
    "score_4k": ["window 4096", "prefix reuse 50.00 variants/s", "naive 38.46", "1.30x"],
    "cp_cpu_gloo": ["equal to R = 1: yes", "R 2: peak RSS/rank 792 MiB (x0.91)"],
    "cp_compare": ["equal: yes"],
}


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """The figures parser the script writes out (its heredoc), and a log of every sample."""
    text = SCRIPT.read_text()
    body = re.search(r"<<'PYFIGURES'\n(.*?)\nPYFIGURES\n", text, re.S).group(1)
    base = tmp_path_factory.mktemp("figures")
    (base / "figures.py").write_text(body)
    log = "".join(f"### stage {name} (limit 60 s): cmd\n{sample}\n### end of stage {name}: ok\n"
                  for name, sample in SAMPLES.items())
    log += "### stage train_bf16x (limit 1 s): cmd\nnot this one\n"
    log += "### stage score_32k (limit 1 s): cmd\nTraceback (most recent call last):\n" \
           "RuntimeError: CUDA error: out of memory\n"
    (base / "all.log").write_text(log)
    return base


def _figures(base, stage):
    proc = subprocess.run([sys.executable, str(base / "figures.py"), stage, str(base / "all.log")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("stage", list(EXPECTED))
def test_figures_of_each_stage(figures, stage):
    got = _figures(figures, stage)
    assert "|" not in got and "\n" not in got
    for part in EXPECTED[stage]:
        assert part in got, (part, got)


def test_figures_of_a_failed_stage_and_an_unknown_one(figures):
    assert _figures(figures, "score_32k") == "last line: RuntimeError: CUDA error: out of memory"
    assert _figures(figures, "cp_ranks") == "-"
