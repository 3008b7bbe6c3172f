#!/usr/bin/env python3
"""Merges `malt bench device`'s report and scripts/gpu_check_torch.py's into one: malt / PyTorch
ratios of tokens/s and peak memory, roofline fractions of both (computed from malt's FLOP and
byte counts for the same shape and workload), and the verdict on every goal of issue 15:
decode batch 1 >= 60 % of the bandwidth roofline, prefill and the SFT step >= 40 % MFU, and
malt's tokens/s at least PyTorch + PEFT's at no more memory. With --reference-log, also the
`reference` entry: the reference-agreement tests of issue 26 (malt-model's and malt-train's
`tests/reference.rs` binaries) as scripts/gpu-check ran them, pass/fail and every figure they
printed (`check [DEVICE] WHAT: MEASURE = VALUE (tolerance TOL): ok|FAIL` lines). Without
--malt and --torch the report holds that entry alone. Standard library only.

    python3 scripts/gpu_check_merge.py --malt malt-device.json --torch torch.json \
        --out gpu-check.json [--mode gpu|cpu-smoke] [--malt-exit N] [--torch-exit N] \
        [--reference-log reference.log --reference-device cuda:0 \
         --reference-exit reference-model=RC:SECONDS --reference-exit reference-train=RC:SECONDS]
"""

import argparse
import json
import math
import re

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


# WHAT may hold ": ", MEASURE holds no colon.
CHECK = re.compile(r"check \[(?P<device>[^\]]+)\] (?P<what>.+): (?P<measure>[^:]+?) = "
                   r"(?P<value>\S+) \(tolerance (?P<tolerance>\S+)\): (?P<verdict>ok|FAIL)$")
NOT_RUN = re.compile(r"not-run \[(?P<device>[^\]]+)\] (?P<what>.+?): (?P<reason>.*)$")
RESULT = re.compile(r"test result: (?P<verdict>\w+)\. (?P<passed>\d+) passed; (?P<failed>\d+) failed")


def parse_exit(spec):
    """`NAME=RC:SECONDS` (from gpu-check) as a dict; RC 124/137 is a timeout."""
    name, _, rest = spec.partition("=")
    rc, _, secs = rest.partition(":")
    rc = int(rc) if rc.lstrip("-").isdigit() else None
    return {"binary": name, "exit": rc, "seconds": int(secs) if secs.isdigit() else None,
            "timed_out": rc in (124, 137), "missing": rc == 127}


def reference_report(log_path, exits, device):
    """The `reference` entry: pass/fail of the reference-agreement test binaries and the
    figures their checks printed."""
    try:
        with open(log_path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        return {"pass": False, "device": device, "error": f"{type(e).__name__}: {e}",
                "binaries": exits}
    checks, not_run, skipped, results, failed_tests, panics = [], [], [], [], [], []
    in_failures = False
    for i, line in enumerate(lines):
        # With --nocapture a check's line can follow libtest's `test NAME ... ` on one line.
        k = line.find("check [")
        c = CHECK.search(line[k:]) if k >= 0 else None
        if c:
            d = c.groupdict()
            value, tol = num_of(d["value"]), num_of(d["tolerance"])
            checks.append({"device": d["device"], "what": d["what"], "measure": d["measure"],
                           "value": value, "tolerance": tol, "ok": d["verdict"] == "ok"})
        k = line.find("not-run [")
        n = NOT_RUN.search(line[k:]) if k >= 0 else None
        if n:
            not_run.append(n.groupdict())
        if "SKIPPED" in line:
            skipped.append(line.strip(" !"))
        r = RESULT.search(line)
        if r:
            results.append({"verdict": r["verdict"], "passed": int(r["passed"]),
                            "failed": int(r["failed"])})
        if "panicked at" in line:
            msg = [line]
            for nxt in lines[i + 1:i + 8]:
                if not nxt.strip() or nxt.startswith(("test ", "FAILED", "ok")) or "check [" in nxt:
                    break
                msg.append(nxt)
            panics.append("\n".join(msg))
        if line.strip() == "failures:":
            in_failures = True
            continue
        if in_failures:
            if line.startswith("    ") and line.strip() and " " not in line.strip():
                failed_tests.append(line.strip())
            elif line.strip() and not line.startswith("----"):
                in_failures = False
    failed_checks = [c for c in checks if not c["ok"]]
    ran = [e for e in exits if not e["missing"]]
    ok = (len(exits) == 2 and all(e["exit"] == 0 for e in exits) and not failed_checks
          and len(results) == len(exits) and all(r["verdict"] == "ok" for r in results)
          and bool(checks))
    worst = max((c for c in checks if c["value"] is not None and c["tolerance"]),
                key=lambda c: c["value"] / c["tolerance"], default=None)
    return {
        "pass": ok,
        "device": device,
        "note": ("tiny random Llama and Qwen2 (logits, adapter logits, greedy decoding, SFT "
                 "and DPO losses and LoRA gradients, the trainer's step) on this device "
                 "against transformers + PEFT + TRL fixtures; SmolLM2 checks run on the CPU "
                 "only where its GGUF is cached"),
        "binaries": exits,
        "binaries_ran": len(ran),
        "tests": results,
        "failed_tests": sorted(set(failed_tests)),
        "checks_total": len(checks),
        "checks_failed": len(failed_checks),
        "worst_relative_to_tolerance": worst,
        "not_run_on_device": not_run,
        "skipped": sorted(set(skipped)),
        "panics": panics[:20],
        "checks": checks,
    }


def num_of(text):
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def reference_summary(r):
    if r is None:
        return []
    mark = "PASS" if r["pass"] else "FAIL"
    lines = [f"  {mark} reference agreement (issue 26) on {r['device']}: "
             f"{r.get('checks_total', 0)} checks, {r.get('checks_failed', 0)} failed; "
             f"tests {r.get('tests')}"]
    if r.get("error"):
        lines.append(f"       {r['error']}")
    for e in r.get("binaries") or []:
        how = ("missing" if e["missing"] else "timed out" if e["timed_out"]
               else f"exit {e['exit']}")
        lines.append(f"       {e['binary']}: {how} after {e['seconds']} s")
    w = r.get("worst_relative_to_tolerance")
    if w:
        lines.append(f"       closest to its tolerance: {w['what']}: {w['measure']} = "
                     f"{w['value']:.3e} (tolerance {w['tolerance']:.1e})")
    for c in [c for c in r.get("checks", []) if not c["ok"]][:10]:
        lines.append(f"       FAILED: {c['what']}: {c['measure']} = {c['value']} "
                     f"(tolerance {c['tolerance']})")
    for t in r.get("failed_tests", []):
        lines.append(f"       failed test: {t}")
    for p in r.get("panics", [])[:3]:
        lines.append("       panic: " + " | ".join(p.splitlines()[:3])[:300])
    for n in r.get("not_run_on_device", []):
        lines.append(f"       not run on {n['device']}: {n['what']}: {n['reason'][:200]}")
    for s in r.get("skipped", []):
        lines.append(f"       {s[:200]}")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--malt")
    ap.add_argument("--torch")
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", default="gpu", choices=["gpu", "cpu-smoke"])
    ap.add_argument("--malt-exit", type=int)
    ap.add_argument("--torch-exit", type=int)
    ap.add_argument("--reference-log")
    ap.add_argument("--reference-device")
    ap.add_argument("--reference-exit", action="append", default=[],
                    help="NAME=RC:SECONDS of each reference test binary")
    a = ap.parse_args()
    if (a.malt is None) != (a.torch is None):
        ap.error("--malt and --torch go together")
    ref = None
    if a.reference_log:
        ref = reference_report(a.reference_log, [parse_exit(e) for e in a.reference_exit],
                               a.reference_device)
    if a.malt is None:
        if ref is None:
            ap.error("nothing to report: give --malt and --torch, or --reference-log")
        m = {"mode": a.mode, "reference": ref}
        with open(a.out, "w") as f:
            json.dump(m, f, indent=2)
        print("\n".join([f"gpu-check ({a.mode}): reference agreement"]
                        + reference_summary(ref)))
        return
    malt, malt_err = load(a.malt)
    torch_r, torch_err = load(a.torch)
    m = merge(malt, torch_r, a.mode)
    if ref is not None:
        m["reference"] = ref
        m["goals"].insert(0, goal(f"reference agreement (issue 26) on {ref['device']}: tiny "
                                  f"models match the transformers/PEFT/TRL fixtures",
                                  ref["pass"], None, None))
        verdicts = [g["pass"] for g in m["goals"]]
        m["goals_passed"] = sum(v is True for v in verdicts)
        m["goals_failed"] = sum(v is False for v in verdicts)
        m["goals_unknown"] = sum(v is None for v in verdicts)
    m["malt_exit"], m["torch_exit"] = a.malt_exit, a.torch_exit
    m["malt_report_error"], m["torch_report_error"] = malt_err, torch_err
    m["malt_report"], m["torch_report"] = malt, torch_r
    with open(a.out, "w") as f:
        json.dump(m, f, indent=2)
    print(summary(m))
    print("\n".join(reference_summary(m.get("reference"))))
    if malt_err:
        print(f"malt report unreadable: {malt_err}")
    if torch_err:
        print(f"torch report unreadable: {torch_err}")


if __name__ == "__main__":
    main()
