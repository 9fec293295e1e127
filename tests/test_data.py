"""Training windows: held-out regions never sampled, the N filter, determinism across workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genossm import alphabet
from genossm.cli import main
from genossm.data import SplitConfig, WindowDataset, lm_batch, split_regions
from genossm.errors import InputError
from genossm.regions import Region
from genossm.store import TokenStore
from helpers import CHR20, EX1_BAM, EX1_FA, LAMBDA, fasta_records


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stores")
    paths = []
    for name, inputs in (("chr20", [CHR20]), ("small", [LAMBDA, EX1_FA, EX1_BAM])):
        out = tmp / f"{name}.zarr"
        assert main(["tokenize", *map(str, inputs), "-o", str(out), "-q",
                     "--chunk-size", "65536"]) == 0
        paths.append(out)
    return [TokenStore(p) for p in paths]


def test_split_by_contig_bed_and_fraction(stores, tmp_path):
    bed = tmp_path / "val.bed"
    bed.write_text("# held out\n20\t1000000\t1100000\n20\t1050000\t1200000\nchr1\t0\t500\n")
    split = SplitConfig(val_contigs=["chr2"], val_bed=str(bed), val_fraction=0.1)
    train, val = split_regions(stores, split)
    val_by = {(v.contig, v.start, v.end) for v in val}
    assert ("20", 1_000_000, 1_200_000) in val_by           # overlapping BED lines merged
    assert ("20", 1_800_000, 2_000_000) in val_by           # the last 10 %
    assert ("chr2", 0, 1584) in val_by                      # a whole contig
    assert ("chr1", 0, 500) in val_by and ("chr1", 1417, 1575) in val_by
    # train and validation tile every contig exactly, without overlap
    for store_index, store in enumerate(stores):
        for info in store.contigs:
            covered = np.zeros(info.length, np.int8)
            for iv in train + val:
                if iv.store == store_index and iv.contig == info.name:
                    covered[iv.start:iv.end] += 1
            assert (covered == 1).all(), info.name


def test_windows_never_touch_validation(stores):
    train, val = split_regions(stores[:1], SplitConfig(val_fraction=0.25))
    ds = WindowDataset(stores[:1], train, 512, num_samples=400, seed=3, max_n_fraction=1.0,
                       rc_augment=False)
    seq = fasta_records(CHR20)[0][1].upper()
    held = np.zeros(len(seq), bool)
    for iv in val:
        held[iv.start:iv.end] = True
    for i in range(len(ds)):
        text = alphabet.decode(ds[i]["tokens"].numpy().astype(np.uint8))
        start = _find(seq, text)  # locate the window by its content
        assert start is not None and not held[start:start + 512].any()


def _find(seq: str, window: str):
    """The window's start in seq when its content is unambiguous; windows of all-N are rare
    here and skipped (returned as a start inside training)."""
    if set(window) == {"N"}:
        return 0
    pos = seq.find(window)
    return None if pos < 0 else pos


def test_n_filter_and_loss_mask(stores):
    train = [Region("20", 59_000, 62_000, store=0)]   # straddles the end of the telomeric N run
    strict = WindowDataset(stores[:1], train, 1000, num_samples=50, seed=0, max_n_fraction=0.05)
    for i in range(len(strict)):
        item = strict[i]
        assert (item["tokens"] == alphabet.N).float().mean() <= 0.05
        assert torch.equal(item["loss_mask"], item["tokens"] != alphabet.N)
    none = WindowDataset(stores[:1], [Region("20", 0, 50_000, store=0)], 1000, num_samples=1,
                         max_n_fraction=0.1, max_tries=20)
    with pytest.raises(InputError, match="no window with at most 10% N"):
        none[0]


def test_an_input_error_in_a_worker_is_the_same_one_line(stores):
    """The DataLoader raises a worker's error again in the main process, built from its type
    and its traceback text: an InputError there is still one line, the worker's."""
    none = WindowDataset(stores[:1], [Region("20", 0, 50_000, store=0)], 1000, num_samples=2,
                         max_n_fraction=0.1, max_tries=20, source="t.yaml")
    loader = torch.utils.data.DataLoader(none, batch_size=1, num_workers=1,
                                         multiprocessing_context="fork")
    with pytest.raises(InputError) as caught:
        next(iter(loader))
    assert str(caught.value) == ("t.yaml: no window with at most 10% N found in 20 draws; "
                                 "lower seq_len or raise max_n_fraction")


def test_reads_are_sampled_and_padded(stores):
    store = stores[1]
    ds = WindowDataset([store], [], 200, num_samples=50, seed=1, rc_augment=False)
    reads = {alphabet.decode(c) for _, c, _ in store.iter_reads()}
    for i in range(len(ds)):
        item = ds[i]
        n_valid = int(item["loss_mask"].sum())
        text = alphabet.decode(item["tokens"][:n_valid].numpy().astype(np.uint8))
        assert text in reads
        assert (item["tokens"][n_valid:] == alphabet.N).all()


def test_rc_augmentation_is_half_and_exact(stores):
    train, _ = split_regions(stores[:1], SplitConfig())
    plain = WindowDataset(stores[:1], train, 300, num_samples=200, seed=7, rc_augment=False)
    aug = WindowDataset(stores[:1], train, 300, num_samples=200, seed=7, rc_augment=True)
    flipped = 0
    for i in range(200):
        a, b = plain[i]["tokens"].numpy(), aug[i]["tokens"].numpy()
        if not np.array_equal(a, b):
            assert np.array_equal(alphabet.reverse_complement(a.astype(np.uint8)), b)
            flipped += 1
    assert 70 < flipped < 130


def test_windows_are_stored_codes_and_lm_batch_widens_them(stores):
    """Windows carry the store's uint8 codes (an eighth of int64's bytes to collate and copy
    to the device); lm_batch gives the model int64 inputs and targets of the same values."""
    train, _ = split_regions(stores[:1], SplitConfig())
    ds = WindowDataset(stores[:1], train, 256, num_samples=8, seed=5)
    batch = torch.utils.data.default_collate([ds[i] for i in range(8)])
    assert batch["tokens"].dtype == torch.uint8 and batch["loss_mask"].dtype == torch.bool
    wide = batch["tokens"].long()
    inputs, targets, weights = lm_batch(batch["tokens"], batch["loss_mask"], "clm", 0.15)
    assert inputs.dtype == targets.dtype == torch.int64
    assert torch.equal(inputs, wide[:, :-1]) and torch.equal(targets, wide[:, 1:])
    assert torch.equal(weights, batch["loss_mask"][:, 1:])
    inputs, targets, chosen = lm_batch(batch["tokens"], batch["loss_mask"], "mlm", 0.15,
                                       torch.Generator().manual_seed(0))
    assert inputs.dtype == targets.dtype == torch.int64 and torch.equal(targets, wide)
    assert torch.equal(inputs[~chosen], wide[~chosen])
    assert (inputs[chosen] == alphabet.MASK).all() and chosen.any()


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_same_stream_for_any_worker_count(stores, workers):
    train, _ = split_regions(stores, SplitConfig(val_fraction=0.1))
    ds = WindowDataset(stores, train, 128, num_samples=48, seed=11)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=workers,
                                         multiprocessing_context="fork" if workers else None)
    got = torch.cat([b["tokens"] for b in loader])
    expected = torch.stack([ds[i]["tokens"] for i in range(48)])
    assert torch.equal(got, expected)
    other = WindowDataset(stores, train, 128, num_samples=48, seed=12)
    assert not torch.equal(expected, torch.stack([other[i]["tokens"] for i in range(48)]))


def test_bad_split_inputs(stores, tmp_path):
    with pytest.raises(InputError, match=r"^t.yaml: split.val_contigs: chrX not in any store$"):
        split_regions(stores, SplitConfig(val_contigs=["chrX"]), source="t.yaml")
    bed = tmp_path / "bad.bed"
    bed.write_text("20\t10\t5\n")
    with pytest.raises(InputError, match=r"bad.bed: line 1: need 0 <= start < end"):
        split_regions(stores, SplitConfig(val_bed=str(bed)))
    bed.write_text("20\t10\t3000000\n")
    with pytest.raises(InputError, match="runs past the contig's end"):
        split_regions(stores, SplitConfig(val_bed=str(bed)))
