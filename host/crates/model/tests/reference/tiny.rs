//! The tiny random Llama and Qwen2 (always run: their fixtures are committed): logits, greedy
//! decoding, and PEFT's logits of the adapter malt's trainer wrote.

use super::*;

/// A tiny model in f32 on the reference device, with its folder and reference.json.
pub(crate) fn tiny(dir: &Path, arch: &str) -> (PathBuf, Model, Value) {
    let d = dir.join(format!("tiny_{arch}"));
    let m = Model::load_as(
        d.to_str().unwrap(),
        &reference_env::device(),
        Some(DType::F32),
    )
    .unwrap_or_else(|e| panic!("loading {}: {e}", d.display()));
    let r = read_json(&d, "reference.json");
    (d, m, r)
}

/// Max |malt - reference| over a (positions, vocab) block, with its place.
pub(crate) fn max_diff(got: &[Vec<f32>], want: &Tensor) -> (f32, usize, usize) {
    let want = want.to_vec2::<f32>().unwrap();
    assert_eq!(got.len(), want.len(), "positions");
    let mut worst = (0f32, 0, 0);
    for (p, (g, w)) in got.iter().zip(&want).enumerate() {
        for (t, (a, b)) in g.iter().zip(w).enumerate() {
            let d = (a - b).abs();
            if d > worst.0 || d.is_nan() {
                worst = (if d.is_nan() { f32::INFINITY } else { d }, p, t);
            }
        }
    }
    worst
}

pub(crate) fn check_tiny(dir: &Path, arch: &str) -> Vec<String> {
    let (d, m, r) = tiny(dir, arch);
    let t = read_tensors(&d.join("reference.safetensors"));
    let f = format!("tiny_{arch}/reference.json");
    let mut fails = vec![];
    for e in entries(&r["texts"]) {
        let got = m.tokenizer.encode(string(&e["text"]), false).unwrap();
        let want = u32s(&e["ids"]);
        if got != want {
            fails.push(format!(
                "{f} texts[{}]: {}",
                string(&e["name"]),
                first_diff(&got, &want)
            ));
        }
    }
    for e in entries(&r["chats"]) {
        let name = string(&e["name"]);
        let msgs = messages(&e["messages"]);
        let gen = e["add_generation_prompt"].as_bool().unwrap();
        let text = m.render_chat(&msgs, gen).unwrap();
        if text != string(&e["text"]) {
            fails.push(format!(
                "{f} chats[{name}]: malt renders {text:?}, reference {:?}",
                string(&e["text"])
            ));
        }
        let got = m.encode_chat(&msgs, gen).unwrap();
        let want = u32s(&e["ids"]);
        if got != want {
            fails.push(format!("{f} chats[{name}]: {}", first_diff(&got, &want)));
        }
    }
    figure(
        m.device(),
        &format!("tiny {arch} token ids and chat renderings ({f} texts, chats)"),
        &format!(
            "entries differing of {}",
            entries(&r["texts"]).len() + entries(&r["chats"]).len()
        ),
        fails.len() as f64,
        0.0,
    );
    let adapter = m.load_adapter(&d.join("adapter_init"), "init").unwrap();
    for s in entries(&r["sequences"]) {
        let name = string(&s["name"]);
        let x = batch_of(&m, &u32s(&s["ids"]));
        for (key, ad) in [("logits", None), ("adapter_logits", Some(&adapter))] {
            for (mode_name, mode) in [
                ("inference", Mode::Infer),
                ("training", Mode::Train { dropout_seed: None }),
            ] {
                let got = m
                    .decoder
                    .forward(&x, ad, mode)
                    .unwrap()
                    .i(0)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                let (worst, p, tok) = max_diff(&got, &t[&format!("{key}.{name}")]);
                figure(
                    m.device(),
                    &format!("tiny {arch} {key}.{name} ({mode_name}), every position"),
                    "max |malt - reference|",
                    worst as f64,
                    LOGIT_TOL as f64,
                );
                if worst > LOGIT_TOL {
                    fails.push(format!(
                        "tiny_{arch}/reference.safetensors {key}.{name} ({mode_name}): logit of \
                         token {tok} at position {p} differs by {worst:.2e} > {LOGIT_TOL:e}"
                    ));
                }
            }
        }
    }
    for g in entries(&r["greedy"]) {
        let name = string(&g["name"]);
        let got = m
            .complete(&u32s(&g["prompt_ids"]), &greedy_params(), 0, None)
            .unwrap();
        let what = format!("{f} greedy[{name}]");
        if let Some(e) = compare_greedy(
            &what,
            &m,
            &got,
            &u32s(&g["ids"]),
            &f32s(&g["margins"]),
            None,
        ) {
            fails.push(e);
        }
    }
    fails
}

/// PEFT's logits for the adapter malt's trainer wrote (`malt_sft_adapter/`, from
/// `malt-train`'s `tests/reference.rs` with MALT_REFERENCE_WRITE_ADAPTER=1) against malt's.
pub(crate) fn check_tiny_malt_adapter(dir: &Path, arch: &str) -> Vec<String> {
    let (d, m, r) = tiny(dir, arch);
    let meta = read_json(&d, "malt_adapter_logits.json");
    let adir = d.join("malt_sft_adapter");
    let sha = malt_base::hash::sha256_hex(
        &std::fs::read(adir.join("adapter_model.safetensors")).unwrap(),
    );
    if sha != string(&meta["adapter_model_sha256"]) {
        return vec![format!(
            "tiny_{arch}/malt_adapter_logits.json was computed for another malt_sft_adapter \
             (sha256 {} vs {sha}): rerun `scripts/reference_golden.py --only malt_adapter`",
            string(&meta["adapter_model_sha256"])
        )];
    }
    let t = read_tensors(&d.join("malt_adapter_logits.safetensors"));
    let adapter = m.load_adapter(&adir, "malt").unwrap();
    let mut fails = vec![];
    for s in entries(&r["sequences"]) {
        let name = string(&s["name"]);
        let got = m
            .decoder
            .forward(&batch_of(&m, &u32s(&s["ids"])), Some(&adapter), Mode::Infer)
            .unwrap()
            .i(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let (worst, p, tok) = max_diff(&got, &t[name]);
        figure(
            m.device(),
            &format!("tiny {arch} malt's SFT adapter in PEFT, {name}, every position"),
            "max |malt - PEFT|",
            worst as f64,
            LOGIT_TOL as f64,
        );
        if worst > LOGIT_TOL {
            fails.push(format!(
                "tiny_{arch}/malt_adapter_logits.safetensors {name}: PEFT's logit of token {tok} \
                 at position {p} differs from malt's by {worst:.2e} > {LOGIT_TOL:e}"
            ));
        }
    }
    fails
}
