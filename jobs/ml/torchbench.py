"""torch.utils.benchmark, imported without torch's "No CUDA runtime is found" warning.

torch.utils.benchmark imports torch.utils.cpp_extension (for its C++ timer backends, which the
benchmark job does not use). At import, that module logs a warning when it finds a CUDA toolkit
(CUDA_HOME, nvcc on PATH, /usr/local/cuda: Colab's CPU runtime has one) but no GPU. A benchmark
on CPU is intended there, so the line was noise in every worker log. Only that one record, only
during this import, is dropped: any other message from torch still shows.
"""

from __future__ import annotations

import logging

_CPP_EXTENSION_LOGGER = "torch.utils.cpp_extension"  # the logger the warning is sent to
_NOTICE = "No CUDA runtime is found"  # the start of its message, before the CUDA_HOME path


class _DropNoCudaRuntime(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOTICE)


_logger = logging.getLogger(_CPP_EXTENSION_LOGGER)
_filter = _DropNoCudaRuntime()
_logger.addFilter(_filter)
try:
    from torch.utils import benchmark
finally:
    _logger.removeFilter(_filter)

__all__ = ["benchmark"]
