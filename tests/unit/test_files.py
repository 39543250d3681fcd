"""Atomic replacement of run files and folders (pipeline.files): a reader sees the old or the new, whole."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pandas as pd
import pytest

from pipeline.files import replacing, replacing_dir, write_parquet, write_text


def test_write_parquet_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "snap" / "items.parquet"
    write_parquet(pd.DataFrame({"item_id": [1, 2]}), path)
    write_parquet(pd.DataFrame({"item_id": [3]}), path)
    assert pd.read_parquet(path)["item_id"].tolist() == [3]
    assert [p.name for p in path.parent.iterdir()] == ["items.parquet"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    write_text(path, "old")
    with pytest.raises(RuntimeError), replacing(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_the_old_file_stays_readable_until_the_new_one_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "recs.parquet"
    write_parquet(pd.DataFrame({"x": [1]}), path)
    with replacing(path) as tmp:
        tmp.write_bytes(b"PAR1 half")  # a reader meanwhile still gets the whole old file
        assert pd.read_parquet(path)["x"].tolist() == [1]
        pd.DataFrame({"x": [2]}).to_parquet(tmp)
    assert pd.read_parquet(path)["x"].tolist() == [2]


def test_replacing_dir_swaps_the_whole_folder_or_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "events"
    with replacing_dir(dest) as d:
        (d / "a.parquet").write_text("1")
        (d / "b.parquet").write_text("1")
    with pytest.raises(ValueError), replacing_dir(dest) as d:
        (d / "a.parquet").write_text("2")
        assert sorted(p.name for p in dest.iterdir()) == ["a.parquet", "b.parquet"]  # old view meanwhile
        raise ValueError("reading the store failed")
    assert {p.name: p.read_text() for p in dest.iterdir()} == {"a.parquet": "1", "b.parquet": "1"}
    with replacing_dir(dest) as d:
        (d / "c.parquet").write_text("3")
    assert [p.name for p in dest.iterdir()] == ["c.parquet"]  # no file of the old view survives
    assert [p.name for p in tmp_path.iterdir()] == ["events"]  # nothing left beside it


def test_replacing_dir_leaves_no_moment_without_the_folder(tmp_path: Path) -> None:
    """A reader polling the folder during many replacements always finds it. (A reader that opened the old
    folder just before a swap may still see its files go as it is deleted: it holds the old folder.)"""
    dest = tmp_path / "factors"
    with replacing_dir(dest) as d:
        (d / "v.txt").write_text("0")
    stop, misses, reads = threading.Event(), [], [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                os.listdir(dest)
            except FileNotFoundError as exc:
                misses.append(exc)
            reads[0] += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(1, 300):
            with replacing_dir(dest) as d:
                (d / "v.txt").write_text(str(i))
    finally:
        stop.set()
        t.join()
    assert misses == [] and reads[0] > 300
    assert (dest / "v.txt").read_text() == "299"
    assert [p.name for p in tmp_path.iterdir()] == ["factors"]


def test_replacing_dir_without_an_atomic_exchange_still_swaps_whole(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.files as files

    monkeypatch.setattr(files, "_exchange", lambda a, b: False)  # another OS, or a file system without it
    test_replacing_dir_swaps_the_whole_folder_or_nothing(tmp_path)


def test_replacing_dir_sweeps_old_folders_a_killed_replacement_left(tmp_path: Path) -> None:
    dest = tmp_path / "events"
    with replacing_dir(dest) as d:
        (d / "a.parquet").write_text("1")
    left = tmp_path / ".events.old-4242-deadbeef"  # killed between the swap and the delete
    (left / "day=1").mkdir(parents=True)
    (left / "day=1" / "x.parquet").write_text("old")
    other = tmp_path / ".items.old-4242-deadbeef"  # another folder's leftover: its own replacement sweeps it
    other.mkdir()
    with replacing_dir(dest) as d:
        (d / "b.parquet").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".items.old-4242-deadbeef", "events"]
    assert [p.name for p in dest.iterdir()] == ["b.parquet"]
