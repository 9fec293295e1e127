"""The example Caduceus training config (config/models/caduceus.yaml): read through
``genossm.train.load_train_config`` it is the Caduceus architecture (Mamba-1 mixers, BiMamba with
shared in/out projections, RCPS, masked LM), and a few training steps of it run through the
Python API (sizes reduced, the architecture kept)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from genossm.cli import main
from genossm.model import GenoSSM, load_model
from genossm.model.lm import reverse_complement_logits, reverse_complement_tokens
from genossm.model.mamba1 import Mamba1Mixer
from genossm.train import load_train_config, train
from helpers import LAMBDA, ROOT

CONFIG = ROOT / "config" / "models" / "caduceus.yaml"
ARCHITECTURE = {"mixer": "mamba1", "bidirectional": True, "bidirectional_sharing": "projections",
                "rc_equivariant": True, "rc_strand_swap": False, "objective": "mlm"}

pytestmark = pytest.mark.usefixtures("one_thread")


def check_caduceus_blocks(model: GenoSSM) -> None:
    """Every block: a forward and a reverse Mamba-1 mixer sharing in_proj and out_proj (the same
    Parameters) and nothing else."""
    for block in model.layers:
        fwd, rev = block.mixer, block.mixer_rev
        assert isinstance(fwd, Mamba1Mixer) and isinstance(rev, Mamba1Mixer)
        assert rev.in_proj.weight is fwd.in_proj.weight
        assert rev.out_proj.weight is fwd.out_proj.weight
        for name in ("conv1d.weight", "x_proj.weight", "dt_proj.weight", "A_log", "D"):
            assert rev.get_parameter(name) is not fwd.get_parameter(name), name


def test_the_example_is_the_caduceus_architecture():
    cfg = load_train_config(CONFIG)
    arch = cfg.model
    assert {k: getattr(arch, k) for k in ARCHITECTURE} == ARCHITECTURE
    assert arch.d_state == 16 and arch.expand == 2 and arch.d_conv == 4
    assert arch.scan_backend == "auto" and not arch.causal
    assert cfg.mlm_probability == 0.15 and not cfg.rc_augment   # as Caduceus-PS was trained

    torch.manual_seed(0)
    model = GenoSSM(arch).eval()
    check_caduceus_blocks(model)
    x = torch.randint(0, 5, (2, 48))
    with torch.no_grad():
        assert model.hidden_states(x).shape == (2, 48, 2 * arch.d_model)  # both strands
        logits = model(x)
        # RCPS: the reverse complement's logits are the logits reverse-complemented
        rc_logits = model(reverse_complement_tokens(x))
    torch.testing.assert_close(rc_logits, reverse_complement_logits(logits),
                               rtol=1e-5, atol=1e-5)


def test_a_few_training_steps_of_the_example(tmp_path):
    store = tmp_path / "lambda.zarr"
    assert main(["tokenize", str(LAMBDA), "-o", str(store), "-q"]) == 0
    cfg = load_train_config(CONFIG)
    small = dataclasses.replace(
        cfg, model=cfg.model.replace(d_model=16, n_layer=2), seq_len=64, batch_size=2,
        max_steps=3, warmup_steps=1, log_every=1, eval_every=3, eval_windows=2,
        checkpoint_every=2)
    summary = train([store], tmp_path / "caduceus", small, progress=False)
    assert summary["steps"] == 3 and summary["stopped"] == "max_steps"
    lines = (tmp_path / "caduceus" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]
    assert all(0 < r["loss"] < 10 for r in records)
    assert any(r["split"] == "val" for r in records)

    model = load_model(tmp_path / "caduceus")
    assert model.config == small.model
    assert {k: getattr(model.config, k) for k in ARCHITECTURE} == ARCHITECTURE
    check_caduceus_blocks(model)   # the shared projections are tied again after loading
