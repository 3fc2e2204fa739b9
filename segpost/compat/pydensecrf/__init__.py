"""A drop-in replacement for pydensecrf.

Change only the imports::

    import segpost.compat.pydensecrf.densecrf as dcrf
    from segpost.compat.pydensecrf import utils

and pydensecrf code runs on segpost's multi-threaded lattice, with the same
argument conventions and results, but a wrong shape or dtype raises
``ValueError`` at the call that is wrong instead of crashing later.
"""
from . import densecrf, utils

__all__ = ["densecrf", "utils"]
