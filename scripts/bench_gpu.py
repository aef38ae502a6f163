"""GPU decode throughput of the batched step generator against the memory-bandwidth roofline.

    python scripts/bench_gpu.py [--out docs/benchmarks.md]

A randomly initialised model shaped like Qwen2.5-0.5B, in bf16, decodes 128-token steps for B =
1, 8, 32, 64 frontier nodes (256-token prompts). Decoding is memory-bound: every step reads all
weights plus each row's KV cache, so tokens/s <= B * bandwidth / bytes read per step. The
bandwidth is measured here (a large device-to-device copy), not taken from a data sheet.
Needs CUDA; it refuses to run without it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reasoning_viz.bench import IdTokenizer  # noqa: E402
from reasoning_viz.models.generator import SamplingParams, StepGenerator  # noqa: E402

PROMPT, STEP = 256, 128


def measured_bandwidth(device: torch.device) -> float:
    """Bytes/s of a 2 GiB device-to-device copy (read + write counted)."""
    src = torch.empty(2**30, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 10 * 2 * src.numel() * src.element_size() / (time.perf_counter() - t0)


def qwen05b_like() -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg).to(torch.bfloat16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    device = torch.device("cuda")
    model = qwen05b_like().to(device).eval()
    cfg = model.config
    gen = StepGenerator(model, IdTokenizer(cfg.vocab_size), memory_budget_mb=60_000)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2
    bandwidth = measured_bandwidth(device)
    sampling = SamplingParams(temperature=1.0, max_step_tokens=STEP, ignore_eos=True)
    g = torch.Generator(device=device).manual_seed(0)
    rows = []
    for b in (1, 8, 32, 64):
        prefixes = [torch.randint(3, cfg.vocab_size, (PROMPT,)).tolist() for _ in range(b)]
        gen.expand(prefixes, 1, SamplingParams(temperature=1.0, max_step_tokens=8, ignore_eos=True), generator=g)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        gen.expand(prefixes, 1, sampling, generator=g)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        tps = b * STEP / seconds
        mean_context = PROMPT + STEP / 2
        bytes_per_step = weight_bytes + b * mean_context * kv_per_token
        roofline = b * bandwidth / bytes_per_step
        rows.append((b, tps, roofline))
    name = torch.cuda.get_device_name(device)
    lines = [f"## Batched step generator, decode on {name}", "",
             f"Random Qwen2.5-0.5B-shaped model ({weight_bytes / 2**30:.2f} GiB of bf16 weights), {PROMPT}-token "
             f"prompts, {STEP}-token steps, K=1 child per node. Measured copy bandwidth "
             f"{bandwidth / 1e12:.2f} TB/s. Command: `python scripts/bench_gpu.py`.", "",
             "| B | tokens/s | roofline tokens/s | % of roofline |", "|---|---|---|---|"]
    lines += [f"| {b} | {tps:.0f} | {roof:.0f} | {100 * tps / roof:.0f}% |" for b, tps, roof in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
