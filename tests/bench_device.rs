//! `malt bench device --device cpu --shape tiny`: the device check's report has every section
//! and field, its numbers are finite and positive, and the correctness checks (CPU against the
//! CPU here, which the report must say) pass.

use std::process::Command;

use serde_json::Value;

const MALT: &str = env!("CARGO_BIN_EXE_malt");

fn positive(v: &Value, path: &str) -> f64 {
    let x = v
        .pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing or not a number in {v:#}"));
    assert!(x.is_finite() && x > 0.0, "{path} = {x}");
    x
}

#[test]
fn the_tiny_cpu_check_reports_every_section_with_sane_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let run = Command::new(MALT)
        .args(["bench", "device", "--device", "cpu", "--shape", "tiny"])
        .args(["--repeats", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(r["complete"], true);
    assert_eq!(r["device"], "cpu");
    positive(&r, "/roofline/bandwidth_bytes_per_s");
    positive(&r, "/roofline/peak_flops");

    let c = &r["correctness"];
    assert_eq!(c["compared_with"], "cpu (same device)");
    assert_eq!(c["pass"], true, "{c:#}");
    let logits = c["logits"].as_array().unwrap();
    let grads = c["gradients"].as_array().unwrap();
    assert_eq!(logits.len(), 2, "f32 and bf16");
    assert_eq!(grads.len(), 4, "sft and dpo, f32 and bf16");
    for check in logits.iter().chain(grads) {
        assert_eq!(check["pass"], true, "{check:#}");
        // CPU against itself: the same computation, bit for bit.
        assert_eq!(check["max_abs_err"].as_f64(), Some(0.0), "{check:#}");
        positive(check, "/tolerance");
        positive(check, "/values");
    }
    for g in grads {
        let [with, all] = [0, 1].map(|i| g["tensors_with_gradient"][i].as_u64().unwrap());
        assert!(all > 0 && with == all, "{g:#}");
        assert!(g["loss"][0].as_f64().unwrap().is_finite());
    }
    for t in c["tree"].as_array().unwrap() {
        assert_eq!(t["sequences"], 39);
        assert_eq!(t["runs_equal"], true);
        assert_eq!(t["identical_to_cpu"], 39);
    }

    let s = &r["speed"];
    assert_eq!(s["shape"]["name"], "tiny");
    assert_eq!(s["weights_dtype"], "bf16");
    positive(s, "/parameters");
    for f in [
        "tokens_per_s",
        "flops",
        "mfu",
        "timing/median_s",
        "memory/peak_mib",
    ] {
        positive(s, &format!("/prefill/{f}"));
    }
    let decode = s["decode"].as_array().unwrap();
    let batches: Vec<u64> = decode
        .iter()
        .map(|d| d["batch"].as_u64().unwrap())
        .collect();
    assert_eq!(batches, [1, 27]);
    for d in decode {
        for f in [
            "/tokens_per_s",
            "/ms_per_step",
            "/bytes_moved",
            "/floor_s",
            "/roofline_tokens_per_s",
            "/roofline_fraction",
        ] {
            positive(d, f);
        }
        // A fraction of a floor: a measurement faster than its floor means a wrong count.
        assert!(d["roofline_fraction"].as_f64().unwrap() < 1.0, "{d:#}");
    }
    let sft = &s["sft_step"];
    for f in ["tokens_per_s", "flops", "mfu", "memory/peak_mib"] {
        positive(sft, &format!("/{f}"));
    }
    assert!(sft["mfu"].as_f64().unwrap() < 1.0);
    assert!(sft["losses"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l.as_f64().is_some_and(f64::is_finite)));
    let tree = &s["tree"];
    assert_eq!(tree["sequences"], 39);
    positive(tree, "/tokens_per_s");
    positive(tree, "/roofline_fraction");
    assert!(
        tree["prefill_computed"].as_u64() == tree["prefill_minimum"].as_u64(),
        "the tree prefills each unique prefix once: {tree:#}"
    );
    assert!(stdout.contains("decode batch 27"), "{stdout}");
}
