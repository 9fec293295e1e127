"""Output staging (genossm.fileio): every output is renamed into place whole or not at all, and
what a killed writer left behind is recognised and cleaned up by the next one."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from genossm.errors import InputError
from genossm.fileio import (
    JSON_MAX_BYTES,
    StagedOutputs,
    atomic_write,
    check_distinct,
    created_by_genossm,
    json_object,
    recover,
    starts_with_row,
    temporary_sibling,
)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _named_for(path, tag, pid):
    """A temporary sibling of ``path`` as process ``pid`` would have named it."""
    name = temporary_sibling(path, tag).name.split(".")
    name[-2] = str(pid)
    return path.with_name(".".join(name))


def test_outputs_appear_together_in_staging_order_with_the_umask_mode(tmp_path):
    table, mark = tmp_path / "out.tsv", tmp_path / "out.json"
    with StagedOutputs() as staged:
        for path in (table, mark):
            staged.path(path).write_text(path.name)
        assert not table.exists() and not mark.exists()
    assert table.read_text() == "out.tsv" and mark.read_text() == "out.json"
    assert table.stat().st_mtime_ns <= mark.stat().st_mtime_ns
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(mark.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.tsv"]


def test_a_failure_removes_every_temporary_and_keeps_the_old_outputs(tmp_path):
    old = tmp_path / "old.txt"
    old.write_text("old")
    with pytest.raises(RuntimeError), StagedOutputs() as staged:
        staged.path(old).write_text("new")
        (staged.path(tmp_path / "store.zarr") / "chunks").mkdir(parents=True)
        raise RuntimeError("failed half way")
    assert old.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt"]


def test_atomic_write_replaces_an_old_file_whole(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("old")
    atomic_write(path, lambda tmp: open(tmp, "w").write("new"))
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_recover_puts_back_an_old_output_that_a_kill_left_aside(tmp_path):
    """A writer killed between its two renames has moved the old output aside and not yet put
    the new one in place: the old one comes back, the half-made new one goes."""
    out = tmp_path / "model"
    dead = _dead_pid()
    aside, half = _named_for(out, "old", dead), _named_for(out, "new", dead)
    aside.mkdir()
    (aside / "config.json").write_text("old")
    half.mkdir()
    recover(out)
    assert (out / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_recover_leaves_a_running_writers_temporaries_alone(tmp_path):
    out = tmp_path / "out.vcf.gz"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as proc:
        try:
            live = _named_for(out, "new", proc.pid)
            live.write_text("being written")
            dead = _named_for(out, "new", _dead_pid())
            dead.write_text("left by a kill")
            recover(out)
            assert live.exists() and not dead.exists()
        finally:
            proc.kill()


def test_recover_puts_back_an_old_output_moved_aside_on_another_host(tmp_path):
    """A job killed between the two renames on one node and requeued on another still finds
    its last output."""
    out = tmp_path / "model"
    name = temporary_sibling(out, "old").name.split(".")
    name[-3] = "0badc0de"   # another host
    aside = out.with_name(".".join(name))
    aside.mkdir()
    recover(out)
    assert out.is_dir() and not aside.exists()


def test_check_distinct_refuses_one_path_twice_or_one_output_inside_another(tmp_path):
    """Two roles at one path (through a link too), or one output inside another, are one
    error naming both roles; outputs not asked for (None) are skipped."""
    a, link = tmp_path / "a.tsv", tmp_path / "link.tsv"
    link.symlink_to(a)
    check_distinct({"the table": a, "the plot": tmp_path / "a.png", "the index": None})
    cases = [({"the table": a, "the plot": link}, "link.tsv: is both the table and the plot"),
             ({"the VCF": tmp_path / "o", "the table": tmp_path / "o" / "t.tsv"},
              "t.tsv: the table would lie inside the VCF"),
             ({"the table": tmp_path / "o" / "t.tsv", "the VCF": tmp_path / "o"},
              "t.tsv: the table would lie inside the VCF")]
    for outputs, message in cases:
        with pytest.raises(InputError, match=message):
            check_distinct(outputs)
    assert list(tmp_path.iterdir()) == [link]     # nothing made


def test_output_kind_helpers_read_what_genossm_wrote_and_nothing_else(tmp_path):
    """starts_with_row: the header row exactly (any line end); json_object: a JSON object of
    bounded size, else None; created_by_genossm: genossm's created_by."""
    tsv = tmp_path / "t.tsv"
    for text, want in [("a\tb\n1\t2\n", True), ("a\tb\r\n", True), ("a\tb", True),
                       ("a\tb\tc\n", False), ("a b\n", False), ("", False)]:
        tsv.write_text(text, newline="")
        assert starts_with_row(tsv, ("a", "b")) is want, text
    assert not starts_with_row(tmp_path, ("a", "b")) and \
        not starts_with_row(tmp_path / "none", ("a",))
    js = tmp_path / "m.json"
    js.write_text('{"created_by": "genossm 1.0", "k": 1}')
    assert json_object(js) == {"created_by": "genossm 1.0", "k": 1}
    assert created_by_genossm(json_object(js))
    assert not created_by_genossm({"created_by": "other 1.0"}) and not created_by_genossm({})
    for text in ("[1, 2]", "not json", "\xff"):
        js.write_text(text, encoding="latin-1")
        assert json_object(js) is None
    assert json_object(tmp_path) is None and json_object(tmp_path / "none") is None
    with open(js, "wb") as fh:                 # sparse: over the limit without the bytes
        fh.truncate(JSON_MAX_BYTES + 1)
    assert json_object(js) is None
