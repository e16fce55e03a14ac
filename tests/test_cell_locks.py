"""Cell locks leave no files behind, and removing them on release never lets two holders in."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ltbm.run.folder import finish_lock, held_file_lock, writer_lock
from ltbm.run.identity import RunConflict

posix_only = pytest.mark.skipif(os.name != "posix", reason="lock files are removed on POSIX")


@posix_only
def test_a_released_lock_leaves_no_file(tmp_path: Path):
    with writer_lock(tmp_path / "cell" / "writer.rank0.lock"):
        assert (tmp_path / "cell" / "writer.rank0.lock").exists()
    with finish_lock(tmp_path / "cell"):
        pass
    assert list((tmp_path / "cell").iterdir()) == []


def test_a_held_writer_lock_refuses_a_second_writer(tmp_path: Path):
    path = tmp_path / "writer.rank0.lock"
    with writer_lock(path):
        with pytest.raises(RunConflict, match="another ltbm run is writing"):
            with writer_lock(path):
                pass
    with writer_lock(path):  # free again
        pass


@posix_only
def test_a_waiter_on_a_removed_file_takes_the_new_one_and_excludes_others(tmp_path: Path):
    """A waits holding the lock, B waits on the same file; A releases (the file goes), B
    gets its turn on a fresh file, and while B holds it nobody else does."""
    path = tmp_path / "finish.lock"
    b_holds, b_may_leave = threading.Event(), threading.Event()

    def waiter() -> None:
        with held_file_lock(path, wait=True):
            b_holds.set()
            b_may_leave.wait(10)

    with held_file_lock(path, wait=True):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.2)  # B has opened the file and waits on it
        assert not b_holds.is_set()
    assert b_holds.wait(10)
    with held_file_lock(path, wait=False) as acquired:
        assert acquired is False  # B holds the file the path names now
    b_may_leave.set()
    thread.join(10)
    with held_file_lock(path, wait=False) as acquired:
        assert acquired is True
    assert not path.exists()


@pytest.mark.slow
def test_a_finished_eval_cell_holds_no_lock_files(tmp_path: Path):
    pytest.importorskip("ctranslate2")
    from ltbm.cli import app

    args = ["eval", "--method", "none", "--limit", "1", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cell = tmp_path / "speech" / "whisper-ct2" / "none"
    assert (cell / "metrics.json").is_file()
    assert not [p.name for p in cell.iterdir() if p.name.endswith(".lock")]


@posix_only
def test_a_shared_lock_file_goes_with_its_last_holder(tmp_path: Path):
    path = tmp_path / "writer.lock"
    with held_file_lock(path, wait=False, shared=True) as first:
        with held_file_lock(path, wait=False, shared=True) as second:
            assert first and second
            with held_file_lock(path, wait=False) as exclusive:
                assert exclusive is False  # shared holders keep an exclusive one out
        assert path.exists()  # the first holder is still there
    assert not path.exists()


@posix_only
def test_ranks_share_the_cell_lock_and_leave_no_files(tmp_path: Path):
    from ltbm.run.folder import cell_lock

    cell = tmp_path / "cell"
    with cell_lock(cell, 0, world_size=2), cell_lock(cell, 1, world_size=2):
        with pytest.raises(RunConflict):
            with cell_lock(cell, 0, world_size=1):  # a run without a launcher
                pass
    assert list(cell.iterdir()) == []
