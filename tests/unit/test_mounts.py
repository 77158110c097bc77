"""Detecting a state directory where a live SQLite database is unsafe, from a fake mount table."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeper.errors import UsageError
from sweeper.mirrored.mounts import check, is_unsafe_type, read_mounts, should_mirror


def _mounts(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "mounts"
    path.write_text(
        "\n".join(
            [
                "proc /proc proc rw,relatime 0 0",
                "/dev/vda / ext4 rw,relatime 0 0",
                "tmpfs /dev/shm tmpfs rw,relatime 0 0",
                *lines,
            ]
        )
        + "\n"
    )
    return path


def test_colab_drive_fuse_mount_is_unsafe(tmp_path):
    drive = tmp_path / "content" / "drive"
    mounts = _mounts(
        tmp_path,
        f"drive {drive} fuse.drive rw,nosuid,nodev,relatime,user_id=0,group_id=0,allow_other 0 0",
    )
    verdict = check(drive / "MyDrive" / "sweeps" / "fmnist", mounts)
    assert verdict.unsafe
    assert verdict.mount is not None and verdict.mount.fstype == "fuse.drive"
    assert "fuse.drive" in verdict.reason and str(drive) in verdict.reason


def test_local_ext4_directory_is_safe(tmp_path):
    mounts = _mounts(tmp_path, f"drive {tmp_path / 'elsewhere'} fuse.drive rw 0 0")
    verdict = check(tmp_path / "state", mounts)
    assert not verdict.unsafe
    assert verdict.mount is not None and verdict.mount.fstype == "ext4"


@pytest.mark.parametrize(
    "fstype",
    [
        "fuse",
        "fuse.sshfs",
        "fuse.gcsfuse",
        "fuse.s3fs",
        "fuse.rclone",
        "fuse.goofys",
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "9p",
    ],
)
def test_network_and_fuse_types_are_unsafe(tmp_path, fstype):
    share = tmp_path / "share"
    verdict = check(share / "state", _mounts(tmp_path, f"server:/export {share} {fstype} rw 0 0"))
    assert verdict.unsafe, fstype


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "fuseblk"])
def test_local_types_are_safe(fstype):
    assert not is_unsafe_type(fstype)


def test_the_innermost_mount_decides(tmp_path):
    """A local disk mounted inside a network share is safe, and the other way round."""
    share, local = tmp_path / "share", tmp_path / "share" / "scratch"
    mounts = _mounts(tmp_path, f"srv:/x {share} nfs4 rw 0 0", f"/dev/vdb {local} ext4 rw 0 0")
    assert check(share / "state", mounts).unsafe
    assert not check(local / "state", mounts).unsafe
    # A sibling whose name merely starts like the mount point is not inside it.
    assert not check(tmp_path / "share-not", mounts).unsafe


def test_mount_points_with_spaces_are_unescaped(tmp_path):
    drive = tmp_path / "My Drive"
    mounts = _mounts(tmp_path, f"drive {str(drive).replace(' ', chr(92) + '040')} fuse.drive rw 0 0")
    assert [m.point for m in read_mounts(mounts)][-1] == str(drive)
    assert check(drive / "sweeps", mounts).unsafe


def test_symlink_into_a_network_mount_is_followed(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    link = tmp_path / "link"
    link.symlink_to(share)
    assert check(link / "state", _mounts(tmp_path, f"srv:/x {share} nfs rw 0 0")).unsafe


def test_override_works_both_ways(tmp_path):
    drive = tmp_path / "drive"
    mounts = _mounts(tmp_path, f"drive {drive} fuse.drive rw 0 0")
    assert should_mirror(drive / "s", "auto", str(mounts)).unsafe
    assert not should_mirror(drive / "s", "off", str(mounts)).unsafe
    assert should_mirror(tmp_path / "local", "on", str(mounts)).unsafe
    assert not should_mirror(tmp_path / "local", "auto", str(mounts)).unsafe
    assert "--mirror off" in should_mirror(drive / "s", "off", str(mounts)).reason


def test_bad_mirror_mode_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="auto, on or off"):
        should_mirror(tmp_path, "sometimes")


def test_mount_table_path_comes_from_the_environment(tmp_path, monkeypatch):
    drive = tmp_path / "drive"
    monkeypatch.setenv("SWEEPER_MOUNTS_FILE", str(_mounts(tmp_path, f"drive {drive} fuse.drive rw 0 0")))
    assert check(drive / "state").unsafe


def test_unreadable_mount_table_assumes_local_disk(tmp_path):
    verdict = check(tmp_path, tmp_path / "no-such-mounts")
    assert not verdict.unsafe and "unreadable" in verdict.reason
