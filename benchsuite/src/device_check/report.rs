//! The report as a table for a terminal.

use std::fmt::Write;

use super::speed::Section;
use super::Report;

fn mib(x: f64) -> String {
    if x.is_finite() {
        format!("{:.0} MiB", x)
    } else {
        "n/a".into()
    }
}

fn failed<T>(s: &Section<T>) -> Option<&str> {
    match s {
        Section::Failed { error } => Some(error),
        Section::Done(_) => None,
    }
}

/// Every figure of `r` in a few aligned lines.
pub fn table(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "malt bench device on {} ({}), roofline {:.2e} B/s, {:.3e} FLOP/s{}",
        r.device,
        r.device_name,
        r.roofline.bandwidth_bytes_per_s,
        r.roofline.peak_flops,
        if r.complete { "" } else { " [incomplete]" }
    );
    if let Some(c) = &r.correctness {
        let _ = writeln!(
            o,
            "correctness against {} on a {} (seed {}): {}",
            c.compared_with,
            c.model,
            c.seed,
            if c.pass { "PASS" } else { "FAIL" }
        );
        for v in c.logits.iter().chain(&c.gradients) {
            match (&v.agreement, &v.error) {
                (Some(a), _) => {
                    let _ = writeln!(
                        o,
                        "  {:<30} {:<4} rel L2 {:.2e} (tolerance {:.0e}), max abs {:.2e}, max rel {:.2e}  {}",
                        v.what,
                        v.dtype,
                        a.rel_l2_err,
                        a.tolerance,
                        a.max_abs_err,
                        a.max_rel_err,
                        if v.pass { "pass" } else { "FAIL" }
                    );
                }
                (None, e) => {
                    let _ = writeln!(
                        o,
                        "  {:<30} {:<4} FAIL: {}",
                        v.what,
                        v.dtype,
                        e.as_deref().unwrap_or("?")
                    );
                }
            }
        }
        for t in &c.tree {
            let _ = writeln!(
                o,
                "  {:<30} {:<4} {} sequences, two runs equal: {}, identical to the CPU's: {}/{}{}  {}",
                "tree 3-3-3, one seed",
                t.dtype,
                t.sequences,
                t.runs_equal,
                t.identical_to_cpu,
                t.sequences,
                t.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default(),
                if t.pass { "pass" } else { "FAIL" }
            );
        }
    }
    let Some(s) = &r.speed else {
        return o;
    };
    let _ = writeln!(
        o,
        "speed, shape {} in {} ({:.2e} parameters, {:.1} GB), weights drawn in {:.1}s; memory: {}",
        s.shape.name,
        s.weights_dtype,
        s.parameters as f64,
        s.weight_bytes as f64 / 1e9,
        s.setup_s,
        s.memory_method
    );
    if let Some(p) = &s.prefill {
        match p.done() {
            Some(p) => {
                let _ = writeln!(
                    o,
                    "  prefill {:>5} tokens        {:>10.1} tok/s  {:>8.1} ms       MFU {:>5.1} %          peak {}",
                    p.tokens,
                    p.tokens_per_s,
                    p.timing.median_s * 1e3,
                    p.mfu * 100.0,
                    mib(p.memory.peak_mib)
                );
            }
            None => {
                let _ = writeln!(o, "  prefill FAILED: {}", failed(p).unwrap_or("?"));
            }
        }
    }
    for d in &s.decode {
        match d.done() {
            Some(d) => {
                let _ = writeln!(
                    o,
                    "  decode batch {:<3} ({:>3} new) {:>10.1} tok/s  {:>8.2} ms/step  roofline {:>5.1} % ({}) peak {}",
                    d.batch,
                    d.new_tokens,
                    d.tokens_per_s,
                    d.ms_per_step,
                    d.roofline_fraction * 100.0,
                    d.bound,
                    mib(d.memory.peak_mib)
                );
            }
            None => {
                let _ = writeln!(o, "  decode FAILED: {}", failed(d).unwrap_or("?"));
            }
        }
    }
    if let Some(t) = &s.sft_step {
        match t.done() {
            Some(t) => {
                let _ = writeln!(
                    o,
                    "  LoRA SFT step {}x{}         {:>10.1} tok/s  {:>8.1} ms       MFU {:>5.1} %          peak {} (losses {:?})",
                    t.sequences,
                    t.seq_len,
                    t.tokens_per_s,
                    t.timing.median_s * 1e3,
                    t.mfu * 100.0,
                    mib(t.memory.peak_mib),
                    t.losses.iter().map(|l| (l * 1e4).round() / 1e4).collect::<Vec<_>>()
                );
            }
            None => {
                let _ = writeln!(o, "  LoRA SFT step FAILED: {}", failed(t).unwrap_or("?"));
            }
        }
    }
    if let Some(t) = &s.tree {
        match t.done() {
            Some(t) => {
                let _ = writeln!(
                    o,
                    "  tree, {} sequences x {}      {:>10.1} tok/s  {:>8.2} s        roofline {:>5.1} % (approx.) peak {}; prefill {} / minimum {}",
                    t.sequences,
                    t.new_tokens_each,
                    t.tokens_per_s,
                    t.seconds,
                    t.roofline_fraction * 100.0,
                    mib(t.memory.peak_mib),
                    t.prefill_computed,
                    t.prefill_minimum
                );
            }
            None => {
                let _ = writeln!(o, "  tree FAILED: {}", failed(t).unwrap_or("?"));
            }
        }
    }
    o
}
