"""Paths under the state directory that come from the queue: checked before any file is touched.

A sweep name, a job id, an artifact name and a stored `location` are all read from rows of a
queue that other machines (or anyone with the database password) can write. A worker turns them
into paths it writes, reads and deletes. So every part is checked before it is used:

* names are single path components: no separator, no NUL or control character, not `.`/`..`,
  and no leading `.` (the store's own temporary files start with one);
* a stored location is relative, of the form `<area>/<sweep>/<job id>/<file>`, and names the job
  it belongs to, so one job's row cannot point at another job's files either;
* the resolved path, symlinks followed, stays inside the resolved state directory. The state
  directory itself may be a symlink (Google Drive on Colab); a symlink below it that leads out
  is refused.

A failed check raises UnsafePath: the caller refuses the file, it never falls back to the path.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from sweeper.errors import UnsafePath

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_NAME_BYTES = 255  # the file name limit of every filesystem we write to


def check_name(name: object, what: str) -> str:
    """`name` as one safe path component, or UnsafePath saying what is wrong with it."""
    if not isinstance(name, str) or not name:
        raise UnsafePath(f"{what} {name!r} is not a file name", hint="use a non-empty plain name")
    problem = None
    if "/" in name or "\\" in name:
        problem = "holds a path separator"
    elif _CONTROL.search(name):
        problem = "holds a control character"
    elif name.startswith("."):
        problem = "starts with '.'"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    if problem:
        raise UnsafePath(f"{what} {name!r} {problem}", hint="names become single files under the state directory")
    return name


def check_sha256(digest: object, what: str) -> str:
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise UnsafePath(f"{what} has a malformed sha256 {digest!r}", hint="check who can write the queue")
    return digest


def inside(root: Path, path: Path, what: str) -> Path:
    """`path`, if it resolves (symlinks followed) to a place inside `root`; else UnsafePath."""
    base = root.resolve()
    try:
        path.resolve().relative_to(base)
    except ValueError:
        raise UnsafePath(
            f"{what} resolves to {path.resolve()}, outside the state directory {base}",
            hint="a symlink under the state directory leads out of it; remove it (the tool never follows one)",
        ) from None
    return path


def under(root: Path, area: str, sweep: str, job_id: str, name: str | None = None) -> Path:
    """root/area/sweep/job_id[/name] after checking every part and where it resolves to."""
    parts = [check_name(sweep, "sweep name"), check_name(job_id, "job id")]
    if name is not None:
        parts.append(check_name(name, f"file name of job {job_id}"))
    path = root / area
    for part in parts:
        path = path / part
    return inside(root, path, f"{area} of job {job_id}")


def stored(root: Path, location: object, area: str, job_id: str, sweep: str | None = None) -> Path:
    """The path a queue row's `location` names, if it is a file of this job in `area`."""
    parts = check_location(location, area, job_id, sweep)
    return under(root, area, parts[1], parts[2], parts[3])


def check_location(location: object, area: str, job_id: str, sweep: str | None = None) -> tuple[str, ...]:
    """The parts of a stored `location` if its form is `<area>/<sweep>/<job id>/<file>`: no file touched.

    The check of what a location says, before anything looks at where it leads (stored() does that).
    """
    what = f"stored location {location!r} of job {job_id}"
    if not isinstance(location, str):
        raise UnsafePath(f"{what} is not a path")
    posix = PurePosixPath(location)
    if posix.is_absolute() or "\\" in location or re.match(r"^[A-Za-z]:", location):
        raise UnsafePath(f"{what} is absolute", hint="locations are relative to the state directory")
    parts = posix.parts
    if len(parts) != 4 or parts[0] != area or parts[2] != job_id or (sweep is not None and parts[1] != sweep):
        raise UnsafePath(
            f"{what} is not a file of that job",
            hint=f"expected {area}/<sweep>/{job_id}/<file>; check who can write the queue",
        )
    check_name(parts[1], "sweep name")
    check_name(parts[3], f"file name of job {job_id}")
    return parts
