mod common;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use common::*;
use malt_model::{
    Branch, Cache, LoraAdapter, LoraConfig, Message, Mode, Model, ModelError, SamplingParams,
    TreeSampler,
};

const VARIANTS: [Variant; 4] = [LLAMA, LLAMA_TIED, QWEN2, QWEN3];

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_new_tokens: 8,
        ..Default::default()
    }
}

fn adapter(m: &Model, seed: u64) -> LoraAdapter {
    let a = m
        .new_adapter(
            "test",
            LoraConfig {
                r: 4,
                alpha: 8.0,
                dropout: 0.0,
                ..Default::default()
            },
            seed,
        )
        .unwrap();
    randomize_b(&a, seed + 1);
    a
}

#[test]
fn load_round_trip_sharded_and_export() {
    for v in VARIANTS {
        let d = tempfile::tempdir().unwrap();
        write_tiny(d.path(), v, 1, true);
        let m = Model::load(d.path().to_str().unwrap(), &Device::Cpu).unwrap();
        let (_d2, single) = load_tiny(v, 1);
        let x = ids(&seq(10, 1));
        let a = m.decoder.forward(&x, None, Mode::Infer).unwrap();
        let b = single.decoder.forward(&x, None, Mode::Infer).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{v:?}: sharded != single");
        // Export (no adapter) and reload: identical logits, config and template.
        let out = tempfile::tempdir().unwrap();
        m.export_merged(out.path(), None).unwrap();
        let r = Model::load(out.path().to_str().unwrap(), &Device::Cpu).unwrap();
        assert_eq!(r.config(), m.config(), "{v:?}");
        let c = r.decoder.forward(&x, None, Mode::Infer).unwrap();
        assert_eq!(max_abs_diff(&a, &c), 0.0, "{v:?}: exported != original");
        assert_eq!(r.chat.source, CHATML);
        assert_eq!(
            r.tokenizer.encode("the capital of france", false).unwrap(),
            vec![7, 8, 9, 10]
        );
    }
}

#[test]
fn inference_and_training_paths_agree() {
    for v in VARIANTS {
        let (_d, m) = load_tiny(v, 2);
        // q, k and v lie back to back in the weight arena: long inputs take one fused gemm.
        assert!(m.decoder.layers.iter().all(|l| l.qkv.is_some()));
        let a = adapter(&m, 3);
        // 2 x 12 rows take the small-matmul kernels, 2 x 20 rows gemm and the fused q/k/v.
        for len in [12, 20] {
            let x = Tensor::from_vec([seq(len, 1), seq(len, 2)].concat(), (2, len), &Device::Cpu)
                .unwrap();
            for ad in [None, Some(&a)] {
                let inf = m.decoder.forward(&x, ad, Mode::Infer).unwrap();
                let tr = m
                    .decoder
                    .forward(&x, ad, Mode::Train { dropout_seed: None })
                    .unwrap();
                let d = max_abs_diff(&inf, &tr);
                assert!(
                    d < 1e-5,
                    "{v:?} {len} tokens adapter={}: diff {d}",
                    ad.is_some()
                );
            }
        }
        let x = Tensor::from_vec([seq(12, 1), seq(12, 2)].concat(), (2, 12), &Device::Cpu).unwrap();
        // The adapter actually changes the output.
        let base = m.decoder.forward(&x, None, Mode::Infer).unwrap();
        let ad = m.decoder.forward(&x, Some(&a), Mode::Infer).unwrap();
        assert!(max_abs_diff(&base, &ad) > 1e-3);
    }
}

#[test]
fn cached_prefill_and_decode_equal_full_forward() {
    for v in VARIANTS {
        let (_d, m) = load_tiny(v, 4);
        let a = adapter(&m, 5);
        for ad in [None, Some(&a)] {
            let toks = seq(14, 3);
            // Prefill 9, then extend to 14: last logits equal the full forward's last row.
            let c1 = m.prefill(&toks[..9], ad).unwrap();
            let before = m.decoder.prefill_tokens_computed();
            let c2 = m.extend(&c1, &toks, ad).unwrap();
            assert_eq!(m.decoder.prefill_tokens_computed() - before, 5);
            let full = m.decoder.forward(&ids(&toks), ad, Mode::Infer).unwrap();
            let last = full.i((0, 13)).unwrap();
            let d = max_abs_diff(&last, c2.last_logits().unwrap());
            assert!(d < 1e-4, "{v:?}: extend vs full {d}");
            // Greedy decode with the cache equals greedy recomputation from scratch.
            let out = m
                .generate(vec![Branch { cache: c2, seed: 0 }], &greedy(), ad)
                .unwrap()
                .pop()
                .unwrap();
            let mut ctx = toks.clone();
            let mut naive = vec![];
            for _ in 0..out.tokens.len() {
                let lg = m.decoder.forward(&ids(&ctx), ad, Mode::Infer).unwrap();
                let next = lg.i((0, ctx.len() - 1)).unwrap().argmax(D::Minus1).unwrap();
                let next = next.to_scalar::<u32>().unwrap();
                naive.push(next);
                ctx.push(next);
            }
            assert_eq!(out.tokens, naive, "{v:?}");
            // The returned cache holds prompt + fed tokens, and reproduces the full forward.
            assert_eq!(out.cache.len(), toks.len() + out.tokens.len() - 1);
            let again = m.extend(&out.cache, &ctx, ad).unwrap();
            let full = m.decoder.forward(&ids(&ctx), ad, Mode::Infer).unwrap();
            let d = max_abs_diff(
                &full.i((0, ctx.len() - 1)).unwrap(),
                again.last_logits().unwrap(),
            );
            assert!(d < 1e-4, "{v:?}: cache after decode {d}");
        }
    }
}

/// Long decodes outgrow the key/value buffers a decode batch starts with (they grow in chunks
/// of 64 positions): tokens still equal a greedy recomputation from scratch.
#[test]
fn long_decode_grows_its_buffers_and_matches_recomputation() {
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 150,
        ..Default::default()
    };
    let mut longest = 0;
    // Random tiny models often emit their eos early: try a few until one decodes long.
    for (model_seed, salt) in (0..12u64).flat_map(|s| (0..3u32).map(move |t| (s, t))) {
        if longest > 130 {
            break;
        }
        let (_d, m) = load_tiny(LLAMA, model_seed);
        let toks = seq(10 + salt as usize, salt);
        let cache = m.prefill(&toks, None).unwrap();
        let out = m
            .generate(vec![Branch { cache, seed: 0 }], &params, None)
            .unwrap()
            .pop()
            .unwrap();
        let mut ctx = toks.clone();
        for &t in &out.tokens {
            let lg = m.decoder.forward(&ids(&ctx), None, Mode::Infer).unwrap();
            let next = lg.i((0, ctx.len() - 1)).unwrap().argmax(D::Minus1).unwrap();
            assert_eq!(next.to_scalar::<u32>().unwrap(), t, "salt {salt}");
            ctx.push(t);
        }
        longest = longest.max(out.tokens.len());
    }
    assert!(
        longest > 130,
        "no decode ran past two buffer growths ({longest} tokens)"
    );
}

#[test]
fn batched_decode_of_different_lengths_matches_single() {
    let (_d, m) = load_tiny(QWEN2, 6);
    let params = SamplingParams {
        temperature: 0.9,
        max_new_tokens: 10,
        ..Default::default()
    };
    let prompts = [seq(5, 1), seq(11, 2), seq(8, 3)];
    let branches: Vec<Branch> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Branch {
            cache: m.prefill(p, None).unwrap(),
            seed: 100 + i as u64,
        })
        .collect();
    let batched = m.generate(branches.clone(), &params, None).unwrap();
    for (i, b) in branches.into_iter().enumerate() {
        let single = m.generate(vec![b], &params, None).unwrap().pop().unwrap();
        assert_eq!(single.tokens, batched[i].tokens, "row {i}");
        assert_eq!(single.text, batched[i].text);
    }
}

/// An adapter's variables must not make inference record a backprop graph: caches would keep
/// every intermediate of their prompt alive (an evaluation peaked near 20 GB that way).
#[test]
fn inference_with_an_adapter_records_no_graph() {
    let (_d, m) = load_tiny(LLAMA, 7);
    let a = adapter(&m, 3);
    let cache = m.prefill(&seq(9, 1), Some(&a)).unwrap();
    assert!(!cache.holds_graph());
    let extended = m.extend(&cache, &seq(12, 1), Some(&a)).unwrap();
    assert!(!extended.holds_graph());
    let done = m
        .generate(
            vec![Branch {
                cache: extended,
                seed: 0,
            }],
            &greedy(),
            Some(&a),
        )
        .unwrap();
    assert!(!done[0].cache.holds_graph());
}

#[test]
fn forked_branch_decodes_like_an_independent_one() {
    let (_d, m) = load_tiny(LLAMA, 7);
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        top_k: 20,
        max_new_tokens: 12,
        ..Default::default()
    };
    let p = seq(9, 4);
    let shared = m.prefill(&p, None).unwrap();
    let forks = shared.fork(3);
    let together = m
        .generate(
            forks
                .into_iter()
                .enumerate()
                .map(|(i, c)| Branch {
                    cache: c,
                    seed: i as u64,
                })
                .collect(),
            &params,
            None,
        )
        .unwrap();
    for (i, t) in together.iter().enumerate() {
        let own = m.prefill(&p, None).unwrap();
        let alone = m
            .generate(
                vec![Branch {
                    cache: own,
                    seed: i as u64,
                }],
                &params,
                None,
            )
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(alone.tokens, t.tokens, "branch {i}");
        // And its cache equals the independent one's.
        for (a, b) in alone.cache.tokens().iter().zip(t.cache.tokens()) {
            assert_eq!(a, b);
        }
    }
    // The shared parent is untouched by its children's decoding.
    let fresh = m.prefill(&p, None).unwrap();
    assert_eq!(
        max_abs_diff(shared.last_logits().unwrap(), fresh.last_logits().unwrap()),
        0.0
    );
}

fn lora_loss(m: &Model, a: &LoraAdapter, x: &Tensor) -> Tensor {
    let h = m
        .decoder
        .forward_hidden(x, Some(a), Mode::Train { dropout_seed: None })
        .unwrap();
    let logits = m
        .decoder
        .logits(&h, Mode::Train { dropout_seed: None })
        .unwrap();
    let (b, s, v) = logits.dims3().unwrap();
    let targets = x.narrow(1, 1, s - 1).unwrap().flatten_all().unwrap();
    let lg = logits
        .narrow(1, 0, s - 1)
        .unwrap()
        .reshape((b * (s - 1), v))
        .unwrap();
    candle_nn::loss::cross_entropy(&lg, &targets).unwrap()
}

#[test]
fn every_lora_variable_gets_a_gradient() {
    for v in VARIANTS {
        let (_d, m) = load_tiny(v, 8);
        let a = adapter(&m, 9);
        let x = Tensor::from_vec([seq(10, 1), seq(10, 5)].concat(), (2, 10), &Device::Cpu).unwrap();
        let loss = lora_loss(&m, &a, &x);
        let grads = loss.backward().unwrap();
        let vars = a.named_vars();
        assert_eq!(vars.len(), 2 * 7 * 2);
        for (name, var) in vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{v:?}: no gradient for {name}"));
            let n = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0 && n.is_finite(), "{v:?}: zero gradient for {name}");
        }
        // Base weights are frozen: no gradient reaches them.
        assert!(grads.get(&m.decoder.layers[0].proj[0].w).is_none());
    }
}

#[test]
fn finite_difference_check() {
    let (_d, m) = load_tiny(QWEN3, 10);
    let a = adapter(&m, 11);
    let x = Tensor::from_vec(seq(8, 2), (1, 8), &Device::Cpu).unwrap();
    let grads = lora_loss(&m, &a, &x).backward().unwrap();
    let vars = a.named_vars();
    let eps = 1e-2f32;
    let mut checked = 0;
    for (name, var) in vars.iter().step_by(5) {
        let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap();
        let g = g.to_vec1::<f32>().unwrap();
        let orig = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // Probe the element with the largest gradient.
        let (k, _) =
            g.iter().enumerate().fold(
                (0, 0f32),
                |acc, (i, &x)| if x.abs() > acc.1 { (i, x.abs()) } else { acc },
            );
        let eval = |delta: f32| {
            let mut w = orig.clone();
            w[k] += delta;
            var.set(&Tensor::from_vec(w, var.dims(), &Device::Cpu).unwrap())
                .unwrap();
            lora_loss(&m, &a, &x)
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let fd = (eval(eps) - eval(-eps)) / (2.0 * eps as f64);
        var.set(&Tensor::from_vec(orig.clone(), var.dims(), &Device::Cpu).unwrap())
            .unwrap();
        let an = g[k] as f64;
        let tol = 2e-2 * an.abs().max(fd.abs()) + 2e-4;
        assert!(
            (fd - an).abs() < tol,
            "{name}[{k}]: analytic {an} vs numeric {fd}"
        );
        checked += 1;
    }
    assert!(checked >= 5);
}

#[test]
fn peft_adapter_round_trip_and_merge() {
    for v in [LLAMA, QWEN3] {
        let (_d, m) = load_tiny(v, 12);
        let a = adapter(&m, 13);
        let dir = tempfile::tempdir().unwrap();
        a.save_peft(dir.path(), "tiny").unwrap();
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["peft_type"], "LORA");
        assert_eq!(cfg["r"], 4);
        let st = candle_core::safetensors::load(
            dir.path().join("adapter_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        assert!(st.contains_key("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"));
        assert!(st.contains_key("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"));
        let b = m.load_adapter(dir.path(), "back").unwrap();
        assert_eq!(b.config, a.config);
        assert_ne!(a.uid(), b.uid());
        let (na, nb) = (a.named_vars(), b.named_vars());
        assert_eq!(na.len(), nb.len());
        for ((n1, v1), (n2, v2)) in na.iter().zip(nb.iter()) {
            assert_eq!(n1, n2);
            assert_eq!(max_abs_diff(v1.as_tensor(), v2.as_tensor()), 0.0, "{n1}");
        }
        // Merged export == base + adapter.
        let out = tempfile::tempdir().unwrap();
        m.export_merged(out.path(), Some(&a)).unwrap();
        let merged = Model::load(out.path().to_str().unwrap(), &Device::Cpu).unwrap();
        let x = ids(&seq(10, 6));
        let want = m.decoder.forward(&x, Some(&a), Mode::Infer).unwrap();
        let got = merged.decoder.forward(&x, None, Mode::Infer).unwrap();
        let d = max_abs_diff(&want, &got);
        assert!(d < 1e-4, "{v:?}: merged diff {d}");
    }
}

#[test]
fn gguf_with_permuted_qk_loads_like_hf() {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let d = tempfile::tempdir().unwrap();
    let cfg = write_tiny(d.path(), LLAMA_TIED, 14, false);
    let hf = Model::load(d.path().to_str().unwrap(), &Device::Cpu).unwrap();
    let t = random_tensors(&cfg, 14);
    let mut q: Vec<(String, QTensor)> = vec![];
    let gname = |n: &str| -> String {
        if n == "model.embed_tokens.weight" {
            return "token_embd.weight".into();
        }
        if n == "model.norm.weight" {
            return "output_norm.weight".into();
        }
        let rest = n.strip_prefix("model.layers.").unwrap();
        let (i, r) = rest.split_once('.').unwrap();
        let m = match r {
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            other => panic!("{other}"),
        };
        format!("blk.{i}.{m}")
    };
    for (n, w) in &t {
        let mut w = w.clone();
        if n.ends_with("q_proj.weight") {
            w = malt_model::weights::permute_qk(&w, cfg.num_attention_heads).unwrap();
        } else if n.ends_with("k_proj.weight") {
            w = malt_model::weights::permute_qk(&w, cfg.num_key_value_heads).unwrap();
        }
        q.push((gname(n), QTensor::quantize(&w, GgmlDType::F32).unwrap()));
    }
    use gguf_file::Value as V;
    let tokens: Vec<V> = words().into_iter().map(V::String).collect();
    let md: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("llama.embedding_length", V::U32(32)),
        ("llama.feed_forward_length", V::U32(48)),
        ("llama.block_count", V::U32(2)),
        ("llama.attention.head_count", V::U32(4)),
        ("llama.attention.head_count_kv", V::U32(2)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-6)),
        ("llama.rope.freq_base", V::F32(10000.0)),
        ("llama.context_length", V::U32(256)),
        ("tokenizer.ggml.model", V::String("gpt2".into())),
        // A pair malt builds GGUF tokenizers for (others are refused by name).
        ("tokenizer.ggml.pre", V::String("smollm".into())),
        ("tokenizer.ggml.tokens", V::Array(tokens)),
        ("tokenizer.ggml.merges", V::Array(vec![])),
        ("tokenizer.ggml.eos_token_id", V::U32(2)),
        ("tokenizer.chat_template", V::String(CHATML.into())),
    ];
    let path = d.path().join("tiny.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let mdr: Vec<(&str, &V)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let qr: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &mdr, &qr).unwrap();
    drop(f);
    let g = Model::load(path.to_str().unwrap(), &Device::Cpu).unwrap();
    assert!(g.config().tie_word_embeddings);
    assert_eq!(g.tokenizer.eos_token.as_deref(), Some("<|im_end|>"));
    assert!(g.stop_ids.contains(&2));
    let x = ids(&seq(12, 7));
    let a = hf.decoder.forward(&x, None, Mode::Infer).unwrap();
    let b = g.decoder.forward(&x, None, Mode::Infer).unwrap();
    let diff = max_abs_diff(&a, &b);
    assert!(diff < 1e-5, "gguf vs hf {diff}");
}

#[test]
fn clear_errors_name_the_file_or_tensor() {
    let d = tempfile::tempdir().unwrap();
    let err = Model::load(d.path().join("nope").to_str().unwrap(), &Device::Cpu).unwrap_err();
    assert!(matches!(err, ModelError::MissingFile { .. }), "{err}");
    // Missing config.json in a directory.
    let err = Model::load(d.path().to_str().unwrap(), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    // Unknown architecture.
    write_tiny(d.path(), LLAMA, 1, false);
    let mut cj = config_json(LLAMA);
    cj["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    std::fs::write(d.path().join("config.json"), cj.to_string()).unwrap();
    let err = Model::load(d.path().to_str().unwrap(), &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, ModelError::UnknownArchitecture { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("GPTNeoXForCausalLM"));
    // Shape mismatch: config says a wider MLP than the weights have.
    let mut cj = config_json(LLAMA);
    cj["intermediate_size"] = serde_json::json!(50);
    std::fs::write(d.path().join("config.json"), cj.to_string()).unwrap();
    let err = Model::load(d.path().to_str().unwrap(), &Device::Cpu).unwrap_err();
    let s = err.to_string();
    assert!(matches!(err, ModelError::ShapeMismatch { .. }), "{s}");
    assert!(
        s.contains("gate_proj.weight") && s.contains("model.safetensors"),
        "{s}"
    );
    // Missing tokenizer.
    std::fs::write(d.path().join("config.json"), config_json(LLAMA).to_string()).unwrap();
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    let err = Model::load(d.path().to_str().unwrap(), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn chat_template_from_tokenizer_config() {
    let (_d, m) = load_tiny(QWEN2, 15);
    let s = m
        .render_chat(
            &[
                Message::system("be brief"),
                Message::user("what is 1 + 2 ?"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(
        s,
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nwhat is 1 + 2 ?<|im_end|>\n<|im_start|>assistant\n"
    );
    let t = m
        .encode_chat(&[Message::user("hello world")], true)
        .unwrap();
    assert_eq!(t[0], 1);
    assert!(m.stop_ids.contains(&2));
}

#[test]
fn tree_sampling_shares_prefixes_and_is_deterministic() {
    let (_d, m) = load_tiny(LLAMA, 16);
    let params = SamplingParams {
        temperature: 0.8,
        max_new_tokens: 6,
        ..Default::default()
    };
    let run = || {
        let mut tree = TreeSampler::new(&m, 42);
        let p0 = seq(20, 1);
        let gens = tree.sample(None, &p0, None, 3, &params, &[]).unwrap();
        let mut leaves = vec![];
        for (i, g) in gens.iter().enumerate() {
            // The next agent's prompt continues the parent's sequence.
            let mut p1 = p0.clone();
            p1.extend(&g.tokens);
            p1.extend(seq(15, 2 + i as u32));
            let kids = tree
                .sample(Some(&g.cache), &p1, None, 3, &params, &[i])
                .unwrap();
            leaves.extend(kids.into_iter().map(|c| c.tokens));
        }
        (leaves, tree.stats.clone())
    };
    let (l1, s1) = run();
    let (l2, s2) = run();
    assert_eq!(l1, l2);
    assert_eq!(s1, s2);
    assert_eq!(s1.sequences, 12);
    assert!(s1.prefill_computed <= s1.prefill_minimum + 3, "{s1:?}");
    // Independent sampling of one leaf with its derived seed gives the same tokens.
    let mut tree = TreeSampler::new(&m, 42);
    let p0 = seq(20, 1);
    let g = tree.sample(None, &p0, None, 3, &params, &[]).unwrap();
    let mut p1 = p0.clone();
    p1.extend(&g[1].tokens);
    p1.extend(seq(15, 3));
    let cache = m.prefill(&p1, None).unwrap();
    let alone = m
        .generate(
            vec![Branch {
                cache,
                seed: malt_model::branch_seed(42, &[1, 2]),
            }],
            &params,
            None,
        )
        .unwrap();
    assert_eq!(alone[0].tokens, l1[5]);
    let _ = Cache::empty();
}

#[test]
fn adapter_caches_are_not_shared_across_adapters() {
    let (_d, m) = load_tiny(QWEN3, 17);
    let a = adapter(&m, 18);
    let p = seq(10, 1);
    let base = m.prefill(&p, None).unwrap();
    let with_a = m.extend(&base, &p, Some(&a)).unwrap();
    let full = m.decoder.forward(&ids(&p), Some(&a), Mode::Infer).unwrap();
    let d = max_abs_diff(&full.i((0, 9)).unwrap(), with_a.last_logits().unwrap());
    assert!(d < 1e-4, "{d}");
    let err = m
        .generate(
            vec![Branch {
                cache: base,
                seed: 0,
            }],
            &greedy(),
            Some(&a),
        )
        .unwrap_err();
    assert!(err.to_string().contains("different adapter"));
}

#[test]
fn stop_strings_and_max_tokens() {
    let (_d, m) = load_tiny(LLAMA, 19);
    let p = seq(6, 1);
    let free = m
        .complete(
            &p,
            &SamplingParams {
                temperature: 0.0,
                max_new_tokens: 12,
                ..Default::default()
            },
            0,
            None,
        )
        .unwrap();
    assert!(free.tokens.len() <= 12);
    if free.tokens.len() >= 3 {
        let third = m.tokenizer.decode(&free.tokens[2..3], true).unwrap();
        let stopped = m
            .complete(
                &p,
                &SamplingParams {
                    temperature: 0.0,
                    max_new_tokens: 12,
                    stop: vec![third.clone()],
                    ..Default::default()
                },
                0,
                None,
            )
            .unwrap();
        assert_eq!(stopped.finish, malt_model::Finish::StopString);
        assert!(!stopped.text.contains(&third));
    }
}

#[test]
fn sample_level_batches_nodes_like_per_node_sampling() {
    let (_d, m) = load_tiny(QWEN2, 20);
    let params = SamplingParams {
        temperature: 0.8,
        max_new_tokens: 5,
        ..Default::default()
    };
    let p0 = seq(12, 1);
    let mut t1 = TreeSampler::new(&m, 9);
    let g = t1.sample(None, &p0, None, 3, &params, &[]).unwrap();
    let prompts: Vec<Vec<u32>> = g
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut p = p0.clone();
            p.extend(&c.tokens);
            p.extend(seq(4 + i, 7));
            p
        })
        .collect();
    let paths: Vec<Vec<usize>> = (0..3).map(|i| vec![i]).collect();
    let reqs: Vec<malt_model::NodeRequest> = (0..3)
        .map(|i| malt_model::NodeRequest {
            parent: Some(&g[i].cache),
            prompt: &prompts[i],
            n: 2,
            path: &paths[i],
        })
        .collect();
    let batched = t1.sample_level(&reqs, None, &params).unwrap();
    let mut t2 = TreeSampler::new(&m, 9);
    for i in 0..3 {
        let one = t2
            .sample(Some(&g[i].cache), &prompts[i], None, 2, &params, &paths[i])
            .unwrap();
        let a: Vec<_> = one.iter().map(|c| c.tokens.clone()).collect();
        let b: Vec<_> = batched[i].iter().map(|c| c.tokens.clone()).collect();
        assert_eq!(a, b, "node {i}");
    }
    assert_eq!(t1.stats.sequences, 9);
    assert!(t1.stats.prefill_computed <= t1.stats.prefill_minimum + 3);
}
