#!/usr/bin/env python3
"""The PyTorch peer of `malt bench train --torch PYTHON`: LoRA SFT (transformers + PEFT) or DPO
(TRL's log-prob head and sigmoid loss) steps on the batch malt's bench measured, read from the
JSON file the bench writes (the same token ids, the same model file).

Pinned as issue 29 asks, so its step time can be checked against the figure measured on the
2-core reference machine (11.3-11.8 s a step for SFT, 8 x 256 tokens, f32): torch.set_num_threads
(2 by default), `attn_implementation="sdpa"`, f32 base weights (`--dtype bf16` for bf16 ones),
no gradient checkpointing, PEFT LoRA of the bench's rank, alpha and projections (r 8, alpha 16,
all 7 by default) without dropout, torch's AdamW with malt's hyper-parameters.

- SFT: `model(input_ids, labels=...)` with the prompt's labels -100, as a PyTorch user writes it
  (transformers computes logits at every position and the mean cross-entropy of the completion's).
- DPO: the first half of the batch chosen, the second rejected (malt's layout); per-sequence
  log-prob sums from TRL's fused LM head (`add_fused_lm_head`, the outputs TRL's DPOTrainer asks
  for), TRL's sigmoid loss -log sigmoid(beta * (chosen - rejected log-ratios)) against reference
  log-probs of zero, as malt's bench does: the reference pass is precomputed in both trainers
  (TRL's `precompute_ref_log_probs`, malt's reference cache) and is not part of a step.

Output, one JSON object a line on stdout (the bench reads them; progress goes to stderr):
  {"kind": "setup", "versions": {...}, "threads": 2, "dtype": "float32", ...}
  {"kind": "step", "step": 0, "warmup": true, "seconds": ..., "cpu_seconds": ..., "tokens": ...,
   "loss": ...}                                           one per step, warm-up steps first
  {"kind": "done", "peak_rss_mib": ..., "peak_delta_mib": ..., "memory_method": ...,
   "process_peak_rss_mib": ...}
The peak is VmHWM after a reset once the model, adapter and optimiser exist (malt's method), so it
is the training steps' own; `process_peak_rss_mib` (getrusage) includes loading the GGUF.

    PYTHON scripts/torch_peer.py --check          # the imports and their versions, one JSON line
    PYTHON scripts/torch_peer.py --batch batch.json --steps 3 --warmup 1 --dtype f32
"""

import argparse
import json
import resource
import sys
import time

MODULES = ("torch", "transformers", "peft", "trl", "gguf")
DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def emit(obj):
    print(json.dumps(obj), flush=True)


def mib(x):
    """A MiB figure for the JSON line: null where /proc could not say (NaN is not JSON)."""
    return None if x != x else x


def versions():
    """Each peer module's version; exits 3 naming the ones that cannot be imported."""
    import importlib
    from importlib.metadata import PackageNotFoundError, version

    found, missing = {}, []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError as e:
            missing.append(f"{name} ({e})")
            continue
        try:
            # gguf has no __version__; the installed distribution's is the one to report.
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "?"
    if missing:
        print(f"torch_peer: {sys.executable} cannot import " + ", ".join(missing), file=sys.stderr)
        sys.exit(3)
    return found


def load_batch(path):
    with open(path) as f:
        b = json.load(f)
    if b.get("format") != 1:
        sys.exit(f"torch_peer: {path}: batch format {b.get('format')!r}, this script reads 1")
    return b


def load_model(path, dtype):
    """The model malt measured, by its file: a .gguf (dequantised by transformers through the
    gguf package) or a Hugging Face directory."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    p = Path(path)
    kw = {"dtype": dtype, "attn_implementation": "sdpa"}
    if p.is_file():
        model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, **kw)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(p), **kw)
    # Pinned: no recomputation in the backward (malt's bench row `malt` has none either).
    # transformers 5 renamed the method; the old name warns.
    getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()
    return model


def checkpointing(model):
    """Whether the backward recomputes activations (the attribute's name changed in
    transformers 5)."""
    flag = getattr(model, "is_activation_checkpointing", None)
    return model.is_gradient_checkpointing if flag is None else flag


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="import the peer's modules and print their versions")
    ap.add_argument("--batch", help="the batch file `malt bench train` writes")
    ap.add_argument("--steps", type=int, default=3, help="measured steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--dtype", default="f32", choices=sorted(DTYPES),
                    help="the dtype of the base weights (the adapter trains in it too)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    found = versions()
    if args.check:
        emit({"kind": "check", "versions": found, "python": sys.executable})
        return
    if not args.batch:
        ap.error("--batch is required (or --check)")
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--steps and --threads must be >= 1, --warmup >= 0")

    import torch
    import torch.nn.functional as F

    from torch_lora import adamw, lora_model, reset_hwm, sft_step, status_mib

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = load_batch(args.batch)
    phase, p, mb = batch["phase"], batch["prompt_len"], batch["micro_batch"]
    seqs = batch["sequences"]
    want = mb if phase == "sft" else 2 * mb
    if phase not in ("sft", "dpo") or len(seqs) != want or len({len(s) for s in seqs}) != 1:
        sys.exit(f"torch_peer: {args.batch}: expected {want} sequences of one length for {phase}")
    dtype = getattr(torch, DTYPES[args.dtype])

    t = time.perf_counter()
    model = load_model(batch["model"], dtype)
    load_s = time.perf_counter() - t
    lora, opt_cfg = batch["lora"], batch["adamw"]
    if phase == "dpo":
        from trl.trainer.utils import add_fused_lm_head

        # Before the PEFT wrap, as TRL does; the per-token outputs TRL's DPOTrainer computes.
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    pm = lora_model(model, lora["rank"], lora["alpha"], 0.0, lora["targets"])
    opt = adamw(pm, lr=opt_cfg["lr"], betas=(opt_cfg["beta1"], opt_cfg["beta2"]),
                eps=opt_cfg["eps"], weight_decay=opt_cfg["weight_decay"])
    ids = torch.tensor(seqs, dtype=torch.long)
    labels = ids.clone()
    labels[:, :p] = -100
    tokens = ids.numel()

    if phase == "sft":
        def step():
            return sft_step(pm, opt, ids, labels)
    else:
        beta = batch["dpo_beta"]
        zero = torch.zeros(mb)

        def step():
            out = pm(input_ids=ids, labels=labels, fused_lm_head=True, use_cache=False)
            logps = out.log_probs.sum(dim=1)
            chosen, rejected = logps.chunk(2, dim=0)
            # TRL's `sigmoid` loss (DPOTrainer._compute_loss, reverse-KL scores), reference
            # log-probs precomputed (here zero, as in malt's bench).
            delta = (chosen - zero) - (rejected - zero)
            loss = (-F.logsigmoid(beta * delta)).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()

    emit({"kind": "setup", "versions": found, "threads": torch.get_num_threads(),
          "dtype": str(dtype).removeprefix("torch."), "attn_implementation":
          model.config._attn_implementation, "gradient_checkpointing":
          checkpointing(model), "load_s": load_s, "phase": phase,
          "trainable_parameters": sum(x.numel() for x in pm.parameters() if x.requires_grad),
          "tokens_per_step": tokens})
    memory_ok = reset_hwm()
    rss0 = status_mib("VmRSS:")
    for k in range(args.warmup + args.steps):
        t, c = time.perf_counter(), time.process_time()
        loss = step()
        emit({"kind": "step", "step": k, "warmup": k < args.warmup,
              "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,
              "tokens": tokens, "loss": loss})
        print(f"torch_peer: {phase} step {k} loss {loss:.5f}", file=sys.stderr, flush=True)
    hwm = status_mib("VmHWM:")
    emit({"kind": "done", "peak_rss_mib": mib(hwm), "peak_delta_mib": mib(hwm - rss0),
          "memory_method": "clear_refs-reset" if memory_ok else "vmhwm-cumulative",
          # ru_maxrss is in KiB on Linux.
          "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0})


if __name__ == "__main__":
    main()
