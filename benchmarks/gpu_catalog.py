"""GPUs the capacity planner knows: memory as the driver reports it, bandwidth, peak FLOPs, links.

Numbers are vendor data-sheet values: dense tensor-core peaks (no 2:4 sparsity; GeForce
cards with FP32 accumulate, the mode inference kernels use), HBM/GDDR bandwidth, and the
`memory.total` that `nvidia-smi` prints (MiB), which is also what `torch.cuda.mem_get_info`
reports as total and what vLLM multiplies by `--gpu-memory-utilization`.

`usd_per_hour` is an indicative on-demand price per GPU (2025 cloud and marketplace list
prices, rounded); pass `--price-per-hour` for your own.

The capability flags decide the weights path (`weights_path`): MXFP4 experts need a
kernel that decodes them (sm80+ here: Ampere Marlin-style weight-only, Hopper/Ada
Triton, Blackwell native FP4 tensor cores); Turing (sm75) has neither an MXFP4 MoE
kernel nor bf16, so the experts are dequantized to fp16 at load time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TERA = 1e12

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

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

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
    def mxfp4_kernel(self) -> bool:
        """Whether MXFP4 expert weights can stay 4-bit in memory on this GPU."""
        return self.compute_capability >= (8, 0)

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
            mxfp4_kernel=self.mxfp4_kernel,
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
        _gpu("a100-40gb", "A100 SXM4 40 GB", 40960, 1555, (312, 0, 0), "nvlink3", (8, 0), 1.30),
        _gpu("a100-80gb", "A100 SXM4 80 GB", 81920, 2039, (312, 0, 0), "nvlink3", (8, 0), 1.80),
        _gpu("h100", "H100 SXM5 80 GB", 81559, 3350, (989, 1979, 0), "nvlink4", (9, 0), 2.50),
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
        _gpu("h200", "H200 SXM 141 GB", 143771, 4800, (989, 1979, 0), "nvlink4", (9, 0), 3.50),
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
    moe_flops: float  # peak the expert GEMMs run at
    dense_flops: float  # peak for attention / unembedding GEMMs
    description: str


def weights_path(gpu: GPUSpec, requested: Literal["mxfp4", "bf16"]) -> WeightsPath:
    """Which kernel path serves the experts, from the GPU's capability flags."""
    dense = gpu.bf16_flops
    dense_name = "bf16" if gpu.has_bf16 else "fp16"
    if requested == "bf16":
        return WeightsPath("bf16", dense, dense, f"dense {dense_name} experts, {dense_name} math")
    if not gpu.mxfp4_kernel:
        return WeightsPath(
            "bf16",
            dense,
            dense,
            f"no MXFP4 MoE kernel or bf16 on sm{gpu.compute_capability[0]}{gpu.compute_capability[1]}:"
            " experts dequantized to fp16 at load",
        )
    if gpu.native_fp4:
        return WeightsPath(
            "mxfp4",
            gpu.fp8_flops,
            dense,
            "native FP4 tensor cores: MXFP4 weights x MXFP8 activations (fp8 rate)",
        )
    kernel = "Triton" if gpu.native_fp8 else "Marlin-style weight-only"
    return WeightsPath(
        "mxfp4", dense, dense, f"MXFP4 weights decoded in-kernel ({kernel}), {dense_name} math"
    )
