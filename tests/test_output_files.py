"""jaxgan.output_files: a destination checked before the work, and files that are whole or absent."""

from __future__ import annotations

import errno

import pytest

from jaxgan import output_files


class MyError(ValueError):
    pass


def test_writable_folder_creates_it_and_names_a_file_in_the_way(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    assert output_files.writable_folder(deep, MyError) == deep and deep.is_dir()
    (tmp_path / "plain").write_text("x")
    for target in (tmp_path / "plain", tmp_path / "plain" / "sub" / "dir"):
        with pytest.raises(MyError, match=f"cannot write into {target}: {tmp_path / 'plain'} is a file, not a"):
            output_files.writable_folder(target, MyError)
    assert (tmp_path / "plain").read_text() == "x"


def test_write_atomically_leaves_the_whole_file_or_nothing(tmp_path):
    dest = tmp_path / "out.bin"
    output_files.write_atomically(dest, lambda tmp: tmp.write_bytes(b"first"), MyError)
    assert dest.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]

    def fills_the_disk(tmp):
        tmp.write_bytes(b"half of the new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(MyError, match=f"cannot write {dest}: No space left on device"):
        output_files.write_atomically(dest, fills_the_disk, MyError)
    assert dest.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]

    def interrupted(tmp):
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        output_files.write_atomically(tmp_path / "new.bin", interrupted, MyError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no new.bin, no new.bin.part
