//! Live mode (MALT_REFERENCE_PYTHON): a fresh run of the script compared with the committed
//! fixtures.

use super::*;

/// JSON values equal: strings, booleans and integers exactly, other numbers within `tol`
/// (absolute); `meta` objects are not compared (versions, descriptions).
pub(crate) fn json_diff(path: &str, a: &Value, b: &Value, tol: f64, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                if k == "meta" || k == "versions" || k == "trl_check" {
                    continue;
                }
                match y.get(k) {
                    Some(vb) => json_diff(&format!("{path}.{k}"), va, vb, tol, out),
                    None => out.push(format!("{path}.{k}: only in the fresh output")),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k) && *k != "meta") {
                out.push(format!("{path}.{k}: only in the committed fixture"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                out.push(format!("{path}: length {} vs {}", x.len(), y.len()));
            } else {
                for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                    json_diff(&format!("{path}[{i}]"), va, vb, tol, out);
                }
            }
        }
        (Value::Number(x), Value::Number(y)) if !(x.is_u64() && y.is_u64()) => {
            let (p, q) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            if (p - q).abs() > tol {
                out.push(format!("{path}: {p} vs {q}"));
            }
        }
        _ if a != b => out.push(format!("{path}: {a} vs {b}")),
        _ => {}
    }
}

/// The fresh output against the committed fixtures: ids and texts exactly, numbers within the
/// tolerances, greedy ids up to the margin rule (after a near-tie the continuations may part).
pub(crate) fn compare_with_committed(fresh: &Path, with_smollm2: bool) -> Vec<String> {
    let old = committed();
    let mut fails = vec![];
    let mut files = vec![];
    if with_smollm2 {
        files.extend(["smollm2_tokenizer.json", "smollm2_sampling.json"]);
        let (a, b) = (
            read_json(fresh, "smollm2_logits.json"),
            read_json(&old, "smollm2_logits.json"),
        );
        for (pa, pb) in entries(&a["prompts"]).iter().zip(entries(&b["prompts"])) {
            let name = string(&pa["name"]);
            if pa["ids"] != pb["ids"] {
                fails.push(format!("smollm2_logits.json {name}: ids differ"));
                continue;
            }
            // Values by id: near-ties may swap places in the top-k lists.
            for (pos, ((ia, va), (ib, vb))) in entries(&pa["top_ids"])
                .iter()
                .zip(entries(&pa["top_logits"]))
                .zip(
                    entries(&pb["top_ids"])
                        .iter()
                        .zip(entries(&pb["top_logits"])),
                )
                .enumerate()
            {
                let old: HashMap<u32, f32> = u32s(ib).into_iter().zip(f32s(vb)).collect();
                for (id, v) in u32s(ia).into_iter().zip(f32s(va)) {
                    if let Some(w) = old.get(&id) {
                        if (v - w).abs() > LOGIT_TOL {
                            fails.push(format!(
                                "smollm2_logits.json {name} position {pos} token {id}: fresh {v}, \
                                 committed {w}"
                            ));
                        }
                    }
                }
            }
        }
        let (a, b) = (
            read_json(fresh, "smollm2_greedy.json"),
            read_json(&old, "smollm2_greedy.json"),
        );
        fails.extend(compare_greedy_lists(
            "smollm2_greedy.json",
            &a["continuations"],
            &b["continuations"],
        ));
        json_diff(
            "smollm2_greedy.json france_answer",
            &a["france_answer"],
            &b["france_answer"],
            1e-3,
            &mut fails,
        );
    }
    for f in files {
        json_diff(
            f,
            &read_json(fresh, f),
            &read_json(&old, f),
            1e-3,
            &mut fails,
        );
    }
    for arch in ["llama", "qwen2"] {
        let d = format!("tiny_{arch}");
        let (a, b) = (
            read_json(&fresh.join(&d), "reference.json"),
            read_json(&old.join(&d), "reference.json"),
        );
        let mut a2 = a.clone();
        let mut b2 = b.clone();
        a2.as_object_mut().unwrap().remove("greedy");
        b2.as_object_mut().unwrap().remove("greedy");
        json_diff(&format!("{d}/reference.json"), &a2, &b2, 1e-4, &mut fails);
        fails.extend(compare_greedy_lists(
            &format!("{d}/reference.json greedy"),
            &a["greedy"],
            &b["greedy"],
        ));
        for file in [
            "model.safetensors",
            "reference.safetensors",
            "adapter_init/adapter_model.safetensors",
        ] {
            let (ta, tb) = (
                read_tensors(&fresh.join(&d).join(file)),
                read_tensors(&old.join(&d).join(file)),
            );
            for (k, x) in &ta {
                let Some(y) = tb.get(k) else {
                    fails.push(format!("{d}/{file} {k}: only in the fresh output"));
                    continue;
                };
                let scale = common::max_abs(y);
                let diff = common::max_abs(&(x - y).unwrap());
                // Logits absolutely, gradients and weights relative to the tensor's largest entry.
                let tol = if k.contains("logits") {
                    LOGIT_TOL
                } else {
                    1e-4 * scale.max(1e-12)
                };
                if diff > tol {
                    fails.push(format!(
                        "{d}/{file} {k}: fresh and committed differ by {diff:.2e}"
                    ));
                }
            }
        }
    }
    fails
}

pub(crate) fn compare_greedy_lists(what: &str, a: &Value, b: &Value) -> Vec<String> {
    let mut fails = vec![];
    for (ca, cb) in entries(a).iter().zip(entries(b)) {
        let name = string(&ca["name"]);
        let (ia, ib) = (u32s(&ca["ids"]), u32s(&cb["ids"]));
        let k = f32s(&cb["margins"])
            .iter()
            .position(|&x| x < MARGIN_RULE)
            .unwrap_or(ib.len());
        let n = k.min(ia.len()).min(ib.len());
        if ia[..n] != ib[..n] || (k == ib.len() && ia != ib) {
            fails.push(format!(
                "{what} {name}: fresh vs committed {}",
                first_diff(&ia, &ib)
            ));
        }
    }
    fails
}
