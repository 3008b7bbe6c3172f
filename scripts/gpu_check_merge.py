#!/usr/bin/env python3
"""Merges `malt bench device`'s report and scripts/gpu_check_torch.py's into one: malt / PyTorch
ratios of tokens/s and peak memory, roofline fractions of both (computed from malt's FLOP and
byte counts for the same shape and workload), and the verdict on every goal of issue 15:
decode batch 1 >= 60 % of the bandwidth roofline, prefill and the SFT step >= 40 % MFU, and
malt's tokens/s at least PyTorch + PEFT's at no more memory. Standard library only.

    python3 scripts/gpu_check_merge.py --malt malt-device.json --torch torch.json \
        --out gpu-check.json [--mode gpu|cpu-smoke] [--malt-exit N] [--torch-exit N]
"""

import argparse
import json
import math

DECODE_B1_ROOFLINE = 0.60
PREFILL_MFU = 0.40
SFT_MFU = 0.40


def load(path):
    try:
        with open(path) as f:
            return json.load(f), None
    except (OSError, ValueError) as e:
        return None, f"{type(e).__name__}: {e}"


def ok(section):
    """The section if it ran (a dict without `error`), else None."""
    if isinstance(section, dict) and "error" not in section:
        return section
    return None


def num(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def ratio(a, b):
    a, b = num(a), num(b)
    return a / b if a is not None and b not in (None, 0) else None


def shape_mismatches(malt_shape, torch_shape):
    """Fields where the two reports' workloads differ (empty: same shapes)."""
    if not malt_shape or not torch_shape:
        return ["a report has no shape"]
    out = []
    for k, v in malt_shape.items():
        if k == "model":
            for mk, mv in v.items():
                if mk == "rope_llama3":
                    continue  # torch names the scaling itself: compared below
                tv = torch_shape["model"].get(mk)
                if tv != mv:
                    out.append(f"model.{mk}: malt {mv} / torch {tv}")
            if bool(v.get("rope_llama3")) != bool(torch_shape["model"].get("rope_scaling")):
                out.append("model.rope scaling differs")
        elif k == "lora":
            t = torch_shape["lora"]
            if (v["rank"], v["alpha"], round(v["dropout"], 6), sorted(v["targets"])) != (
                t["rank"], t["alpha"], round(t["dropout"], 6), sorted(t["targets"])
            ):
                out.append(f"lora: malt {v} / torch {t}")
        elif k != "name" and torch_shape.get(k) != v:
            out.append(f"{k}: malt {v} / torch {torch_shape.get(k)}")
    return out


def decode_of(report, batch, key="decode"):
    for d in (report or {}).get(key) or []:
        if isinstance(d, dict) and d.get("batch") == batch:
            return d
    return None


def merge(malt, torch_r, mode):
    speed = (malt or {}).get("speed") or {}
    peak = ((malt or {}).get("roofline") or {}).get("peak_flops")
    rows = []

    def row(name, m, t, malt_fraction, torch_fraction, fraction_kind):
        m, t = ok(m), ok(t)
        mm = (m or {}).get("memory", {}).get("peak_mib")
        tm = (t or {}).get("memory", {}).get("peak_mib")
        rows.append({
            "workload": name,
            "malt_tokens_per_s": (m or {}).get("tokens_per_s"),
            "torch_tokens_per_s": (t or {}).get("tokens_per_s"),
            "tokens_per_s_ratio": ratio((m or {}).get("tokens_per_s"), (t or {}).get("tokens_per_s")),
            "malt_peak_mib": mm,
            "torch_peak_mib": tm,
            "torch_max_reserved_mib": (t or {}).get("memory", {}).get("torch_max_reserved_mib"),
            "peak_memory_ratio": ratio(mm, tm),
            "fraction_kind": fraction_kind,
            "malt_fraction": malt_fraction(m) if m else None,
            "torch_fraction": torch_fraction(m, t) if m and t else None,
            "malt_error": None if m else ((speed_section_error(name)) or "missing"),
            "torch_error": None if t else (error_of(torch_r, name) or "missing"),
        })

    def speed_section_error(name):
        s = section_of(speed, name)
        return s.get("error") if isinstance(s, dict) else None

    def mfu_of(m, t):
        return ratio(ratio(m.get("flops"), t["timing"]["median_s"]), peak)

    row("prefill", speed.get("prefill"), (torch_r or {}).get("prefill"),
        lambda m: m.get("mfu"), mfu_of, "MFU")
    for b in sorted({d.get("batch") for d in speed.get("decode") or [] if isinstance(d, dict)}
                    | {d.get("batch") for d in (torch_r or {}).get("decode") or []} - {None}):
        row(f"decode b{b}", decode_of(speed, b), decode_of(torch_r, b),
            lambda m: m.get("roofline_fraction"),
            lambda m, t: ratio(t.get("tokens_per_s"), m.get("roofline_tokens_per_s")),
            "roofline (bandwidth/compute floor)")
    row("tree", speed.get("tree"), (torch_r or {}).get("tree"),
        lambda m: m.get("roofline_fraction"),
        lambda m, t: ratio(m.get("floor_s"), t.get("seconds")), "roofline (approx.)")
    row("sft_step", speed.get("sft_step"), (torch_r or {}).get("sft_step"),
        lambda m: m.get("mfu"), mfu_of, "MFU")

    by = {r["workload"]: r for r in rows}
    correctness = (malt or {}).get("correctness") or {}
    goals = [
        goal("correctness: device matches the CPU (logits, LoRA gradients, tree)",
             correctness.get("pass"), None, None),
        goal(f"decode b1 >= {DECODE_B1_ROOFLINE:.0%} of the bandwidth roofline",
             None, by.get("decode b1", {}).get("malt_fraction"), DECODE_B1_ROOFLINE),
        goal(f"prefill >= {PREFILL_MFU:.0%} MFU", None,
             by.get("prefill", {}).get("malt_fraction"), PREFILL_MFU),
        goal(f"LoRA SFT step >= {SFT_MFU:.0%} MFU", None,
             by.get("sft_step", {}).get("malt_fraction"), SFT_MFU),
    ]
    for r in rows:
        goals.append(goal(f"{r['workload']}: tokens/s >= PyTorch+PEFT's", None,
                          r["tokens_per_s_ratio"], 1.0))
        mem = r["peak_memory_ratio"]
        goals.append({"goal": f"{r['workload']}: peak memory <= PyTorch+PEFT's",
                      "value": mem, "threshold": 1.0,
                      "pass": None if mem is None else mem <= 1.0})
    verdicts = [g["pass"] for g in goals]
    return {
        "mode": mode,
        "note": ("CPU smoke test of the flow on the tiny shape: these figures are not "
                 "performance results" if mode == "cpu-smoke" else
                 "GPU run: llama8b shape, bf16"),
        "device": (malt or {}).get("device"),
        "device_name": (malt or {}).get("device_name") or (torch_r or {}).get("device_name"),
        "torch_versions": (torch_r or {}).get("versions"),
        "roofline": (malt or {}).get("roofline"),
        "malt_complete": (malt or {}).get("complete"),
        "torch_complete": (torch_r or {}).get("complete"),
        "shape_mismatches": shape_mismatches(speed.get("shape"), (torch_r or {}).get("shape")),
        "correctness": correctness,
        "workloads": rows,
        "goals": goals,
        "goals_passed": sum(v is True for v in verdicts),
        "goals_failed": sum(v is False for v in verdicts),
        "goals_unknown": sum(v is None for v in verdicts),
    }


def section_of(speed, name):
    if name.startswith("decode b"):
        return decode_of(speed, int(name[len("decode b"):]))
    return speed.get(name)


def error_of(report, name):
    s = section_of(report or {}, name)
    return s.get("error") if isinstance(s, dict) else None


def goal(text, verdict, value, threshold):
    if verdict is not None:
        return {"goal": text, "value": verdict, "threshold": True, "pass": bool(verdict)}
    value = num(value)
    return {"goal": text, "value": value, "threshold": threshold,
            "pass": None if value is None else value >= threshold}


def fmt(x, spec=".1f", suffix=""):
    return "n/a" if num(x) is None else f"{x:{spec}}{suffix}"


def summary(m):
    lines = [f"gpu-check ({m['note']}) on {m['device']} ({m['device_name']}); "
             f"torch {m['torch_versions']}"]
    if m["shape_mismatches"]:
        lines.append("SHAPES DIFFER: " + "; ".join(m["shape_mismatches"]))
    lines.append(f"{'workload':<11} {'malt tok/s':>11} {'torch tok/s':>12} {'ratio':>6} "
                 f"{'malt MiB':>9} {'torch MiB':>10} {'mem ratio':>9}  fraction of roofline "
                 f"(malt / torch)")
    for r in m["workloads"]:
        lines.append(
            f"{r['workload']:<11} {fmt(r['malt_tokens_per_s']):>11} "
            f"{fmt(r['torch_tokens_per_s']):>12} {fmt(r['tokens_per_s_ratio'], '.2f'):>6} "
            f"{fmt(r['malt_peak_mib'], '.0f'):>9} {fmt(r['torch_peak_mib'], '.0f'):>10} "
            f"{fmt(r['peak_memory_ratio'], '.2f'):>9}  "
            f"{fmt(100 * r['malt_fraction'] if num(r['malt_fraction']) is not None else None, '.1f', '%')}"
            f" / {fmt(100 * r['torch_fraction'] if num(r['torch_fraction']) is not None else None, '.1f', '%')}"
            f" {r['fraction_kind']}"
            + (f"  [malt: {r['malt_error']}]" if r["malt_error"] else "")
            + (f"  [torch: {r['torch_error']}]" if r["torch_error"] else ""))
    for g in m["goals"]:
        v = g["pass"]
        mark = "PASS" if v is True else "FAIL" if v is False else "n/a "
        val = g["value"] if isinstance(g["value"], bool) else fmt(g["value"], ".3f")
        lines.append(f"  {mark} {g['goal']} (value {val})")
    lines.append(f"goals: {m['goals_passed']} pass, {m['goals_failed']} fail, "
                 f"{m['goals_unknown']} not measured")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--malt", required=True)
    ap.add_argument("--torch", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", default="gpu", choices=["gpu", "cpu-smoke"])
    ap.add_argument("--malt-exit", type=int)
    ap.add_argument("--torch-exit", type=int)
    a = ap.parse_args()
    malt, malt_err = load(a.malt)
    torch_r, torch_err = load(a.torch)
    m = merge(malt, torch_r, a.mode)
    m["malt_exit"], m["torch_exit"] = a.malt_exit, a.torch_exit
    m["malt_report_error"], m["torch_report_error"] = malt_err, torch_err
    m["malt_report"], m["torch_report"] = malt, torch_r
    with open(a.out, "w") as f:
        json.dump(m, f, indent=2)
    print(summary(m))
    if malt_err:
        print(f"malt report unreadable: {malt_err}")
    if torch_err:
        print(f"torch report unreadable: {torch_err}")


if __name__ == "__main__":
    main()
