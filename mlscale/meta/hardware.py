"""Roofline models of named accelerators, and cluster presets for the sim engine's NetworkModel.

    hw = get_hardware("H100-SXM")
    hw.op_time("matmul", flops=2 * m * n * k, nbytes=..., dtype=np.float16)
    #  = max(flops / (peak["fp16"] * eff["matmul"]), nbytes / (hbm_bw * eff_mem["matmul"]))
    net = cluster_network("DGX-H100")    # 8 GPUs a node on NVLink4, NDR InfiniBand between nodes

The roofline (Williams, Waterman and Patterson, "Roofline: an insightful visual
performance model for multicore architectures", CACM 2009): an op that does F FLOPs
and moves B bytes of HBM takes ``max(F / (P eff), B / (W eff_mem))`` seconds, P the peak
FLOP/s of its dtype on the tensor (or CUDA) cores, W the HBM bandwidth. The efficiency
factors are what real kernels reach of the peak: stated below, and calibratable
(``hw.with_efficiency(matmul=0.8)``) against a measured step.

Figures, from NVIDIA's data sheets (dense figures: the sheets' headline tensor-core
numbers are "with sparsity", twice the dense ones):

- A100-80GB-SXM: "NVIDIA A100 Tensor Core GPU" data sheet (nvidia-a100-datasheet-us-
  nvidia-1758950-r4-web.pdf, https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf):
  FP64 9.7 TFLOPS (FP64 tensor core 19.5), FP32 19.5, TF32 156, BF16 / FP16 312,
  INT8 624 TOPS; 80 GB HBM2e at 2,039 GB/s.
- H100-SXM: "NVIDIA H100 Tensor Core GPU" data sheet
  (https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet):
  FP64 34 TFLOPS (tensor core 67), FP32 67, TF32 989 / BF16 1,979 / FP16 1,979 /
  INT8 3,958 with sparsity, so dense 494.5 / 989.5 / 989.5 / 1,979; 80 GB HBM3 at 3.35 TB/s.
- T4: "NVIDIA T4 Tensor Core GPU" data sheet (t4-tensor-core-datasheet-951643.pdf,
  https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf):
  FP32 8.1 TFLOPS, mixed-precision FP16/FP32 65 TFLOPS, INT8 130 TOPS; 16 GB GDDR6 at
  320 GB/s. No TF32 or BF16 (Turing). FP64 is not on the sheet: 1/32 of FP32 (the CUDA C
  Programming Guide's throughput table for compute capability 7.5), 0.253 TFLOPS.

Memory sizes are taken as GiB (80 GiB, 16 GiB), what ``torch.cuda`` reports a little
below. FP64 uses the FP64 tensor-core rate for matmuls where there is one.
"""
from dataclasses import dataclass, field, replace

import numpy as np

T = 1e12

# Default efficiencies (fractions of peak), assumptions to calibrate, not measurements:
# large bf16 GEMMs reach 70-80% of the tensor-core peak in cuBLAS; attention kernels
# (FlashAttention-2, Dao 2023, reports 50-73% of the A100's peak forward) somewhat less;
# bandwidth-bound kernels reach 70-90% of HBM bandwidth (REFERENCES.md, kernels).
DEFAULT_EFFICIENCY = {"matmul": 0.75, "attention": 0.6, "elementwise": 1.0, "reduction": 1.0}
DEFAULT_MEM_EFFICIENCY = {"matmul": 0.8, "attention": 0.8, "elementwise": 0.8, "reduction": 0.7}


@dataclass(frozen=True)
class Hardware:
    """An accelerator: peak FLOP/s per dtype key ("fp64", "fp32", "tf32", "fp16",
    "bf16", "int8"; None where it has none), HBM bandwidth (B/s), memory (bytes), and the
    efficiency per op class (of peak FLOP/s: ``efficiency``; of bandwidth: ``mem_efficiency``)."""

    name: str
    peak: dict
    hbm_bandwidth: float
    memory_bytes: int
    source: str
    efficiency: dict = field(default_factory=lambda: dict(DEFAULT_EFFICIENCY))
    mem_efficiency: dict = field(default_factory=lambda: dict(DEFAULT_MEM_EFFICIENCY))
    fp64_matmul: float = None  # FP64 tensor-core rate for matmuls, where there is one

    def with_efficiency(self, mem=None, **eff):
        """A copy with some efficiencies changed: ``hw.with_efficiency(matmul=0.8, mem={"elementwise": 0.9})``."""
        for k, v in list(eff.items()) + list((mem or {}).items()):
            if k not in DEFAULT_EFFICIENCY:
                raise ValueError(f"with_efficiency: unknown op class {k!r}; use {sorted(DEFAULT_EFFICIENCY)}")
            if not 0 < v <= 1:
                raise ValueError(f"with_efficiency: {k}={v!r} must be a fraction of peak in (0, 1]")
        return replace(self, efficiency={**self.efficiency, **eff},
                       mem_efficiency={**self.mem_efficiency, **(mem or {})})

    def peak_flops(self, dtype, cls="matmul", allow_tf32=False):
        """Peak FLOP/s for ``dtype`` in op class ``cls`` (tensor cores for matmul/attention)."""
        key = dtype_key(dtype)
        tensor = cls in ("matmul", "attention")
        if key == "fp32" and tensor and allow_tf32 and self.peak.get("tf32"):
            key = "tf32"
        if key == "fp64" and tensor and self.fp64_matmul:
            return self.fp64_matmul
        if key in ("fp16", "bf16") and not tensor:
            # elementwise 16-bit work is bandwidth-bound; count its FLOPs at the FP32 rate
            key = "fp32" if self.peak.get("fp32") else key
        p = self.peak.get(key)
        if not p:
            raise ValueError(f"{self.name} has no {key} rate (dtype {np.dtype(dtype).name}): "
                             f"it supports {[k for k, v in self.peak.items() if v]}")
        return p

    def op_time(self, cls, flops, nbytes, dtype, allow_tf32=False):
        """Roofline seconds: ``max(flops / (peak[dtype] eff[cls]), nbytes / (hbm_bw eff_mem[cls]))``."""
        t_mem = nbytes / (self.hbm_bandwidth * self.mem_efficiency[cls])
        if not flops:
            return t_mem
        return max(flops / (self.peak_flops(dtype, cls, allow_tf32) * self.efficiency[cls]), t_mem)


def dtype_key(dtype):
    """The peak-table key of a NumPy dtype: float64 -> "fp64", float32 -> "fp32",
    float16 -> "fp16" (NumPy has no bfloat16: float16 stands for either), ints -> "int8"."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return {8: "fp64", 4: "fp32", 2: "fp16"}.get(dt.itemsize, "fp32")
    if dt.kind == "c":
        return "fp64" if dt.itemsize == 16 else "fp32"
    return "int8" if dt.itemsize == 1 else "fp32"  # bool/ints: index and mask work, ALU rate ~ fp32


HARDWARE = {
    "A100-80GB-SXM": Hardware(
        "A100-80GB-SXM",
        {"fp64": 9.7 * T, "fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T, "fp16": 312 * T, "int8": 624 * T},
        hbm_bandwidth=2039e9, memory_bytes=80 * 2 ** 30, fp64_matmul=19.5 * T,
        source="NVIDIA A100 Tensor Core GPU data sheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf), "
               "A100 80GB SXM column"),
    "H100-SXM": Hardware(
        "H100-SXM",
        {"fp64": 34 * T, "fp32": 67 * T, "tf32": 494.5 * T, "bf16": 989.5 * T, "fp16": 989.5 * T,
         "int8": 1979 * T},
        hbm_bandwidth=3.35e12, memory_bytes=80 * 2 ** 30, fp64_matmul=67 * T,
        source="NVIDIA H100 Tensor Core GPU data sheet, H100 SXM column (tensor-core figures halved: "
               "the sheet gives them with sparsity)"),
    "T4": Hardware(
        "T4",
        {"fp64": 8.1 * T / 32, "fp32": 8.1 * T, "tf32": None, "bf16": None, "fp16": 65 * T, "int8": 130 * T},
        hbm_bandwidth=320e9, memory_bytes=16 * 2 ** 30,
        source="NVIDIA T4 Tensor Core GPU data sheet (t4-tensor-core-datasheet-951643.pdf); FP64 = FP32/32 "
               "(CUDA C Programming Guide, compute capability 7.5)"),
}


def get_hardware(name):
    """A preset by name ("A100-80GB-SXM", "H100-SXM", "T4"; "A100" and "H100" also work)."""
    if isinstance(name, Hardware):
        return name
    alias = {"A100": "A100-80GB-SXM", "A100-80GB": "A100-80GB-SXM", "H100": "H100-SXM"}
    key = alias.get(name, name)
    if key not in HARDWARE:
        raise ValueError(f"unknown accelerator {name!r}: use one of {sorted(HARDWARE)}, or build a Hardware(...)")
    return HARDWARE[key]


# -- clusters ------------------------------------------------------------------------------
# Per GPU and per direction (the simulator gives each rank one outgoing and one incoming
# port, so a link's bandwidth is what one GPU can send while it receives as much):
# - NVLink3 on A100: 600 GB/s total bidirectional per GPU (A100 data sheet), 300 GB/s each way.
# - NVLink4 on H100 SXM: 900 GB/s total per GPU (H100 data sheet), 450 GB/s each way.
# - DGX A100: 8 x single-port Mellanox ConnectX-6 HDR 200 Gb/s InfiniBand for the compute
#   fabric (NVIDIA DGX A100 System Architecture white paper / DGX A100 user guide):
#   one 200 Gb/s = 25 GB/s NIC per GPU.
# - DGX H100: 8 x ConnectX-7 NDR 400 Gb/s InfiniBand (NVIDIA DGX H100 data sheet / user
#   guide): 400 Gb/s = 50 GB/s per GPU.
# Latencies are assumptions (no data sheet gives them): a few microseconds per NCCL
# message step inside a node, more across the fabric.
@dataclass(frozen=True)
class Cluster:
    name: str
    gpus_per_node: int
    gpu: str
    intra_bandwidth: float  # B/s per GPU, per direction (NVLink/NVSwitch)
    inter_bandwidth: float  # B/s per GPU, per direction (its InfiniBand rail)
    intra_latency: float
    inter_latency: float
    source: str

    def network(self, **kwargs):
        """A NetworkModel: ranks numbered node by node, NVLink inside a node, IB between."""
        from ..comm.network import NetworkModel

        return NetworkModel.cluster(self.gpus_per_node, intra=(self.intra_latency, 1.0 / self.intra_bandwidth),
                                    inter=(self.inter_latency, 1.0 / self.inter_bandwidth), **kwargs)


CLUSTERS = {
    "DGX-A100": Cluster("DGX-A100", 8, "A100-80GB-SXM", 300e9, 200e9 / 8, 2e-6, 5e-6,
                        "A100 data sheet (NVLink3 600 GB/s per GPU, both directions); DGX A100 user guide "
                        "(8 x ConnectX-6 HDR 200 Gb/s InfiniBand for the compute fabric)"),
    "DGX-H100": Cluster("DGX-H100", 8, "H100-SXM", 450e9, 400e9 / 8, 2e-6, 5e-6,
                        "H100 data sheet (NVLink4 900 GB/s per GPU, both directions); DGX H100 data sheet "
                        "(8 x ConnectX-7 NDR 400 Gb/s InfiniBand)"),
}


def get_cluster(name):
    if isinstance(name, Cluster):
        return name
    if name not in CLUSTERS:
        raise ValueError(f"unknown cluster {name!r}: use one of {sorted(CLUSTERS)}")
    return CLUSTERS[name]


def cluster_network(name, **kwargs):
    """The NetworkModel of a cluster preset ("DGX-A100", "DGX-H100"); kwargs go to NetworkModel."""
    return get_cluster(name).network(**kwargs)


__all__ = ["Hardware", "HARDWARE", "get_hardware", "dtype_key", "Cluster", "CLUSTERS", "get_cluster",
           "cluster_network", "DEFAULT_EFFICIENCY", "DEFAULT_MEM_EFFICIENCY"]
