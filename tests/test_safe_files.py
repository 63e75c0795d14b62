"""safe_files: atomic writes with a SHA-256 record, full disks, permissions, leftovers, and
what the reader calls a weights file."""

from __future__ import annotations

import errno
import os
import warnings

import pytest
import torch

from dinossl import safe_files
from dinossl.errors import CheckpointError, StorageError
from dinossl.safe_files import digest_path, file_sha256, read_weights_file, recorded_digests, write_atomic


def _save(state):
    return lambda tmp: torch.save(state, tmp)


def test_digest_record_is_written_with_the_file_and_checked_on_read(tmp_path):
    path = tmp_path / "checkpoint.pth"
    write_atomic(path, _save({"w": torch.arange(4.0)}), digest=True)
    record = digest_path(path)
    assert record.read_text() == f"{file_sha256(path)}  checkpoint.pth\n"  # sha256sum's format
    assert torch.equal(read_weights_file(path)["w"], torch.arange(4.0))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit flipped on disk after the write
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is damaged: its SHA-256"):
        read_weights_file(path)


def test_a_kill_between_the_renames_never_makes_an_intact_file_look_damaged(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    write_atomic(path, _save({"w": torch.zeros(3)}), digest=True)
    old = file_sha256(path)
    real_replace = os.replace
    for stop_after in (1, 2):  # after the two-digest record, after the file itself
        calls = {"n": 0}

        def replace(src, dst):
            real_replace(src, dst)
            calls["n"] += 1
            if calls["n"] == stop_after:
                raise KeyboardInterrupt  # stands for the kill: nothing after this rename runs

        monkeypatch.setattr(safe_files.os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            write_atomic(path, _save({"w": torch.ones(3) * stop_after}), digest=True)
        monkeypatch.setattr(safe_files.os, "replace", real_replace)
        listed = recorded_digests(digest_path(path))
        assert file_sha256(path) in listed and len(listed) == 2
        read_weights_file(path)  # accepted: the file in place is one the record lists
        assert list(tmp_path.glob(".*.tmp")) == []
    write_atomic(path, _save({"w": torch.full((3,), 5.0)}), digest=True)  # a complete write
    assert recorded_digests(digest_path(path)) == [file_sha256(path)] and file_sha256(path) != old


def test_a_full_disk_is_one_storage_error_and_the_old_file_stays(tmp_path):
    path = tmp_path / "checkpoint.pth"
    write_atomic(path, _save({"w": torch.zeros(3)}), digest=True)
    before = path.read_bytes()

    def full(tmp):
        with open(tmp, "wb") as handle:
            handle.write(b"PK\x03\x04partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(StorageError) as info:
        write_atomic(path, full, digest=True)
    message = str(info.value)
    assert "no space left" in message and "previous checkpoint.pth is intact" in message and "\n" not in message
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pth", "checkpoint.pth.sha256"]


def test_torch_zip_writer_failure_is_reported_as_a_space_problem(tmp_path):
    def torch_writer_error(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    with pytest.raises(StorageError, match="nothing was written"):
        write_atomic(tmp_path / "new.pth", torch_writer_error)


def test_written_files_get_the_permissions_of_any_new_file(tmp_path):
    path = tmp_path / "checkpoint.pth"
    write_atomic(path, _save({}), digest=True)
    plain = tmp_path / "config.yaml"
    plain.write_text("a: 1\n")
    mode = plain.stat().st_mode & 0o777
    assert path.stat().st_mode & 0o777 == mode and digest_path(path).stat().st_mode & 0o777 == mode


def test_leftovers_of_a_killed_write_are_removed_by_the_next_write(tmp_path):
    path = tmp_path / "checkpoint.pth"
    stale = tmp_path / ".checkpoint.pth.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".other.pth.abc123.tmp"
    other.write_bytes(b"not ours")
    write_atomic(path, _save({}))
    assert not stale.exists() and other.exists()


def test_a_torch_file_named_safetensors_loads(tmp_path):
    path = tmp_path / "weights.safetensors"
    torch.save({"w": torch.ones(2)}, path)
    assert torch.equal(read_weights_file(path)["w"], torch.ones(2))


@pytest.mark.parametrize("head", [b"PK", b"PK\x03\x04", b"\x80", b"\x80\x02"])
def test_random_bytes_are_not_weights_and_print_no_warning(tmp_path, head):
    path = tmp_path / "random.pth"
    path.write_bytes(head + bytes(range(256)) * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError) as info:
            read_weights_file(path)
    assert "could run code" not in str(info.value)
