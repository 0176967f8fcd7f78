"""Shape-only execution: the same program on a model of a big cluster, no data touched.

    from mlscale.meta import Meta
    xp = Meta("H100-SXM", comm=comm)       # a NumPy-like module; its arrays have shape and dtype only
    model = GPT(cfg, dtype=np.float16, xp=xp)
    model.loss_and_grad(idx, targets); Adam(model).step()
    xp.costs        # FLOPs and bytes per op class, roofline seconds
    xp.memory       # live / peak bytes by kind: params, grads, optimizer, activations

The nn layers, the optimizers (mixed precision too), the collectives on ``sim`` and the
parallel layers (tensor, sequence, pipeline, ZeRO/FSDP) run on it unchanged, and send
the same messages as a real run (tests/test_meta.py). Like JAX's ``jax.eval_shape`` and
PyTorch's ``meta`` device, but every op also costs time on a roofline model of a named
accelerator (``hardware.py``), charged to the rank's virtual clock on the ``sim``
engine, and the cluster's links come from presets
(``NetworkModel.preset("DGX-A100")``). Fused kernels are modelled by ``Meta.fusion()``
regions (``@fused`` in mlscale.nn). ``xp="meta"`` makes a counting-only ``Meta()`` (no
hardware: FLOPs, bytes and memory, no time); read it back as ``model.xp``.

Files: ``array.py`` (MetaArray), ``shapes.py`` (NumPy's shape, dtype, index and view
rules), ``device.py`` (Meta: the ops and their charges, memory, fusion),
``functions.py`` (NumPy's functions), ``accounting.py`` (costs, memory, OOM),
``hardware.py`` (accelerator and cluster presets, the roofline).
"""
from .array import MetaArray, ShapeOnlyError
from .device import KINDS, OP_CLASSES, Costs, Memory, Meta, OutOfMemoryError, is_shape_only
from .hardware import (CLUSTERS, HARDWARE, Cluster, Hardware, cluster_network, dtype_key, get_cluster,
                       get_hardware)

__all__ = ["MetaArray", "ShapeOnlyError", "Meta", "Costs", "Memory", "OutOfMemoryError", "KINDS", "OP_CLASSES",
           "is_shape_only", "Hardware", "HARDWARE", "get_hardware", "dtype_key", "Cluster", "CLUSTERS",
           "get_cluster", "cluster_network"]
