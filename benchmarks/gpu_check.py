"""The GPU check: one script to run on one H100 / H200 (torch + triton only, no Ray, nothing
downloaded), about 8 minutes; `--tiny` runs the same code on the CPU at toy sizes (tests).

    python -m oss_serve.benchmarks.gpu_check [--output-dir benchmarks/results/gpu] [--tiny]

1. accuracy: every Triton kernel in bf16 and fp16 on fresh random inputs against its torch
   reference run on the same inputs upcast to fp64: relative error (max |diff| / max |ref|)
   against a stated tolerance per dtype;
2. speed: MoE and decode-attention kernels at gpt-oss-20b and -120b shapes against the HBM
   roofline of this GPU (benchmarks/kernels.py's cases);
3. the engine: a full-size gpt-oss-20b with random MXFP4 weights made on the device, output
   tokens/s, TTFT and TPOT at concurrency 1, 16, 64 and 256, eager and with CUDA graphs.

Writes gpu_check.json and gpu_check.md into the output folder. A part that fails is
recorded (with its error) and the others still run; a time budget skips what is left.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

DEFAULT_OUTPUT = Path("benchmarks/results/gpu")
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float32: 1e-4}


@dataclass
class Report:
    device: str
    tiny: bool
    environment: dict[str, str]
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    kernels: list[dict[str, Any]] = field(default_factory=list)
    engine: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


# --- 1. accuracy ----------------------------------------------------------------------------
def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    scale = float(ref.double().abs().max()) or 1.0
    return float((out.double() - ref.double()).abs().max()) / scale


def _accuracy_cases(
    device: torch.device, dtype: torch.dtype, tiny: bool
) -> list[tuple[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]]]:
    """(kernel, run) pairs; run() -> (kernel output, fp64 reference) on fresh inputs."""
    from oss_serve.kernels import attention, moe, mxfp4, norm, rope, sampling

    tokens, hidden, heads, kv_heads, head_dim = (5, 64, 4, 2, 16) if tiny else (97, 2880, 64, 8, 64)
    experts, inter = (4, 32) if tiny else (32, 2880)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, device=device) * scale).to(dtype)

    def f64(*tensors: torch.Tensor) -> list[torch.Tensor]:
        return [t.double() if t.is_floating_point() else t for t in tensors]

    def rms() -> tuple[torch.Tensor, torch.Tensor]:
        x, w = rand(tokens, hidden), torch.rand(hidden, device=device) + 0.5
        x64, w64 = f64(x, w)
        return norm.rms_norm(x, w, 1e-5), norm.rms_norm_ref(x64, w64, 1e-5)

    def rotary() -> tuple[torch.Tensor, torch.Tensor]:
        x = rand(tokens, heads, head_dim)
        angle = torch.rand(tokens, head_dim // 2, device=device) * 6.28
        cos, sin = angle.cos(), angle.sin()
        x64, cos64, sin64 = f64(x, cos, sin)
        return rope.apply_rope(x, cos, sin), rope.apply_rope_ref(x64, cos64, sin64)

    def experts_call(mxfp: bool) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        def run() -> tuple[torch.Tensor, torch.Tensor]:
            x = rand(tokens, hidden)
            w1 = torch.randn(experts, 2 * inter, hidden, device=device) * hidden**-0.5
            w2 = torch.randn(experts, hidden, inter, device=device) * inter**-0.5
            b1, b2 = rand(experts, 2 * inter, scale=0.1), rand(experts, hidden, scale=0.1)
            weights, ids = moe.route_ref(torch.randn(tokens, experts, device=device), 4)
            weights = weights.to(dtype)
            up_scales: torch.Tensor | None = None
            down_scales: torch.Tensor | None = None
            if mxfp:
                (up, up_scales), (down, down_scales) = map(mxfp4.quantize_mxfp4, (w1, w2))
                up64 = mxfp4.dequantize_mxfp4_ref(up, up_scales, torch.float64)
                down64 = mxfp4.dequantize_mxfp4_ref(down, down_scales, torch.float64)
            else:
                up, down = w1.to(dtype), w2.to(dtype)
                up64, down64 = up.double(), down.double()
            out = moe.moe_experts(
                x, weights, ids, up, up_scales, b1, down, down_scales, b2,
                swiglu_alpha=1.702, swiglu_limit=7.0,
            )  # fmt: skip
            ref = moe.moe_experts_ref(
                x.double(), weights.double(), ids, up64, None, b1.double(), down64, None,
                b2.double(), swiglu_alpha=1.702, swiglu_limit=7.0,
            )  # fmt: skip
            return out, ref

        return run

    def decode_attention() -> tuple[torch.Tensor, torch.Tensor]:
        seqs, block, blocks = 4, 16, 8 if tiny else 64
        cache = rand(2, seqs * blocks + 1, block, kv_heads, head_dim)
        table = torch.arange(1, seqs * blocks + 1, device=device, dtype=torch.int32)
        table = table.view(seqs, blocks)
        lens = torch.randint(1, blocks * block, (seqs,), device=device, dtype=torch.int32)
        q = rand(seqs, heads, head_dim)
        starts = torch.arange(seqs + 1, device=device, dtype=torch.int32)
        sinks = rand(heads)
        scale = head_dim**-0.5
        out = attention.paged_attention(
            q, cache, table, lens, starts, sinks, sm_scale=scale, sliding_window=None,
            max_query_len=1,
        )  # fmt: skip
        ref = attention.paged_attention_ref(
            q.double(), cache.double(), table, lens, starts, sinks.double(), sm_scale=scale,
            sliding_window=None, max_query_len=1,
        )  # fmt: skip
        return out, ref

    def prefill_attention() -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([tokens, 3], device=device)
        starts = torch.zeros(3, device=device, dtype=torch.int32)
        starts[1:] = torch.cumsum(lengths, 0)
        total = int(lengths.sum())
        q, k, v = rand(total, heads, head_dim), rand(total, kv_heads, head_dim), rand(
            total, kv_heads, head_dim)  # fmt: skip
        sinks = rand(heads)
        scale = head_dim**-0.5
        out = attention.varlen_attention(q, k, v, starts, sinks, sm_scale=scale, sliding_window=128)
        ref = attention.varlen_attention_ref(
            q.double(), k.double(), v.double(), starts, sinks.double(), sm_scale=scale,
            sliding_window=128,
        )  # fmt: skip
        return out, ref

    def top_p() -> tuple[torch.Tensor, torch.Tensor]:
        vocab = 1000 if tiny else 201088
        probs = torch.softmax(torch.randn(8, vocab, device=device) * 3, -1)
        top_k = torch.tensor([0, 1, 5, 50, 0, 200, 7, 0], device=device)
        top_p_values = torch.tensor([0.9, 1.0, 0.5, 0.95, 0.3, 1.0, 0.8, 0.99], device=device)
        out = sampling.top_k_top_p(probs, top_k, top_p_values)
        return out, sampling.top_k_top_p_ref(probs.double(), top_k, top_p_values.double())

    return [
        ("rms_norm", rms),
        ("rope", rotary),
        ("moe_experts (mxfp4)", experts_call(True)),
        ("moe_experts (dense)", experts_call(False)),
        ("paged_attention (decode, sinks)", decode_attention),
        ("varlen_attention (prefill, window 128)", prefill_attention),
        ("top_k_top_p (fp32 probabilities)", top_p),
    ]


def check_accuracy(report: Report, device: torch.device, tiny: bool) -> None:
    dtypes = (torch.float32,) if device.type == "cpu" else (torch.bfloat16, torch.float16)
    for dtype in dtypes:
        torch.manual_seed(len(report.accuracy))
        for name, run in _accuracy_cases(device, dtype, tiny):
            entry: dict[str, Any] = {"kernel": name, "dtype": str(dtype).removeprefix("torch.")}
            tolerance = TOLERANCE[torch.float32 if "top_k" in name else dtype]
            try:
                out, ref = run()
                error = _relative_error(out, ref)
                entry |= {"relative_error": error, "tolerance": tolerance, "ok": error <= tolerance}
            except Exception as err:  # one kernel failing must not hide the others
                entry |= {"error": f"{type(err).__name__}: {err}"[:500], "ok": False}
            report.accuracy.append(entry)


# --- 2. kernel speed against the roofline ------------------------------------------------------
def check_kernels(report: Report, device: torch.device, tiny: bool) -> None:
    from oss_serve.benchmarks import kernels
    from oss_serve.workers.model.config import PRESETS

    if tiny:
        shapes = kernels.Shapes(
            models=("gpt-oss-tiny",), decode_tokens=(1, 4), prefill_tokens=16,
            decode_attention=((1, 64), (4, 64)), sliding_decode=(4, 64),
            configs={"gpt-oss-tiny": PRESETS["gpt-oss-tiny"]},
        )  # fmt: skip
    else:
        shapes = kernels.Shapes(
            decode_tokens=(1, 64, 256), decode_attention=((1, 4096), (64, 4096), (256, 8192))
        )
    local = kernels._local_gpu()
    wanted = [
        case
        for case in kernels.all_cases(shapes)
        if case.kernel.startswith(("moe_experts", "paged_attention decode"))
    ]
    repeats = 2 if tiny else 20
    for case in wanted:
        entry: dict[str, Any] = {"kernel": case.kernel, "model": case.model, "shape": case.shape}
        try:
            measured = _measure(kernels, case, device, repeats)
            if measured is not None:
                roofline = case.roofline_s(local)
                entry |= {
                    "triton_us": measured.triton_s * 1e6,
                    "torch_us": measured.torch_s * 1e6,
                    "roofline_us": roofline * 1e6,
                    "percent_of_roofline": 100 * roofline / measured.triton_s,
                    "roofline_gpu": local.name,
                }
        except Exception as err:
            entry["error"] = f"{type(err).__name__}: {err}"[:500]
        report.kernels.append(entry)


def _measure(kernels: Any, case: Any, device: torch.device, repeats: int) -> Any:
    """Triton and torch times on CUDA; on the CPU (--tiny) the torch path stands in for both."""
    if device.type == "cuda":
        return kernels.measure_case(case, device, repeats=repeats, warmup=1)
    from oss_serve.kernels.backend import force_backend

    if case.build is None:
        return None
    with force_backend("torch"):
        seconds = kernels.measure_s(case.build(device), device, repeats, warmup=1)
    return kernels.Measured(seconds, seconds)


# --- 3. the engine -----------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineRun:
    model: str
    dtype: str
    concurrency: tuple[int, ...]
    prompt_tokens: int
    output_tokens: int
    max_num_seqs: int


def run_engine_load(core: Any, concurrency: int, run: EngineRun) -> dict[str, Any]:
    """`concurrency` requests at once (random prompts, fixed output length): tok/s, TTFT, TPOT."""
    from oss_serve.workers.engine.sampling_params import SamplingParams

    generator = torch.Generator().manual_seed(concurrency)
    vocab = core.vocab_size
    params = SamplingParams(
        temperature=0.8, seed=0, max_tokens=run.output_tokens, min_tokens=run.output_tokens
    )
    started = time.perf_counter()
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    for index in range(concurrency):
        prompt = torch.randint(300, vocab - 300, (run.prompt_tokens,), generator=generator)
        core.add_request(f"load-{concurrency}-{index}", prompt.tolist(), params)
    while core.has_unfinished_requests():
        now_outputs = core.step()
        now = time.perf_counter()
        for output in now_outputs:
            first.setdefault(output.request_id, now)
            if output.finished:
                done[output.request_id] = now
    elapsed = time.perf_counter() - started
    ttft = sorted(first[r] - started for r in first)
    tpot = sorted((done[r] - first[r]) / max(1, run.output_tokens - 1) for r in done)
    return {
        "concurrency": concurrency,
        "output_tokens_per_s": concurrency * run.output_tokens / elapsed,
        "ttft_ms_p50": 1e3 * ttft[len(ttft) // 2],
        "ttft_ms_max": 1e3 * ttft[-1],
        "tpot_ms_p50": 1e3 * tpot[len(tpot) // 2],
        "seconds": elapsed,
    }


def check_engine(report: Report, device: torch.device, run: EngineRun, deadline: float) -> None:
    from oss_serve.workers.engine.engine_config import EngineConfig
    from oss_serve.workers.engine.engine_core import EngineCore
    from oss_serve.workers.model.weights import load_model
    from oss_serve.workers.runner.executor import LocalExecutor, resolve_dtype

    started = time.perf_counter()
    dtype = resolve_dtype(run.dtype, device)
    with torch.device(device):
        model = load_model(run.model, device=device, dtype=dtype, experts_format="mxfp4")
    report.seconds["engine_model_init"] = time.perf_counter() - started
    base = EngineConfig(
        model=run.model, dtype=run.dtype, device=str(device), skip_tokenizer_init=True,
        max_num_seqs=run.max_num_seqs, max_model_len=run.prompt_tokens + run.output_tokens + 64,
        kv_cache_memory=None if device.type == "cuda" else 16 << 20,
    )  # fmt: skip
    # on the CPU (--tiny) graphs cannot be captured: the second mode runs their padding eagerly
    graphs_mode = "cuda graphs" if device.type == "cuda" else "padded as for graphs (cpu)"
    modes = {
        "eager": replace(base, enforce_eager=True),
        graphs_mode: replace(base, enforce_eager=False, pad_decode_batches=True),
    }
    for mode, config in modes.items():
        if time.perf_counter() > deadline:
            report.errors[f"engine ({mode})"] = "skipped: time budget spent"
            continue
        core = EngineCore(config, LocalExecutor(config, model=model))
        graphs = core.executor.runner.graphs  # type: ignore[attr-defined]
        try:
            for concurrency in run.concurrency:
                if time.perf_counter() > deadline:
                    report.errors[f"engine ({mode}, c={concurrency})"] = "skipped: time budget"
                    break
                result = run_engine_load(core, concurrency, run)
                result |= {"mode": mode, "graphs_captured": graphs is not None,
                           "graph_replays": graphs.replays if graphs is not None else 0,
                           "kv_blocks": core.kv_cache.num_usable_blocks,
                           "async_scheduling": core.async_scheduling}  # fmt: skip
                report.engine.append(result)
        finally:
            core.shutdown()
            del core
            if device.type == "cuda":
                torch.cuda.empty_cache()


# --- the run -------------------------------------------------------------------------------------
def _environment(device: torch.device) -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        found["triton"] = triton.__version__
    except Exception as err:  # the check still runs its torch parts
        found["triton"] = f"unavailable ({type(err).__name__})"
    if device.type == "cuda":
        found["gpu"] = torch.cuda.get_device_name(device)
        found["cuda"] = str(torch.version.cuda)
    return found


def markdown(report: Report) -> str:
    env = ", ".join(f"{k} {v}" for k, v in report.environment.items())
    lines = [f"# GPU check on {report.device}{' (--tiny)' if report.tiny else ''}", "", env, ""]
    lines += ["## Kernel accuracy (relative error vs fp64 reference)", ""]
    lines += ["| kernel | dtype | relative error | tolerance | ok |", "|---|---|---:|---:|---|"]
    for a in report.accuracy:
        error = f"{a['relative_error']:.2e}" if "relative_error" in a else a.get("error", "-")
        tol = f"{a['tolerance']:.0e}" if "tolerance" in a else "-"
        lines.append(f"| {a['kernel']} | {a['dtype']} | {error} | {tol} | {a['ok']} |")
    lines += ["", "## Kernel time vs HBM roofline", ""]
    lines += ["| kernel | model | shape | Triton µs | roofline µs | % of roofline | torch µs |"]
    lines.append("|---|---|---|---:|---:|---:|---:|")
    for k in report.kernels:
        if "triton_us" in k:
            lines.append(
                f"| {k['kernel']} | {k['model']} | {k['shape']} | {k['triton_us']:,.1f} | "
                f"{k['roofline_us']:,.1f} | {k['percent_of_roofline']:.0f}% | {k['torch_us']:,.1f} |"
            )
        else:
            lines.append(f"| {k['kernel']} | {k['model']} | {k['shape']} | {k.get('error', '-')} |")
    lines += ["", "## Engine (random MXFP4 weights)", ""]
    lines += ["| mode | concurrency | output tok/s | TTFT p50 ms | TTFT max ms | TPOT p50 ms |"]
    lines.append("|---|---:|---:|---:|---:|---:|")
    for e in report.engine:
        lines.append(
            f"| {e['mode']} | {e['concurrency']} | {e['output_tokens_per_s']:,.1f} | "
            f"{e['ttft_ms_p50']:,.1f} | {e['ttft_ms_max']:,.1f} | {e['tpot_ms_p50']:,.2f} |"
        )
    if report.errors:
        lines += ["", "## Errors and skips", ""]
        lines += [f"- {part}: {error}" for part, error in report.errors.items()]
    return "\n".join(lines) + "\n"


def run_check(tiny: bool, output_dir: Path, time_budget_s: float) -> Report:
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    started = time.perf_counter()
    deadline = started + time_budget_s
    report = Report(str(device), tiny, _environment(device))
    engine = (
        EngineRun("gpt-oss-tiny", "float32", (1, 3), 8, 3, 4)
        if tiny
        else EngineRun("gpt-oss-20b", "bfloat16", (1, 16, 64, 256), 512, 128, 256)
    )
    parts: list[tuple[str, Callable[[], None]]] = [
        ("accuracy", lambda: check_accuracy(report, device, tiny)),
        ("kernels", lambda: check_kernels(report, device, tiny)),
        ("engine", lambda: check_engine(report, device, engine, deadline)),
    ]
    for name, part in parts:
        if time.perf_counter() > deadline:
            report.errors[name] = "skipped: time budget spent"
            continue
        part_started = time.perf_counter()
        try:
            part()
        except Exception:
            report.errors[name] = traceback.format_exc()[-2000:]
        report.seconds[name] = time.perf_counter() - part_started
        write(report, output_dir)  # what is done so far survives a later crash
    report.seconds["total"] = time.perf_counter() - started
    write(report, output_dir)
    return report


def write(report: Report, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "gpu_check.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (output_dir / "gpu_check.md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (tests)")
    parser.add_argument("--time-budget-s", type=float, default=450.0)
    args = parser.parse_args(argv)
    report = run_check(args.tiny, args.output_dir, args.time_budget_s)
    print(markdown(report))
    failed = [a["kernel"] for a in report.accuracy if not a["ok"]]
    print(f"wrote {args.output_dir / 'gpu_check.json'} and gpu_check.md; "
          f"{len(failed)} accuracy failure(s); {len(report.errors)} part error(s)")  # fmt: skip
    return 1 if failed or report.errors else 0


if __name__ == "__main__":
    os.environ.setdefault("OSS_SERVE_LOG_LEVEL", "info")
    sys.exit(main())
