"""nbval set-up for the notebooks.

A Jupyter kernel can die before it answers its first message for reasons that have nothing to
do with the notebook (a ZeroMQ port taken between the moment it is chosen and the moment the
kernel binds it, a loaded CI machine). One such start decided a whole CI run. Kernel *starts*
are therefore retried (three tries); a cell that fails is never retried.
"""
import logging

import nbval.kernel

_start_new_kernel = nbval.kernel.start_new_kernel
_log = logging.getLogger("nbval")


def _start_with_retries(*args, **kwargs):
    for attempt in range(3):
        try:
            return _start_new_kernel(*args, **kwargs)
        except RuntimeError:
            if attempt == 2:
                raise
            _log.warning("kernel start failed (try %d of 3); starting it again", attempt + 1)


nbval.kernel.start_new_kernel = _start_with_retries
