"""The PyTorch + PEFT pieces that scripts/gpu_check_torch.py (the GPU check's peer) and
scripts/torch_peer.py (the peer of `malt bench train --torch`) share: the LoRA wrap, one LoRA SFT
step the way a PyTorch user writes it, and the process's resident-memory high-water mark.

Imported from the script's own folder (Python puts it on sys.path), so `malt bench train`
writes this file beside the peer it runs.
"""

import torch

# malt's LoRA targets (`Proj::ALL`) by their PEFT module names.
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def status_mib(field):
    """A `/proc/self/status` field (VmRSS:, VmHWM:) in MiB; NaN where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def reset_hwm():
    """Resets VmHWM to the current RSS (`5` to /proc/self/clear_refs, Linux >= 4.0), as malt's
    bench does before each phase, so the high-water mark after a section is that section's own.
    False where the kernel refuses it (VmHWM then covers the whole process)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def lora_model(model, rank, alpha, dropout, targets):
    """`model` with PEFT LoRA adapters on `targets`, in training mode."""
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(model, LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
        task_type="CAUSAL_LM"))
    pm.train()
    return pm


def adamw(pm, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    """torch's AdamW over the trainable (LoRA) parameters."""
    return torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr,
                             betas=betas, eps=eps, weight_decay=weight_decay)


def sft_step(pm, opt, ids, labels):
    """One LoRA SFT step: transformers' causal-LM loss (mean over the positions whose label is
    not -100), backward, the optimiser's step. Returns the loss."""
    loss = pm(input_ids=ids, labels=labels, use_cache=False).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()
