"""Training: schedules, loss falls on real DNA, exact resume, kill -9 during a checkpoint,
gradient accumulation, torchrun with two gloo processes, and the CLI's refusals."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from genossm import train as train_module
from genossm.cli import main
from genossm.errors import InputError
from genossm.model import GenoSSM, ModelDir, load_model, read_model_info
from genossm.train import TrainConfig, learning_rate, load_train_config, sequence_length, train
from genossm.train_config import (
    PRESETS,
    builtin_config,
    epoch_steps,
    fitted_max_steps,
    preset,
)
from helpers import CHR20, EX1_BAM, LAMBDA, ROOT

TINY = {"d_model": 32, "n_layer": 2, "d_state": 8, "headdim": 16, "chunk_size": 32}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train_stores")
    out = {}
    for name, source in (("chr20", CHR20), ("lambda", LAMBDA), ("reads", EX1_BAM)):
        out[name] = tmp / f"{name}.zarr"
        assert main(["tokenize", str(source), "-o", str(out[name]), "-q",
                     "--chunk-size", "65536"]) == 0
    return out


def config(**kw) -> TrainConfig:
    base = dict(model=dict(TINY), seq_len=128, batch_size=4, max_steps=8, warmup_steps=2,
                lr=3e-3, min_lr=3e-4, log_every=1, eval_every=4, eval_windows=4,
                checkpoint_every=3, split={"val_fraction": 0.05})
    base.update(kw)
    return TrainConfig.from_dict(base)


def losses(model_dir: Path) -> list[tuple]:
    """(split, step, loss) of every metrics line; the timing fields differ between runs."""
    lines = (model_dir / "metrics.jsonl").read_text().splitlines()
    return [(m["split"], m["step"], m["loss"]) for m in map(json.loads, lines)]


def assert_same_weights(a_dir: Path, b_dir: Path, **tolerance):
    a = load_file(a_dir / "model.safetensors")
    b = load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tolerance)


def test_schedules_by_hand():
    cfg = config(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110, seq_len=1024,
                 seq_len_start=256, seq_len_warmup_steps=100)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)          # (0+1)/10 of the peak
    assert learning_rate(cfg, 9) == pytest.approx(1e-3)
    assert learning_rate(cfg, 60) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half-way down
    assert learning_rate(cfg, 110) == pytest.approx(1e-4)
    assert sequence_length(cfg, 0) == 256
    assert sequence_length(cfg, 50) == 640                      # 256 + 768/2, a multiple of 64
    assert sequence_length(cfg, 51) == 704                      # 647.7 rounded up to 64s
    assert sequence_length(cfg, 100) == 1024


def test_schedule_fitted_to_the_time_budget_by_hand():
    cfg = config(max_steps="auto", max_time=100.0, batch_size=8, seq_len=512, eval_every=100,
                 eval_windows=16)
    assert cfg.max_steps is None and learning_rate(cfg, 50) == cfg.lr   # the peak until fitted
    # a step: 8 x 512 tokens at 1e-5 s each, plus a 100th of a validation pass over 16 x 512
    # tokens forward only (a third of the time); 97 % of the 100 s left
    per_step = 8 * 512 * 1e-5 + 16 * 512 * 1e-5 / 3 / 100
    assert fitted_max_steps(cfg, 50, 1e-5, 100.0) == 50 + int(97.0 / per_step)
    # growing windows: steps 0 and 1 take 128 and 192 tokens, then 256 each; at 1e-3 s a
    # token, 0.32 s and then 36 steps of 0.256 s fit in 9.7 s
    cfg = config(max_steps="auto", max_time=10.0, batch_size=1, seq_len=256, seq_len_start=128,
                 seq_len_warmup_steps=2, eval_every=0)
    assert fitted_max_steps(cfg, 0, 1e-3, 10.0) == 2 + 36
    assert fitted_max_steps(cfg, 0, 1.0, 10.0) == 1          # at least one more step
    with pytest.raises(ValueError, match="needs max_time"):
        config(max_steps="auto")
    # max_epochs: 2.5 passes over 1,000 bases in steps of 2 ranks x 4 windows: 128 and 192
    # tokens a window over the window warmup (2,560 tokens), then 256 (2,500 - 2,560 left)
    cfg = config(max_steps="auto", max_time=10.0, max_epochs=2.5, batch_size=4, seq_len=256,
                 seq_len_start=128, seq_len_warmup_steps=2)
    assert epoch_steps(cfg, 1000, world=2) == 2
    assert epoch_steps(cfg, 3000, world=2) == 2 + math.ceil((7500 - 2560) / (2 * 4 * 256))
    assert epoch_steps(config(), 1000) is None


def test_max_steps_auto_fits_the_run_to_max_time(stores, tmp_path):
    """The run fits max_steps to its budget once the step rate is known (after the warmup, at
    least 10 steps in) and again at 20, 40, ... steps, logs each fit, saves the last, and its
    learning rates follow the schedule of the fit in force."""
    cfg = config(max_steps="auto", max_time=2.0, eval_every=0, checkpoint_every=1000)
    summary = train([stores["lambda"]], tmp_path / "m", cfg, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").open()]
    fits = [m for m in lines if m["split"] == "schedule"]
    assert [m["step"] for m in fits] == [10 * 2**k for k in range(len(fits))] and fits
    saved = ModelDir(tmp_path / "m").train_config()
    assert saved["max_steps"] == fits[-1]["max_steps"] >= summary["steps"]
    assert summary["stopped"] in ("max_steps", "max_time")
    # step s (logged as s + 1) ran with the warmup's rate, then the peak until the first fit,
    # then each fit's schedule from the step after it
    def rate(step: int) -> float:
        in_force = [m["max_steps"] for m in fits if m["step"] <= step] or [None]
        return learning_rate(dataclasses.replace(cfg, max_steps=in_force[-1]), step)

    trained = [m for m in lines if m["split"] == "train"]
    assert [m["lr"] for m in trained] == pytest.approx([rate(m["step"] - 1) for m in trained])


def test_max_epochs_ends_a_run_on_a_small_genome(stores, tmp_path):
    """With max_epochs, the fitted max_steps holds at most that many passes over the training
    bases: 0.2 passes over lambda's 46,077 training bases in steps of 4 x 128 tokens are 18
    steps, however long the time budget."""
    cfg = config(max_steps="auto", max_time=600.0, max_epochs=0.2, eval_every=0)
    summary = train([stores["lambda"]], tmp_path / "m", cfg, progress=False)
    assert summary["train_bases"] == 46_077 and math.ceil(0.2 * 46_077 / 512) == 18
    assert summary["steps"] == 18 and summary["stopped"] == "max_steps"
    assert ModelDir(tmp_path / "m").train_config()["max_steps"] == 18


def test_builtin_defaults_by_device(stores, tmp_path, capsys):
    """Without --config, the CPU default (said in the first line); every preset builds."""
    assert builtin_config("cpu") == preset("cpu") and builtin_config("cuda") == preset("gpu-131k")
    assert sorted(p.stem for p in PRESETS.glob("*.yaml")) == ["cpu", "gpu-131k", "gpu-1m"]
    for path in PRESETS.glob("*.yaml"):
        cfg = load_train_config(path)
        assert cfg.max_steps is None and cfg.max_time > 0   # fitted to a time budget
        GenoSSM(cfg.model)
    assert main(["train", str(stores["lambda"]), "-o", str(tmp_path / "m"), "--max-steps", "2",
                 "--seq-len", "128", "--device", "cpu", "-q"]) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("genossm train: no --config: the built-in default cpu (mamba2")
    assert ModelDir(tmp_path / "m").train_config()["model"]["n_layer"] == \
        load_train_config(preset("cpu")).model.n_layer


def test_loss_falls_on_real_dna(stores, tmp_path):
    cfg = config(max_steps=60, seq_len=256, batch_size=8, log_every=5, eval_every=30,
                 eval_windows=8, checkpoint_every=100, warmup_steps=5)
    summary = train([stores["chr20"]], tmp_path / "m", cfg, progress=False)
    records = [json.loads(x) for x in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["split"] == "train")
    assert first["bits_per_base"] > 2.2                         # log2(6) = 2.58 at the start
    assert summary["bits_per_base"] < first["bits_per_base"] - 0.3
    assert summary["val_bits_per_base"] < 2.0                   # better than uniform over ACGT
    info = read_model_info(tmp_path / "m")
    split = info["training"]["split"]
    assert split["validation"] == [{"store": 0, "contig": "20", "start": 1_900_000,
                                    "end": 2_000_000}]
    assert info["training"]["steps"] == 60 and info["training"]["stopped"] == "max_steps"
    state = torch.load(tmp_path / "m" / "train_state.pt", weights_only=True)
    assert state["step"] == 60 and "optimizer" in state


def test_resume_equals_uninterrupted(stores, tmp_path, monkeypatch):
    cfg = config()
    train([stores["chr20"]], tmp_path / "whole", cfg, progress=False)

    calls = {"n": 0}
    real_loss = train_module.lm_loss

    def crash_at_step_5(*args, **kw):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 5:       # step 5 runs after the checkpoint at step 3
                raise KeyboardInterrupt
        return real_loss(*args, **kw)

    monkeypatch.setattr(train_module, "lm_loss", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train([stores["chr20"]], tmp_path / "resumed", cfg, progress=False)
    monkeypatch.setattr(train_module, "lm_loss", real_loss)
    assert torch.load(tmp_path / "resumed" / "train_state.pt", weights_only=True)["step"] == 3
    assert [s for _, s, _ in losses(tmp_path / "resumed")] == [1, 2, 3, 4, 4]  # live metrics

    train([stores["chr20"]], tmp_path / "resumed", cfg, resume=True, progress=False)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "whole")
    assert_same_weights(tmp_path / "whole", tmp_path / "resumed", rtol=0, atol=0)


def test_gradient_accumulation_equals_one_big_batch(stores, tmp_path):
    """Micro-batches 2 × 2 draw the same windows as one batch of 4 and are normalised by all
    the step's targets, so one step gives the same weights."""
    big = config(batch_size=4, grad_accum=1, max_steps=2, eval_every=0)
    small = config(batch_size=2, grad_accum=2, max_steps=2, eval_every=0)
    train([stores["chr20"]], tmp_path / "big", big, progress=False)
    train([stores["chr20"]], tmp_path / "small", small, progress=False)
    assert [x[:2] for x in losses(tmp_path / "big")] == [x[:2] for x in losses(tmp_path / "small")]
    assert [x[2] for x in losses(tmp_path / "big")] == \
        pytest.approx([x[2] for x in losses(tmp_path / "small")], rel=1e-5)
    assert_same_weights(tmp_path / "big", tmp_path / "small", rtol=1e-4, atol=1e-6)


def test_dataloader_workers_and_reads_do_not_change_the_run(stores, tmp_path):
    """Windows come from contigs and from BAM reads; two DataLoader worker processes (each
    opening the Zarr stores itself) give the same run as none."""
    cfg = dict(max_steps=3, eval_every=0, split={"val_fraction": 0.0})
    stores_used = [stores["lambda"], stores["reads"]]
    train(stores_used, tmp_path / "w0", config(num_workers=0, **cfg), progress=False)
    train(stores_used, tmp_path / "w2", config(num_workers=2, **cfg), progress=False)
    assert losses(tmp_path / "w0") == losses(tmp_path / "w2")
    assert_same_weights(tmp_path / "w0", tmp_path / "w2", rtol=0, atol=0)


def test_max_time_and_mlm(stores, tmp_path):
    cfg = config(model={**TINY, "objective": "mlm", "bidirectional": True}, max_time=1e-3,
                 max_steps=50)
    summary = train([stores["chr20"]], tmp_path / "mlm", cfg, progress=False)
    assert summary["stopped"] == "max_time" and summary["steps"] == 1
    model = load_model(tmp_path / "mlm")
    assert model.config.objective == "mlm" and model.config.bidirectional


def test_kill_9_during_checkpoints_keeps_the_last_good_one(stores, tmp_path):
    """SIGKILL a run that checkpoints every step, at several moments: the directory always
    holds a whole, loadable checkpoint, and --resume finishes the run."""
    out = tmp_path / "killed"
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(yaml.safe_dump({**config(max_steps=60, checkpoint_every=1,
                                                 eval_every=0).to_dict()}))
    cmd = [sys.executable, "-m", "genossm", "train", str(stores["lambda"]), "-o", str(out),
           "--config", str(cfg_file), "-q", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for delay in (0.05, 0.13, 0.21):
        proc = subprocess.Popen(cmd + (["--resume"] if out.exists() else []), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (out / "train_state.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ModelDir(out).recover()
        model = load_model(out)                        # whole: loads with matching weights
        state = torch.load(out / "train_state.pt", weights_only=True)
        info = read_model_info(out)
        assert info["training"]["steps"] == state["step"] >= 1
        assert model.config.d_model == TINY["d_model"]
    assert not list(tmp_path.glob(".killed.genossm-*"))
    without_config = [a for a in cmd if a not in ("--config", str(cfg_file))]
    done = subprocess.run(without_config + ["--resume"], env=env,  # the run's own config
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert torch.load(out / "train_state.pt", weights_only=True)["step"] == 60
    steps = [s for split, s, _ in losses(out) if split == "train"]
    assert steps == list(range(1, 61))                  # no step lost or logged twice


def test_metrics_cut_short_by_a_kill_are_read_without_the_partial_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"split": "train", "step": 1}\n{"split": "tr')
    assert ModelDir(tmp_path).read_metrics() == [{"split": "train", "step": 1}]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(InputError, match="line 2"):
        ModelDir(tmp_path).read_metrics()


def test_recover_between_the_two_renames(tmp_path):
    """A process killed between the swap's two renames left the old checkpoint moved aside and
    the new one beside it (here: a process that made them and exited): recovery puts the old
    one back and removes the new one."""
    out = tmp_path / "m"
    killed = ("import sys; from pathlib import Path; from genossm.fileio import temporary_sibling\n"
              "out = Path(sys.argv[1])\n"
              "old = temporary_sibling(out, 'old'); old.mkdir()\n"
              "(old / 'config.json').write_text('{}')\n"
              "temporary_sibling(out, 'new').mkdir()\n")
    subprocess.run([sys.executable, "-c", killed, str(out)], check=True)
    old, new = sorted(tmp_path.glob(".m.genossm-*"), key=lambda p: "-new" in p.name)
    ModelDir(out).recover()
    assert (out / "config.json").exists() and not old.exists()
    assert not new.exists()


def test_torchrun_two_gloo_processes_equal_one_process(stores, tmp_path):
    """Two ranks × 2 windows draw the same windows as one process × 4 (lambda has no N, so
    every rank has as many targets and DDP's mean equals the global mean)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(yaml.safe_dump(config(batch_size=2, max_steps=3,
                                              eval_every=0).to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "genossm", "train",
         str(stores["lambda"]), "-o", str(tmp_path / "ddp"), "--config", str(cfg_file), "-q",
         "--device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("genossm train: wrote") == 1            # rank 0 reports
    assert read_model_info(tmp_path / "ddp")["training"]["world_size"] == 2
    single = config(batch_size=4, max_steps=3, eval_every=0)
    train([stores["lambda"]], tmp_path / "single", single, progress=False)
    assert [x[2] for x in losses(tmp_path / "ddp")] == \
        pytest.approx([x[2] for x in losses(tmp_path / "single")], rel=1e-5)
    assert_same_weights(tmp_path / "ddp", tmp_path / "single", rtol=1e-4, atol=1e-5)


def test_context_parallel_two_ranks_equal_one_process(stores, tmp_path):
    """torchrun with two processes splitting every window between them (--context-parallel 2:
    one sequence, two shards, the scan's state and the conv halo crossing between the ranks)
    trains like one process on whole windows: the same loss at every step, the same validation
    loss and the same weights. Masked LM with gradient checkpointing in segments: the masks are
    drawn per sequence, not per rank."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    cfg = config(batch_size=2, max_steps=3, eval_every=3,
                 model={**TINY, "objective": "mlm", "gradient_checkpointing": True,
                        "checkpoint_segment_length": 16})
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "genossm", "train",
         str(stores["lambda"]), "-o", str(tmp_path / "cp"), "--config", str(cfg_file), "-q",
         "--device", "cpu", "--context-parallel", "2"], env=env, capture_output=True,
        text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    train([stores["lambda"]], tmp_path / "single", cfg, progress=False)
    assert [x[:2] for x in losses(tmp_path / "cp")] == [("train", 1), ("train", 2),
                                                         ("train", 3), ("val", 3)]
    assert [x[2] for x in losses(tmp_path / "cp")] == \
        pytest.approx([x[2] for x in losses(tmp_path / "single")], rel=1e-5)
    assert_same_weights(tmp_path / "cp", tmp_path / "single", rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, blocks", [("mamba2", "mmmm"), ("mamba1", "1111"),
                                          ("s4d", "ssss"), ("hybrid", "mmmA")])
def test_example_configs_build_their_architecture_and_train(name, blocks, stores, tmp_path):
    """config/models/{mamba2,mamba1,s4d,hybrid}.yaml (the four of BENCHMARKS.md's equal-time
    comparison): the blocks each names, about the same size, and two training steps on real
    DNA through the command line."""
    path = ROOT / "config" / "models" / f"{name}.yaml"
    cfg = load_train_config(path)
    mark = {"Mamba2Mixer": "m", "Mamba1Mixer": "1", "S4DMixer": "s", "AttentionMixer": "A"}
    model = GenoSSM(cfg.model)
    assert "".join(mark[type(b.mixer).__name__] for b in model.layers) == blocks
    assert 100_000 <= model.num_parameters() <= 135_000
    assert main(["train", str(stores["lambda"]), "-o", str(tmp_path / name), "--config",
                 str(path), "--max-steps", "2", "--seq-len", "128", "-q", "--device",
                 "cpu"]) == 0
    assert [x[:2] for x in losses(tmp_path / name) if x[0] == "train"][-1] == ("train", 2)


def test_cli_refusals(stores, tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / "something").write_text("x")
    assert main(["train", str(stores["lambda"]), "-o", str(out), "--max-steps", "1"]) == 2
    assert "output exists; use --force" in capsys.readouterr().err
    assert main(["train", str(stores["lambda"]), "-o", str(out), "--max-steps", "1",
                 "--force"]) == 2                        # --force replaces only a model directory
    assert "not a genossm model directory" in capsys.readouterr().err
    assert (out / "something").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {d_model: 32}\nlearning_rate: 0.1\n")
    assert main(["train", str(stores["lambda"]), "-o", str(tmp_path / "n"), "--config",
                 str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"genossm: error: {bad}") and "learning_rate" in err
    assert "\n" not in err and not (tmp_path / "n").exists()
    assert main(["train", str(tmp_path / "missing.zarr"), "-o", str(tmp_path / "n")]) == 2
    assert "missing.zarr" in capsys.readouterr().err and not (tmp_path / "n").exists()
