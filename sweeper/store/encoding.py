"""How a checkpoint (or a model artifact) is laid out as bytes: encode, the layout check, decode.

A checkpoint is a dict of plain tensors and primitives written with torch.save and loaded with
torch.load(weights_only=True). Anything else is refused as possibly malicious before anything is
unpickled. No database here: job code (jobs/ml/model.py) loads its model artifacts through
load_plain() without pulling in the queue.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from sweeper.errors import RefusedCheckpoint


def encode(state: dict[str, Any]) -> bytes:
    import torch  # the worker has it loaded already; keep it out of the CLI's start-up path

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def layout_problem(data: bytes) -> str | None:
    """Why `data` is not a torch.save file as encode() writes one, or None if it is.

    torch.save writes a zip archive: one top folder holding data.pkl, a version record and the
    tensor storages. Anything else (a bare pickle of any protocol, 0 to 5, or a zip laid out
    otherwise) was not written by this store.
    """
    import zipfile

    if not data.startswith(b"PK\x03\x04"):
        if data[:1] == b"\x80" and len(data) > 1:
            return f"a bare pickle (protocol {data[1]}), not a torch.save file"
        if data[:1] in (b"(", b"c", b"]", b"}", b"I", b"S", b"V", b"N", b"."):
            return "a bare pickle (protocol 0 or 1), not a torch.save file"
        return "not a torch.save file (no zip archive)"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        return f"a damaged zip archive ({exc})"
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1 or any(n.startswith("/") or ".." in n.split("/") for n in names):
        return "a zip archive not laid out as torch.save writes one"
    if f"{tops.pop()}/data.pkl" not in names:
        return "a zip archive without the data.pkl of a torch.save file"
    return None


def decode(data: bytes, what: str) -> dict[str, Any]:
    """Load bytes written by `encode`, refusing anything but a torch.save dict of tensors and plain values.

    Called once the bytes match their recorded sha256: they are what someone wrote on purpose, and
    encode() writes nothing else than such a dict. So whatever fails here is refused as possibly
    malicious (RefusedCheckpoint), never skipped as unreadable.
    """
    import pickle

    import torch

    problem = layout_problem(data)
    if problem:
        raise RefusedCheckpoint(what, problem)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the class a pickle wanted ("unsupported GLOBAL posix.system whose module ...").
        wanted = re.search(r"GLOBAL (\S+)", str(exc))
        if wanted:
            reason = f"loading it would call {wanted.group(1)[:80]}"
        else:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            reason = f"weights_only unpickling refused it ({(lines[0] if lines else '')[:80]})"
        raise RefusedCheckpoint(what, reason) from None
    except Exception as exc:
        raise RefusedCheckpoint(what, f"torch.load failed: {type(exc).__name__}: {str(exc)[:80]}") from None
    if not isinstance(state, dict):
        raise RefusedCheckpoint(what, f"it holds a {type(state).__name__}, not a dict")
    return state


def load_plain(path: Path) -> dict[str, Any]:
    """A torch.save file of tensors and plain values (a model artifact), loaded like a checkpoint.

    Anything else (a bare pickle of any protocol, another zip, a pickle that names a global) is
    refused as possibly malicious (RefusedCheckpoint) before it could run code, and the job fails
    at once: fetching the same file again cannot help. The file is left where it is.
    """
    return decode(Path(path).read_bytes(), f"artifact {Path(path).name} ({path})")
