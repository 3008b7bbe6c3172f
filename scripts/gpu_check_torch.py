#!/usr/bin/env python3
"""The PyTorch + transformers + PEFT side of `scripts/gpu-check`: the speed workloads of
`malt bench device` on the same shapes, the way a PyTorch user runs them.

LlamaForCausalLM from a LlamaConfig of the shape, bf16 weights initialised on the device
(random, nothing downloaded), `attn_implementation="sdpa"`:
- prefill: one forward of `prefill_tokens` tokens, batch 1, KV cache on, logits of the last
  position only (`logits_to_keep=1`, as `generate` does);
- decode at each batch size: the rows share one prompt (prefilled as a batch, untimed), then
  `decode_tokens` steps with the DynamicCache, sampling at temperature 0.7 (timed);
- the 3-3-3 tree: per level, every child's full prompt prefilled as one batch (transformers has
  no prefix sharing), then decoded as one batch;
- one LoRA SFT step: PEFT LoRA of the same rank/alpha/dropout/targets, `model(ids,
  labels=...)` with the prompt masked (-100), backward, AdamW; peak memory by
  torch.cuda.max_memory_allocated / max_memory_reserved and by nvidia-smi (the way malt's is
  taken), or VmHWM on the CPU.

Timings: one warm-up, then `--repeats` runs, median; every timed region ends with a device
synchronisation. FLOP counts and roofline fractions are not computed here: gpu-check takes
malt's counts for the same shape and workload (one formula, in malt's roofline.rs).

    python3 scripts/gpu_check_torch.py --device cuda:0 --shape llama8b --out torch.json
    python3 scripts/gpu_check_torch.py --device cpu --shape tiny --out torch.json   # smoke test
"""

import argparse
import json
import os
import statistics
import subprocess
import threading
import time

import torch

from torch_lora import PROJECTIONS, adamw, lora_model, reset_hwm, sft_step, status_mib

# The same shapes as malt's `device_check::shape` (gpu-check compares the two reports' shapes).
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
PAPER_LORA = {
    "rank": 8,
    "alpha": 16.0,
    "dropout": 0.05,
    "targets": PROJECTIONS,
}
SHAPES = {
    "tiny": {
        "model": {
            "vocab_size": 2048,
            "hidden_size": 128,
            "intermediate_size": 352,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rope_theta": 500000.0,
            "rope_scaling": None,
            "max_position_embeddings": 1024,
            "tie_word_embeddings": False,
        },
        "prefill_tokens": 256,
        "decode_context": 64,
        "decode_tokens": 8,
        "decode_batches": [1, 27],
        "tree_branching": 3,
        "tree_depth": 3,
        "tree_root_prompt": 32,
        "tree_level_prompt": 16,
        "tree_new_tokens": 8,
        "sft_sequences": 8,
        "sft_prompt": 32,
        "sft_completion": 32,
        "lora": PAPER_LORA,
    },
    "llama8b": {
        "model": {
            "vocab_size": 128256,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "rope_theta": 500000.0,
            "rope_scaling": LLAMA3_ROPE,
            "max_position_embeddings": 131072,
            "tie_word_embeddings": False,
        },
        "prefill_tokens": 2048,
        "decode_context": 512,
        "decode_tokens": 64,
        "decode_batches": [1, 27],
        "tree_branching": 3,
        "tree_depth": 3,
        "tree_root_prompt": 256,
        "tree_level_prompt": 128,
        "tree_new_tokens": 64,
        "sft_sequences": 8,
        "sft_prompt": 512,
        "sft_completion": 512,
        "lora": PAPER_LORA,
    },
}


class Memory:
    """Peak memory of a section: nvidia-smi's memory.used (whole device, 100 ms polls) and
    torch's allocator peaks on CUDA; VmHWM reset through /proc/self/clear_refs on the CPU."""

    def __init__(self, device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.last = None
        self.max = 0
        self.proc = None
        if self.cuda:
            try:
                self.proc = subprocess.Popen(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                     "-lms", "100", "-i", str(device.index or 0)],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                threading.Thread(target=self._poll, daemon=True).start()
            except OSError:
                self.proc = None

    def _poll(self):
        for line in self.proc.stdout:
            try:
                v = int(line.strip())
            except ValueError:
                continue
            self.last = v
            self.max = max(self.max, v)

    def method(self):
        if self.cuda:
            return ("nvidia-smi memory.used, whole device, polled every 100 ms; torch allocator "
                    "peaks beside it" if self.proc else "torch allocator peaks only")
        return "process VmHWM (resident high-water mark), reset per section"

    def start(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            # Blocks cached by earlier sections would count against this one on nvidia-smi.
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            for _ in range(50):
                if self.last is not None or self.proc is None:
                    break
                time.sleep(0.1)
            now = self.last or 0
            self.max = now
            return float(now)
        reset_hwm()
        return status_mib("VmRSS:")

    def peak(self, start):
        out = {"start_mib": start}
        if self.cuda:
            torch.cuda.synchronize(self.device)
            time.sleep(0.25)
            out["peak_mib"] = float(self.max) if self.proc else float("nan")
            out["torch_max_allocated_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            out["torch_max_reserved_mib"] = torch.cuda.max_memory_reserved(self.device) / 2**20
        else:
            out["peak_mib"] = status_mib("VmHWM:")
        return out

    def close(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, repeats, f, prepare=None):
    """One warm-up, then `repeats` runs of f(k) (after an untimed prepare(k)), median."""
    runs = []
    for k in range(repeats + 1):
        state = prepare(k) if prepare else None
        sync(device)
        t = time.perf_counter()
        f(k, state)
        sync(device)
        if k > 0:
            runs.append(time.perf_counter() - t)
    return {"median_s": statistics.median(runs), "runs_s": runs}


def build_model(shape, device, seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    m = dict(shape["model"])
    rope_scaling = m.pop("rope_scaling")
    config = LlamaConfig(**m, rope_scaling=rope_scaling, attn_implementation="sdpa")
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.eval()
    return model, config


def random_ids(gen, vocab, *shape, device):
    return torch.randint(1, vocab, shape, generator=gen, device="cpu").to(device)


def sample(logits):
    probs = torch.softmax(logits.float() / 0.7, dim=-1)
    return torch.multinomial(probs, 1)


def decode_steps(model, cache, first, steps):
    """`steps` tokens per row after `first` (rows, 1), with the cache; returns (rows, steps)."""
    tok, out = first, []
    for _ in range(steps):
        o = model(input_ids=tok, past_key_values=cache, use_cache=True)
        cache = o.past_key_values
        tok = sample(o.logits[:, -1, :])
        out.append(tok)
    return torch.cat(out, dim=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-sft", action="store_true")
    args = ap.parse_args()

    import peft
    import transformers

    device = torch.device(args.device)
    shape = SHAPES[args.shape]
    mem = Memory(device)
    report = {
        "tool": "pytorch + transformers + peft",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
        "device": args.device,
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        "cpu_threads": torch.get_num_threads(),
        "shape": dict(shape, name=args.shape),
        "memory_method": mem.method(),
        "complete": False,
    }

    def save():
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, args.out)

    def section(name, f):
        try:
            report[name] = f()
        except Exception as e:  # noqa: BLE001 - a failed section is reported, the rest still run
            if device.type == "cuda":
                torch.cuda.empty_cache()
            report[name] = {"error": f"{type(e).__name__}: {e}"}
        save()

    t0 = time.perf_counter()
    model, config = build_model(shape, device, args.seed)
    sync(device)
    report["setup_s"] = time.perf_counter() - t0
    report["parameters"] = sum(p.numel() for p in model.parameters())
    report["memory_after_setup_mib"] = mem.start()
    save()
    vocab = shape["model"]["vocab_size"]
    gen = torch.Generator().manual_seed(args.seed)

    def prefill():
        n = shape["prefill_tokens"]
        ids = random_ids(gen, vocab, 1, n, device=device)
        start = mem.start()
        with torch.inference_mode():
            t = timed(device, args.repeats,
                      lambda k, s: model(input_ids=ids, use_cache=True, logits_to_keep=1))
        return {"tokens": n, "timing": t, "tokens_per_s": n / t["median_s"],
                "memory": mem.peak(start)}

    section("prefill", prefill)

    def decode(batch):
        ctx, n = shape["decode_context"], shape["decode_tokens"]
        prompt = random_ids(gen, vocab, 1, ctx, device=device).expand(batch, ctx).contiguous()
        start = mem.start()

        def prepare(k):
            o = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
            return o.past_key_values, sample(o.logits[:, -1, :])

        def run(k, state):
            cache, first = state
            decode_steps(model, cache, first, n if k > 0 else min(n, 4))

        with torch.inference_mode():
            t = timed(device, args.repeats, run, prepare)
        tokens = batch * n
        return {"batch": batch, "context": ctx, "new_tokens": n, "timing": t,
                "tokens_per_s": tokens / t["median_s"], "ms_per_step": t["median_s"] / n * 1e3,
                "memory": mem.peak(start)}

    report["decode"] = []
    for b in shape["decode_batches"]:
        try:
            report["decode"].append(decode(b))
        except Exception as e:  # noqa: BLE001
            report["decode"].append({"batch": b, "error": f"{type(e).__name__}: {e}"})
        save()

    def tree():
        br, new = shape["tree_branching"], shape["tree_new_tokens"]
        nodes = [random_ids(gen, vocab, shape["tree_root_prompt"], device=device)]
        start = mem.start()
        sync(device)
        t = time.perf_counter()
        sequences = generated = prefill_tokens = 0
        with torch.inference_mode():
            for depth in range(shape["tree_depth"]):
                rows = torch.stack([p for p in nodes for _ in range(br)])
                o = model(input_ids=rows, use_cache=True, logits_to_keep=1)
                prefill_tokens += rows.numel()
                first = sample(o.logits[:, -1, :])
                toks = torch.cat([first, decode_steps(model, o.past_key_values, first, new - 1)],
                                 dim=1)
                sequences += rows.shape[0]
                generated += toks.numel()
                if depth + 1 < shape["tree_depth"]:
                    extra = random_ids(gen, vocab, rows.shape[0], shape["tree_level_prompt"],
                                       device=device)
                    nodes = list(torch.cat([rows, toks, extra], dim=1))
        sync(device)
        seconds = time.perf_counter() - t
        return {"sequences": sequences, "new_tokens_each": new, "seconds": seconds,
                "generated_tokens": generated, "tokens_per_s": generated / seconds,
                "prefill_computed": prefill_tokens, "memory": mem.peak(start)}

    def lora_sft_step():
        lora = shape["lora"]
        start = mem.start()
        pm = lora_model(model, lora["rank"], lora["alpha"], lora["dropout"], lora["targets"])
        opt = adamw(pm, lr=1e-4)
        b, p, c = shape["sft_sequences"], shape["sft_prompt"], shape["sft_completion"]
        ids = random_ids(gen, vocab, b, p + c, device=device)
        labels = ids.clone()
        labels[:, :p] = -100
        losses = []

        def run(k, state):
            losses.append(sft_step(pm, opt, ids, labels))

        t = timed(device, args.repeats, run)
        return {"sequences": b, "seq_len": p + c, "loss_positions": b * c, "timing": t,
                "tokens_per_s": b * (p + c) / t["median_s"], "losses": losses,
                "trainable_parameters": sum(x.numel() for x in pm.parameters() if x.requires_grad),
                "memory": mem.peak(start), "gradient_checkpointing": False}

    # The tree before the SFT step: get_peft_model injects the LoRA layers into `model`.
    section("tree", tree)
    if not args.skip_sft:
        section("sft_step", lora_sft_step)
    report["complete"] = True
    report["wall_s"] = time.perf_counter() - t0
    save()
    mem.close()
    print(json.dumps({k: report[k] for k in ("device", "device_name", "versions", "setup_s")}))
    for name in ("prefill", "sft_step", "tree"):
        r = report.get(name, {})
        print(f"torch {name}: " + (r["error"] if "error" in r else
                                   f"{r['tokens_per_s']:.1f} tok/s, peak {r['memory']}"))
    for r in report["decode"]:
        print(f"torch decode b{r['batch']}: " + (r["error"] if "error" in r else
              f"{r['tokens_per_s']:.1f} tok/s, {r['ms_per_step']:.2f} ms/step"))


if __name__ == "__main__":
    main()
