"""Is this directory on a network filesystem? Read the mount table and decide.

SQLite's locking and its WAL need a local filesystem: on a network mount two machines can both
believe they hold the write lock, and a FUSE mount such as Colab's Google Drive uploads the
database and its -wal file separately, so the copy on the server can be a mix of two moments.
Mirrored mode (mirror.py) keeps the live database on local disk when this module says the state
directory is unsafe.

The mount table comes from /proc/mounts; SWEEPER_MOUNTS_FILE (or the `mounts_file` argument)
points elsewhere so that tests can describe any machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sweeper.errors import UsageError

MOUNTS_FILE = "/proc/mounts"

# Filesystem types whose locks or write ordering cannot be trusted by SQLite. Any "fuse.*" type
# counts too (Colab's Drive is fuse.drive; sshfs, gcsfuse, s3fs, rclone, goofys mount as fuse.NAME).
# fuseblk is left out: it is a FUSE driver for a local block device (ntfs-3g, exfat).
UNSAFE_TYPES = frozenset(
    {
        "fuse",
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "9p",
        "sshfs",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "davfs",
        "ncpfs",
        "gcsfuse",
        "s3fs",
        "rclone",
        "goofys",
        "mountpoint-s3",
        "blobfuse",
        "blobfuse2",
        "juicefs",
    }
)

MIRROR_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class Mount:
    source: str
    point: str
    fstype: str


@dataclass(frozen=True)
class Verdict:
    """Whether a live SQLite database may sit in `path`, and why."""

    path: Path
    mount: Mount | None  # the mount holding `path`; None when the table could not be read
    unsafe: bool
    reason: str


def is_unsafe_type(fstype: str) -> bool:
    fstype = fstype.lower()
    return fstype in UNSAFE_TYPES or fstype.startswith("fuse.") or fstype.startswith("nfs")


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash in paths as octal escapes (\\040)."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def read_mounts(mounts_file: str | os.PathLike[str] | None = None) -> list[Mount]:
    """The mount table, in the order the kernel lists it (later mounts hide earlier ones)."""
    path = Path(mounts_file or os.environ.get("SWEEPER_MOUNTS_FILE") or MOUNTS_FILE)
    mounts = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 3:
            mounts.append(Mount(source=_unescape(parts[0]), point=_unescape(parts[1]), fstype=parts[2]))
    return mounts


def _existing(path: Path) -> Path:
    """The path made absolute, with symlinks resolved as far as it exists (it may not exist yet)."""
    path = Path(os.path.abspath(path.expanduser()))
    missing: list[str] = []
    while not path.exists() and path != path.parent:
        missing.append(path.name)
        path = path.parent
    resolved = path.resolve()
    for name in reversed(missing):
        resolved = resolved / name
    return resolved


def mount_of(path: Path, mounts: list[Mount]) -> Mount | None:
    """The mount that holds `path`: the longest mount point above it (the last one if stacked)."""
    target = str(path)
    best: Mount | None = None
    for m in mounts:
        point = m.point.rstrip("/") or "/"
        inside = target == point or target.startswith(point + "/") or point == "/"
        if inside and (best is None or len(point) >= len(best.point.rstrip("/") or "/")):
            best = m
    return best


def check(path: str | os.PathLike[str], mounts_file: str | os.PathLike[str] | None = None) -> Verdict:
    """Decide whether `path` is on a filesystem where a live SQLite database is unsafe."""
    where = _existing(Path(path))
    try:
        mounts = read_mounts(mounts_file)
    except OSError as exc:
        # No mount table (not Linux, or a sandbox): say so and assume local disk.
        return Verdict(where, None, False, f"mount table unreadable ({exc.strerror or exc}); assuming local disk")
    mount = mount_of(where, mounts)
    if mount is None:
        return Verdict(where, None, False, "not under any listed mount; assuming local disk")
    if is_unsafe_type(mount.fstype):
        return Verdict(where, mount, True, f"{where} is on a {mount.fstype} mount ({mount.source} at {mount.point})")
    return Verdict(where, mount, False, f"{where} is on a local {mount.fstype} filesystem")


def should_mirror(path: str | os.PathLike[str], mode: str = "auto", mounts_file: str | None = None) -> Verdict:
    """Apply the user's --mirror choice: on and off override the detection either way."""
    if mode not in MIRROR_MODES:
        raise UsageError(f"--mirror must be auto, on or off, not {mode!r}")
    if mode == "auto":
        return check(path, mounts_file)
    where = _existing(Path(path))
    forced = mode == "on"
    return Verdict(where, None, forced, f"--mirror {mode}")
