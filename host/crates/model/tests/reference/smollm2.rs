//! The SmolLM2 checks, each over a fixture folder (the committed one, or a fresh one in live
//! mode): chat renderings, token ids, logits, greedy and sampled decoding, the exported tokenizer.

use super::*;

pub(crate) fn check_chat_text(m: &Model, dir: &Path) -> Vec<String> {
    let fx = read_json(dir, "smollm2_tokenizer.json");
    let mut fails = vec![];
    for e in entries(&fx["chat"]) {
        let msgs = messages(&e["messages"]);
        let gen = e["add_generation_prompt"].as_bool().unwrap();
        let got = m.render_chat(&msgs, gen).unwrap();
        let want = string(&e["text"]);
        if got != want {
            let i = got
                .chars()
                .zip(want.chars())
                .take_while(|(a, b)| a == b)
                .count();
            fails.push(format!(
                "smollm2_tokenizer.json chat[{}]: rendered text differs at char {i}: malt {:?}, \
                 reference {:?}",
                string(&e["name"]),
                got.chars().skip(i).take(30).collect::<String>(),
                want.chars().skip(i).take(30).collect::<String>()
            ));
        }
    }
    figure(
        &Device::Cpu,
        "SmolLM2 chat renderings (smollm2_tokenizer.json chat)",
        &format!("texts differing of {}", entries(&fx["chat"]).len()),
        fails.len() as f64,
        0.0,
    );
    fails
}

pub(crate) fn check_ids(m: &Model, dir: &Path) -> Vec<String> {
    let fx = read_json(dir, "smollm2_tokenizer.json");
    let mut fails = vec![];
    for (what, text, want, e) in corpus(&fx) {
        let got = m.tokenizer.encode(&text, false).unwrap();
        let plain_ok = got == want;
        if !plain_ok {
            let note = if e.get("ids_llamacpp").is_some() && got == u32s(&e["ids"]) {
                " (malt gives transformers' GGUF reading; llama.cpp and SmolLM2's tokenizer.json \
                 split every \\p{N} first)"
            } else {
                ""
            };
            fails.push(format!("{what}: {}{note}", first_diff(&got, &want)));
        }
        // With the tokenizer's own special tokens: SmolLM2 adds none.
        let default = u32s(&e["ids_default"]);
        let want_default = if default == u32s(&e["ids"]) {
            want.clone()
        } else {
            default
        };
        let got = m.tokenizer.encode(&text, true).unwrap();
        // Reported only when the plain encoding passed (else it repeats that failure).
        if plain_ok && got != want_default {
            fails.push(format!(
                "{what} (with special tokens): {}",
                first_diff(&got, &want_default)
            ));
        }
    }
    figure(
        &Device::Cpu,
        "SmolLM2 token ids (smollm2_tokenizer.json raw and chat)",
        &format!(
            "id sequences differing of {} texts (plain and with special tokens)",
            corpus(&fx).len()
        ),
        fails.len() as f64,
        0.0,
    );
    fails
}

pub(crate) fn check_issue26_prompt(m: &Model, dir: &Path) -> Vec<String> {
    let fx = read_json(dir, "smollm2_tokenizer.json");
    let e = entries(&fx["chat"])
        .iter()
        .find(|e| e["name"] == "chat_france_issue26")
        .expect("chat_france_issue26");
    let want = u32s(&e["ids"]);
    let got = m.encode_chat(&messages(&e["messages"]), true).unwrap();
    let mut fails = vec![];
    if want.len() != 42 {
        fails.push(format!(
            "the fixture's issue-26 prompt has {} ids, not 42",
            want.len()
        ));
    }
    if got != want {
        fails.push(format!(
            "smollm2_tokenizer.json chat[chat_france_issue26] through encode_chat: {}",
            first_diff(&got, &want)
        ));
    }
    figure(
        &Device::Cpu,
        "SmolLM2 issue-26 chat prompt through encode_chat",
        "problems (42 ids, equal to the reference's)",
        fails.len() as f64,
        0.0,
    );
    fails
}

pub(crate) fn logits_of(m: &Model, ids: &[u32], mode: Mode) -> Vec<Vec<f32>> {
    m.decoder
        .forward(&batch_of(m, ids), None, mode)
        .unwrap()
        .i(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

/// Top-k logits at every position (fed the reference's ids), in both of malt's paths for the
/// chat prompt and the inference path for the others.
pub(crate) fn check_logits(m: &Model, dir: &Path) -> Vec<String> {
    let fx = read_json(dir, "smollm2_logits.json");
    let mut fails = vec![];
    for p in entries(&fx["prompts"]) {
        let name = string(&p["name"]);
        let ids = u32s(&p["ids"]);
        let mut modes = vec![("inference", Mode::Infer)];
        if name.starts_with("chat_france") {
            modes.push(("training", Mode::Train { dropout_seed: None }));
        }
        for (mode_name, mode) in modes {
            let got = logits_of(m, &ids, mode);
            let (mut worst, mut at) = (0f32, (0, 0));
            for (pos, (tid, tval)) in entries(&p["top_ids"])
                .iter()
                .zip(entries(&p["top_logits"]))
                .enumerate()
            {
                let (tid, tval) = (u32s(tid), f32s(tval));
                for (&id, &v) in tid.iter().zip(&tval) {
                    let d = (got[pos][id as usize] - v).abs();
                    if d > worst {
                        (worst, at) = (d, (pos, id));
                    }
                }
                // malt's argmax is the reference's wherever the reference's margin is clear.
                let argmax = got[pos]
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                    )
                    .0 as u32;
                if tval[0] - tval[1] > 2.0 * LOGIT_TOL && argmax != tid[0] {
                    fails.push(format!(
                        "smollm2_logits.json {name} ({mode_name}) position {pos}: malt's top \
                         token {argmax}, reference {} (margin {})",
                        tid[0],
                        tval[0] - tval[1]
                    ));
                }
            }
            figure(
                m.device(),
                &format!("SmolLM2 logits {name} ({mode_name}), top-k at every position"),
                "max |malt - reference|",
                worst as f64,
                LOGIT_TOL as f64,
            );
            if worst > LOGIT_TOL {
                fails.push(format!(
                    "smollm2_logits.json {name} ({mode_name}): logit of token {} at position {} \
                     differs by {worst:.2e} > {LOGIT_TOL:e}",
                    at.1, at.0
                ));
            }
        }
    }
    fails
}

/// malt's continuation against the reference's, up to the first step whose reference margin
/// is below [`MARGIN_RULE`]; the text too when the whole continuation is compared. Prints the
/// check's line.
pub(crate) fn compare_greedy(
    what: &str,
    m: &Model,
    got: &Completion,
    want: &[u32],
    margins: &[f32],
    want_text: Option<&str>,
) -> Option<String> {
    let k = margins
        .iter()
        .position(|&x| x < MARGIN_RULE)
        .unwrap_or(want.len());
    let fail = greedy_difference(what, m, got, want, margins, want_text, k);
    figure(
        m.device(),
        what,
        &format!(
            "continuations differing up to step {} of {} (margin rule {MARGIN_RULE:e})",
            k.min(want.len()),
            want.len()
        ),
        f64::from(u8::from(fail.is_some())),
        0.0,
    );
    fail
}

pub(crate) fn greedy_difference(
    what: &str,
    m: &Model,
    got: &Completion,
    want: &[u32],
    margins: &[f32],
    want_text: Option<&str>,
    k: usize,
) -> Option<String> {
    for i in 0..k.min(want.len()) {
        if i < got.tokens.len() {
            if got.tokens[i] != want[i] {
                return Some(format!(
                    "{what}: step {i} (reference margin {:.4}): {}; malt text {:?}",
                    margins[i],
                    first_diff(&got.tokens, want),
                    got.text
                ));
            }
        } else if got.tokens.len() < greedy_params().max_new_tokens as usize
            && m.stop_ids.contains(&want[i])
        {
            // Without stop strings, a completion shorter than the limit ended at a stop token
            // (not in `tokens`): both stopped at the same step.
            return None;
        } else {
            return Some(format!(
                "{what}: malt stopped after {} tokens ({:?}), the reference continues with {:?}",
                got.tokens.len(),
                got.finish,
                &want[i..]
            ));
        }
    }
    if k == want.len() {
        if let Some(t) = want_text {
            if got.text != t {
                return Some(format!("{what}: text {:?}, reference {t:?}", got.text));
            }
        }
    }
    None
}

pub(crate) fn check_greedy(m: &Model, dir: &Path, from_text: bool) -> Vec<String> {
    let fx = read_json(dir, "smollm2_greedy.json");
    let mut fails = vec![];
    for c in entries(&fx["continuations"]) {
        let name = string(&c["name"]);
        let prompt = if from_text {
            m.tokenizer.encode(string(&c["prompt"]), false).unwrap()
        } else {
            u32s(&c["prompt_ids"])
        };
        let got = m.complete(&prompt, &greedy_params(), 0, None).unwrap();
        let how = if from_text {
            "malt's ids"
        } else {
            "the reference's ids"
        };
        eprintln!("SmolLM2 greedy {name} from {how}: {:?}", got.text);
        let what = format!("smollm2_greedy.json {name} (prompt from {how})");
        let want = u32s(&c["ids"]);
        if let Some(f) = compare_greedy(
            &what,
            m,
            &got,
            &want,
            &f32s(&c["margins"]),
            Some(string(&c["text"])),
        ) {
            fails.push(f);
        }
    }
    fails
}

/// Issue 26's question through malt's whole path: template, tokenizer, greedy decoding.
pub(crate) fn check_chat_answer(m: &Model, dir: &Path) -> Vec<String> {
    let fx = read_json(dir, "smollm2_greedy.json");
    let a = &fx["france_answer"];
    let prompt = m.encode_chat(&messages(&a["messages"]), true).unwrap();
    let got = m.complete(&prompt, &greedy_params(), 0, None).unwrap();
    eprintln!("SmolLM2 answers {:?}", got.text);
    let mut fails = vec![];
    if got.text != string(&a["text"]) {
        fails.push(format!(
            "smollm2_greedy.json france_answer: malt answers {:?} from {} prompt ids, the \
             reference {:?} from {}",
            got.text,
            prompt.len(),
            string(&a["text"]),
            u32s(&a["prompt_ids"]).len()
        ));
    }
    let want = u32s(&a["ids"]);
    let n = want.len() - usize::from(want.last().is_some_and(|t| m.stop_ids.contains(t)));
    if got.tokens != want[..n] {
        fails.push(format!(
            "smollm2_greedy.json france_answer ids: {}",
            first_diff(&got.tokens, &want[..n])
        ));
    }
    figure(
        m.device(),
        "SmolLM2 issue-26 chat answer (template, tokenizer, greedy decoding)",
        "differences (answer text, answer ids)",
        fails.len() as f64,
        0.0,
    );
    fails
}

/// The 0.1 % critical value of the chi-square distribution with `df` degrees of freedom (a
/// table to 10, the Wilson-Hilferty approximation beyond).
pub(crate) fn chi_square_critical_0_001(df: usize) -> f64 {
    const TABLE: [f64; 10] = [
        10.828, 13.816, 16.266, 18.467, 20.515, 22.458, 24.322, 26.124, 27.877, 29.588,
    ];
    if (1..=10).contains(&df) {
        return TABLE[df - 1];
    }
    let (k, z) = (df as f64, 3.090_232);
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// malt's sampler at temperature 0.3 on malt's next-token logits (after the reference's ids),
/// [`DRAWS`] draws from a fixed seed, against the reference softmax: Pearson's chi-square with
/// bins of expected count < 5 merged, at the 0.1 % level (deterministic: the seed is fixed).
pub(crate) fn check_sampling(m: &Model, dir: &Path) -> Vec<String> {
    let fx = read_json(dir, "smollm2_sampling.json");
    let mut fails = vec![];
    for p in entries(&fx["prompts"]) {
        let name = string(&p["name"]);
        let ids = u32s(&p["ids"]);
        let t = p["temperature"].as_f64().unwrap();
        let cache = m.prefill(&ids, None).unwrap();
        let logits = cache.last_logits().unwrap().to_vec1::<f32>().unwrap();
        let params = SamplingParams {
            temperature: t,
            top_p: 1.0,
            top_k: 0,
            ..Default::default()
        };
        let mut rng = sampling::rng_for(26);
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for _ in 0..DRAWS {
            *counts
                .entry(sampling::sample(&logits, &params, &mut rng))
                .or_default() += 1;
        }
        let toks = u32s(&p["tokens"]);
        let probs: Vec<f64> = entries(&p["probs"])
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let n = DRAWS as f64;
        // (observed, expected) bins; the rest (tokens of small expected count, and any token
        // outside the reference's list) is one bin.
        let mut bins: Vec<(f64, f64)> = vec![];
        let (mut rest_obs, mut rest_exp) = (0f64, p["remainder"].as_f64().unwrap() * n);
        for (tok, q) in toks.iter().zip(&probs) {
            let obs = counts.remove(tok).unwrap_or(0) as f64;
            if q * n >= 5.0 {
                bins.push((obs, q * n));
            } else {
                rest_obs += obs;
                rest_exp += q * n;
            }
        }
        rest_obs += counts.values().sum::<usize>() as f64;
        if rest_exp >= 5.0 {
            bins.push((rest_obs, rest_exp));
        } else if let Some(last) = bins.last_mut() {
            // Too small on its own: merged into the least likely bin.
            last.0 += rest_obs;
            last.1 += rest_exp;
        }
        let stat: f64 = bins.iter().map(|(o, e)| (o - e).powi(2) / e).sum();
        let df = bins.len().saturating_sub(1);
        let crit = chi_square_critical_0_001(df);
        figure(
            m.device(),
            &format!("SmolLM2 sampling {name} (T = {t}, {DRAWS} draws vs reference softmax)"),
            &format!("chi-square on {df} df, against its 0.1 % critical value"),
            stat,
            crit,
        );
        eprintln!(
            "SmolLM2 sampling {name}: top bins (observed, expected) {:?}",
            &bins[..bins.len().min(4)]
        );
        if df == 0 || stat > crit {
            fails.push(format!(
                "smollm2_sampling.json {name}: chi-square {stat:.2} on {df} df exceeds the 0.1 % \
                 critical value {crit:.2}; bins (observed, expected): {bins:?}"
            ));
        }
    }
    fails
}

/// `Tokenizer::save_hf` (what `malt export --merge` writes) read back by the tokenizers
/// library, as transformers and vLLM read it: the reference ids of every corpus entry.
/// With `python`, also transformers' `AutoTokenizer.from_pretrained` on it (the script's
/// `--exported-tokenizer` check).
pub(crate) fn check_exported_tokenizer(
    m: &Model,
    dir: &Path,
    python: Option<&Path>,
) -> Vec<String> {
    let fx = read_json(dir, "smollm2_tokenizer.json");
    let out = tempfile::tempdir().unwrap();
    m.tokenizer.save_hf(out.path()).unwrap();
    let tok = tokenizers::Tokenizer::from_file(out.path().join("tokenizer.json")).unwrap();
    let mut fails = vec![];
    for (what, text, want, _) in corpus(&fx) {
        let got = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        if got != want {
            fails.push(format!(
                "exported tokenizer.json, {what}: {}",
                first_diff(&got, &want)
            ));
        }
    }
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    if cfg["chat_template"].as_str() != Some(fx["meta"]["chat_template"].as_str().unwrap()) {
        fails.push("exported tokenizer_config.json: chat_template differs from the GGUF's".into());
    }
    figure(
        &Device::Cpu,
        "SmolLM2 exported tokenizer.json (save_hf) read by the tokenizers library",
        &format!(
            "id sequences differing of {} texts, plus the chat template",
            corpus(&fx).len()
        ),
        fails.len() as f64,
        0.0,
    );
    if let Some(py) = python {
        let st = Command::new(py)
            .arg(script())
            .arg("--out")
            .arg(dir)
            .arg("--exported-tokenizer")
            .arg(out.path())
            .status()
            .expect("running the reference script");
        if !st.success() {
            fails.push(format!(
                "transformers' AutoTokenizer on malt's exported tokenizer disagrees with the \
                 fixture ({st}; its output above names the entries)"
            ));
        }
    }
    fails
}
