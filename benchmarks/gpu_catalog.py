"""GPUs the capacity planner knows: memory, bandwidth, peak FLOPs, links, and vLLM's MoE path.

Numbers are vendor data-sheet values: dense tensor-core peaks (no 2:4 sparsity; GeForce
cards with FP32 accumulate, the mode inference kernels use), HBM/GDDR bandwidth, and the
`memory.total` that `nvidia-smi` prints (MiB). What CUDA reports as the device's total
(`cudaMemGetInfo`, which vLLM multiplies by `--gpu-memory-utilization`) is a little less:
`cuda_total_mib` where a vLLM log printed it ("total_gpu_memory (14.56GiB)" on a T4,
39.50 on an A100-40GB, 79.11 on an H100, 139.81 on an H200, 23.58 on an RTX 3090), else
`memory_mib` minus `CUDA_RESERVED_MIB`, the median gap of those logs.

`usd_per_hour` is an indicative on-demand price per GPU (2025 cloud and marketplace list
prices, rounded); pass `--price-per-hour` for your own.

`weights_path` is vLLM's choice of MXFP4 MoE kernel by compute capability
(`fused_moe/oracle/mxfp4.py`): FlashInfer's TRT-LLM MoE on sm100, OpenAI's Triton
`matmul_ogs` kernels on sm90, Marlin (weight-only, dequantized in the kernel) everywhere
else from sm75 (Turing, with fp16 activations since it has no bf16) up, and on sm120
(vLLM 0.13 logs "Using Marlin backend" there, vllm#31085). Each pads the expert
matrices differently, which `vllm_memory.py` counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TERA = 1e12
CUDA_RESERVED_MIB = 512  # nvidia-smi total minus CUDA's total, where no log says (451-766)

MoEBackend = Literal["marlin", "triton", "flashinfer-trtllm", "dense"]
MXFP4_BACKENDS = ("marlin", "triton", "flashinfer-trtllm")

Interconnect = Literal["pcie3", "pcie4", "pcie5", "nvlink3", "nvlink4", "nvlink5", "nvlink-bridge"]

# Usable one-direction bandwidth (bytes/s) and the latency (s) of one small all-reduce
# between two GPUs (it grows with log2 of the group size, see roofline.py). PCIe numbers
# are effective (about 80% of the x16 link); GeForce cards without P2P go through host
# memory, which the PCIe latency figure stands in for.
LINKS: dict[str, tuple[float, float]] = {
    "pcie3": (12e9, 30e-6),
    "pcie4": (25e9, 25e-6),
    "pcie5": (50e9, 20e-6),
    "nvlink-bridge": (100e9, 10e-6),  # H100 NVL pairs: 600 GB/s bridge, both directions
    "nvlink3": (300e9, 10e-6),  # A100 SXM4: 600 GB/s total
    "nvlink4": (450e9, 8e-6),  # H100/H200 SXM: 900 GB/s total
    "nvlink5": (900e9, 6e-6),  # B200: 1.8 TB/s total
}


@dataclass(frozen=True)
class GPUSpec:
    """One GPU model. FLOPs are dense peaks per second; 0 means no tensor-core support."""

    name: str
    description: str
    memory_mib: int  # nvidia-smi memory.total
    bandwidth_bytes_per_s: float
    bf16_flops: float  # fp16 on cards without bf16 (Turing): see has_bf16
    fp8_flops: float
    fp4_flops: float
    interconnect: Interconnect
    compute_capability: tuple[int, int]
    usd_per_hour: float
    cuda_total_mib: int | None = None  # cudaMemGetInfo total, where a vLLM log printed it

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    @property
    def cuda_total_bytes(self) -> int:
        """The device total CUDA reports, which vLLM's memory budget starts from."""
        if self.cuda_total_mib is not None:
            return self.cuda_total_mib * MIB
        return (self.memory_mib - CUDA_RESERVED_MIB) * MIB

    @property
    def has_bf16(self) -> bool:
        return self.compute_capability >= (8, 0)

    @property
    def native_fp8(self) -> bool:
        return self.fp8_flops > 0

    @property
    def native_fp4(self) -> bool:
        return self.fp4_flops > 0

    @property
    def moe_backend(self) -> MoEBackend:
        """The kernel vLLM runs MXFP4 experts with on this compute capability."""
        if self.compute_capability[0] == 10:
            return "flashinfer-trtllm"
        if self.compute_capability == (9, 0):
            return "triton"
        return "marlin"

    @property
    def link(self) -> tuple[float, float]:
        return LINKS[self.interconnect]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["compute_capability"] = ".".join(map(str, self.compute_capability))
        data.update(
            memory_gib=round(self.memory_bytes / GIB, 2),
            has_bf16=self.has_bf16,
            native_fp8=self.native_fp8,
            native_fp4=self.native_fp4,
            moe_backend=self.moe_backend,
            cuda_total_gib=round(self.cuda_total_bytes / GIB, 2),
        )
        return data


def _gpu(
    name: str,
    description: str,
    memory_mib: int,
    bandwidth_gb_s: float,
    tflops: tuple[float, float, float],
    interconnect: Interconnect,
    compute_capability: tuple[int, int],
    usd_per_hour: float,
    cuda_total_gib: float | None = None,
) -> GPUSpec:
    bf16, fp8, fp4 = tflops
    return GPUSpec(
        name=name,
        description=description,
        memory_mib=memory_mib,
        bandwidth_bytes_per_s=bandwidth_gb_s * 1e9,
        bf16_flops=bf16 * TERA,
        fp8_flops=fp8 * TERA,
        fp4_flops=fp4 * TERA,
        interconnect=interconnect,
        compute_capability=compute_capability,
        usd_per_hour=usd_per_hour,
        cuda_total_mib=None if cuda_total_gib is None else round(cuda_total_gib * 1024),
    )


# tflops = (bf16 or fp16, fp8, fp4) dense.
CATALOG: dict[str, GPUSpec] = {
    gpu.name: gpu
    for gpu in (
        _gpu(
            "t4",
            "Tesla T4 16 GB (Turing, fp16 only)",
            15360,
            320,
            (65, 0, 0),
            "pcie3",
            (7, 5),
            0.35,
            cuda_total_gib=14.56,
        ),
        _gpu("a2", "A2 16 GB (Ampere, low-profile)", 15356, 200, (36, 0, 0), "pcie4", (8, 6), 0.40),
        _gpu("a10", "A10 24 GB (Ampere)", 23028, 600, (125, 0, 0), "pcie4", (8, 6), 0.75),
        _gpu("l4", "L4 24 GB (Ada)", 23034, 300, (121, 242, 0), "pcie4", (8, 9), 0.70),
        _gpu("l40s", "L40S 48 GB (Ada)", 46068, 864, (362, 733, 0), "pcie4", (8, 9), 1.00),
        _gpu(
            "rtx2080ti",
            "GeForce RTX 2080 Ti 11 GB (Turing)",
            11264,
            616,
            (53.8, 0, 0),
            "pcie3",
            (7, 5),
            0.15,
        ),
        _gpu(
            "rtx3080",
            "GeForce RTX 3080 10 GB (Ampere)",
            10240,
            760,
            (59.5, 0, 0),
            "pcie4",
            (8, 6),
            0.20,
        ),
        _gpu(
            "rtx3090",
            "GeForce RTX 3090 24 GB (Ampere)",
            24576,
            936,
            (71, 0, 0),
            "pcie4",
            (8, 6),
            0.25,
            cuda_total_gib=23.58,
        ),
        _gpu(
            "rtx4090",
            "GeForce RTX 4090 24 GB (Ada, no P2P)",
            24564,
            1008,
            (165.2, 330.3, 0),
            "pcie4",
            (8, 9),
            0.40,
        ),
        _gpu(
            "rtx5090",
            "GeForce RTX 5090 32 GB (Blackwell)",
            32607,
            1792,
            (209.5, 419, 1676),
            "pcie5",
            (12, 0),
            0.80,
        ),
        _gpu(
            "rtx-a5000",
            "RTX A5000 24 GB (Ampere)",
            24564,
            768,
            (111.1, 0, 0),
            "pcie4",
            (8, 6),
            0.30,
        ),
        _gpu(
            "a100-40gb",
            "A100 SXM4 40 GB",
            40960,
            1555,
            (312, 0, 0),
            "nvlink3",
            (8, 0),
            1.30,
            cuda_total_gib=39.50,
        ),
        _gpu("a100-80gb", "A100 SXM4 80 GB", 81920, 2039, (312, 0, 0), "nvlink3", (8, 0), 1.80),
        _gpu(
            "h100",
            "H100 SXM5 80 GB",
            81559,
            3350,
            (989, 1979, 0),
            "nvlink4",
            (9, 0),
            2.50,
            cuda_total_gib=79.11,
        ),
        _gpu("h100-pcie", "H100 PCIe 80 GB", 81559, 2000, (756, 1513, 0), "pcie5", (9, 0), 2.20),
        _gpu(
            "h100-nvl",
            "H100 NVL 94 GB (NVLink bridge pairs)",
            95830,
            3900,
            (835, 1671, 0),
            "nvlink-bridge",
            (9, 0),
            2.60,
        ),
        _gpu(
            "h200",
            "H200 SXM 141 GB",
            143771,
            4800,
            (989, 1979, 0),
            "nvlink4",
            (9, 0),
            3.50,
            cuda_total_gib=139.81,
        ),
        _gpu("b200", "B200 SXM 180 GB", 183359, 8000, (2250, 4500, 9000), "nvlink5", (10, 0), 5.00),
    )
}


class UnknownGPUError(ValueError):
    """The GPU name is not in the catalog; the message lists the known names."""


def get_gpu(name: str) -> GPUSpec:
    key = name.strip().lower().replace("_", "-")
    aliases = {"h100-sxm": "h100", "a100": "a100-80gb", "a5000": "rtx-a5000"}
    key = aliases.get(key, key)
    if key not in CATALOG:
        raise UnknownGPUError(f"gpu: {name!r} is not in the catalog ({', '.join(CATALOG)})")
    return CATALOG[key]


@dataclass(frozen=True)
class WeightsPath:
    """How the expert weights are stored and multiplied on one GPU for a requested format."""

    storage_format: Literal["mxfp4", "bf16"]  # what parameter_report counts bytes in
    moe_backend: MoEBackend  # the vLLM kernel (and so the padding) the experts live in
    moe_flops: float  # peak the expert GEMMs run at
    dense_flops: float  # peak for attention / unembedding GEMMs
    description: str


_BACKEND_NAMES = {
    "marlin": "Marlin MoE (weight-only MXFP4, dequantized in the kernel)",
    "triton": "Triton matmul_ogs MoE (MXFP4 weights in the Hopper layout)",
    "flashinfer-trtllm": "FlashInfer TRT-LLM MoE (MXFP4 weights)",
}


def weights_path(
    gpu: GPUSpec, requested: Literal["mxfp4", "bf16"], moe_backend: str = "auto"
) -> WeightsPath:
    """Which kernel path serves the experts: the GPU's default, or the one forced (vLLM's
    `VLLM_MXFP4_USE_MARLIN=1`, or a build whose default differed)."""
    dense = gpu.bf16_flops
    dense_name = "bf16" if gpu.has_bf16 else "fp16"
    if requested == "bf16":
        return WeightsPath(
            "bf16", "dense", dense, dense, f"dense {dense_name} experts, {dense_name} math"
        )
    if moe_backend != "auto" and moe_backend not in MXFP4_BACKENDS:
        raise ValueError(
            f"moe-backend: {moe_backend!r} is not auto or one of {', '.join(MXFP4_BACKENDS)}"
        )
    backend = gpu.moe_backend if moe_backend == "auto" else cast(MoEBackend, moe_backend)
    return WeightsPath(
        "mxfp4",
        backend,
        dense,
        dense,
        f"{_BACKEND_NAMES[backend]}, {dense_name} activations",
    )
