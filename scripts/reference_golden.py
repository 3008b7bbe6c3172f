#!/usr/bin/env python3
"""Golden fixtures of the reference implementations (transformers, PEFT, TRL) that malt's
reference-agreement tests compare with (issue 26, item 4).

The Rust tests `host/crates/model/tests/reference.rs` and `host/crates/train/tests/reference.rs`
read the committed output in `tests/fixtures/reference/`, so CI needs no torch. Pointed at a
Python with these packages (`MALT_REFERENCE_PYTHON=~/.cache/ref-venv/bin/python`), the same
tests run this script into a temporary folder and compare malt with the fresh output too.

Install (CPU is enough; PyPI's torch wheel pulls CUDA libraries but runs on the CPU):

    python3 -m venv ~/.cache/ref-venv && \
        ~/.cache/ref-venv/bin/pip install torch transformers gguf peft accelerate trl

Measured with torch 2.15, transformers 5.25, peft 0.21, trl 1.16, tokenizers 0.23 (written into
every fixture's `versions`).

Run (from the repository root; 45 s on a 2-core machine, all groups):

    ~/.cache/ref-venv/bin/python scripts/reference_golden.py                  # every group
    ~/.cache/ref-venv/bin/python scripts/reference_golden.py --only tiny      # one group
    ~/.cache/ref-venv/bin/python scripts/reference_golden.py --only logits,greedy
    ~/.cache/ref-venv/bin/python scripts/reference_golden.py --out /tmp/ref --gguf PATH

Groups and files (all under --out, default tests/fixtures/reference):

- `tokenizer`: smollm2_tokenizer.json. SmolLM2-135M-Instruct's tokenizer as transformers reads
  it from the embedded GGUF (`AutoTokenizer.from_pretrained(dir, gguf_file=F)`): token ids of a
  corpus (raw texts with and without special tokens; chat renderings with their text), and for
  each entry the ids of llama.cpp's reading of the same GGUF (`tokenizer.ggml.pre = "smollm"`:
  every `\\p{N}` split off first, then the GPT-2 regex; the same as SmolLM2's own
  tokenizer.json, which has a `Digits(individual_digits)` pre-tokenizer). transformers' GGUF
  loader uses the plain GPT-2 regex, so the two differ where a space precedes a non-ASCII
  numeral (" ½", " ٣", " ²"): such entries carry `ids_llamacpp` and `readings_differ: true`.
  llama.cpp's own /tokenize (the llama-server that scripts/llama-server.sh builds) agreed with
  `ids_llamacpp` / `ids` on every entry (malt-model's test with MALT_LLAMA_SERVER checks it).
- `logits`: smollm2_logits.json. Top-8 logits (f32) at every position of a few prompts, fed the
  reference's ids (the GGUF's Q4_1 weights dequantised to f32 by transformers).
- `greedy`: smollm2_greedy.json. 32-token greedy continuations of the same prompts with the
  top-1 minus top-2 logit margin at each step, and the chat answer to issue 26's question.
- `sampling`: smollm2_sampling.json. Next-token distributions at temperature 0.3, for two raw
  prompts continued greedily up to the step where that distribution has the most entropy (at
  the prompts' own end it is one token at 98-99.97 %, which tests nothing).
- `tiny`: tiny_llama/ and tiny_qwen2/: a tiny random LlamaForCausalLM and Qwen2ForCausalLM
  (save_pretrained: config.json, model.safetensors, a byte-level BPE tokenizer trained here with
  ChatML special tokens and a chat template), a PEFT LoRA adapter (adapter_init/,
  init_lora_weights=False so B is not zero), and reference.json + reference.safetensors: token
  ids, full logits of two sequences (base and with the adapter), greedy continuations, one LoRA
  SFT step's loss and gradients and two DPO losses and gradients (reference = the base model,
  and reference = the initial adapter), each checked against TRL's own SFTTrainer /
  DPOTrainer loss on the same batch.
- `malt_adapter`: tiny_*/malt_adapter_logits.{json,safetensors}: PEFT's logits for the adapter
  malt's trainer wrote after one SFT step (tiny_*/malt_sft_adapter/, committed). The flow:
      1. this script, group `tiny` (the models, the initial adapter, the batch);
      2. MALT_REFERENCE_WRITE_ADAPTER=1 cargo nextest run -p malt-train --test reference
         (the trainer's step from adapter_init/ on the SFT records, written by `save_peft`
         into tiny_*/malt_sft_adapter/);
      3. this script, group `malt_adapter`.
  The output is deterministic: when a regenerated `tiny` group differs from the committed one
  (another torch version), the committed malt adapter is stale: repeat steps 2 and 3.

- `pg`: tiny_*/pg_reference.{json,safetensors}: the clipped policy-gradient loss of online
  training (`malt_train::pg`) on one sibling group of three completions of the `tiny` group's
  model and initial adapter, log-probs at temperature 0.7, a KL penalty to the base model, for
  the token norm and the sequence norm: per-token log-probs, both losses and every LoRA
  gradient, each checked against TRL's GRPOTrainer._compute_loss (loss types bnpo and grpo,
  bf16 autocast off) on the same inputs. host/crates/train/tests/reference_pg.rs reads it.

Check an exported tokenizer (a live check; the Rust tests call it with MALT_REFERENCE_PYTHON):

    python scripts/reference_golden.py --exported-tokenizer DIR [--out FIXTURES]

loads DIR with `AutoTokenizer.from_pretrained(DIR)` (what `malt export --merge` and
`Tokenizer::save_hf` write) and exits non-zero unless it reproduces the fixture's ids of every
corpus entry (raw texts, and chat renderings through DIR's own chat template), llama.cpp's
reading where the two readings differ (as the Rust tests expect).

Everything runs on the CPU in f32 with torch.set_num_threads(2); the output is deterministic
(fixed seeds, no sampling). GSM8K and CommonsenseQA questions are read from ../shared/data
(`--data`) and copied into the fixture; without that folder the texts already in the fixture
folder are reused.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import inspect
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "fixtures" / "reference"
DEFAULT_GGUF = Path.home() / ".cache/malt/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DATA = REPO.parent / "shared" / "data"
GROUPS = ["tokenizer", "logits", "greedy", "sampling", "tiny", "malt_adapter", "pg"]

# The question of issue 26: transformers gives 42 prompt ids and answers Paris.
FRANCE = "What is the capital of France? Answer in one word."
FRANCE_IDS = 42
FRANCE_ANSWER = "The capital of France is Paris."

TOP_K = 8
GREEDY_TOKENS = 32
TEMPERATURE = 0.3
# Tokens of the temperature-0.3 distribution kept until this much mass is left.
SAMPLING_TAIL = 1e-7

# Ids that end a SmolLM2 continuation (malt's stop ids: <|im_end|>, <|endoftext|>).
SMOLLM2_STOP = [0, 2]

# A few MATH problems (Hendrycks et al.), written here so the fixture does not need the data set.
MATH_PROBLEMS = [
    "If $f(x) = 3x + 2$ and $g(x) = (x - 1)^2$, what is $f(g(-2))$?",
    "How many vertical asymptotes does the graph of $y=\\frac{2}{x^2+x-6}$ have?",
    "What is the positive difference between $120\\%$ of 30 and $130\\%$ of 20?",
    "Find the sum of all $x$ that satisfy $\\sqrt{x^2 - 4x + 4} = 7$, i.e. $|x-2| = 7$.",
]

RAW_TEXTS = [
    ("capital", "The capital of France is"),
    ("tom", "Tom has 3 apples"),
    ("empty", ""),
    ("digits", "1234567890 0.5 3.14159 1,000,000 2024-01-22 007 x2 10x $12.50"),
    ("digit_runs", "12345678901234567890 99999 000 1 22 333 4444"),
    ("latex", "Solve $x^2 + 3x - 4 = 0$: $x = \\frac{-3 \\pm \\sqrt{9 + 16}}{2}$, so "
              "$x \\in \\{1, -4\\}$.\n\\begin{align} a &= b \\\\ c &= \\int_0^1 f(t)\\,dt \\end{align}"),
    ("unicode_accents", "Café, naïve, résumé, Zürich, São Paulo, Ærøskøbing, Łódź, ÉCOLE"),
    ("unicode_cjk", "北京是中国的首都。東京は日本の首都です。서울은 한국의 수도입니다."),
    ("emoji", "I ❤️ 🍕 and 👨‍👩‍👧‍👦! 🎉🎉 👍🏽"),
    ("combining", "e\u0301 vs \u00e9, n\u0303, a\u030a\u0301, Z\u0335\u0321a\u0334lgo"),
    ("non_ascii_digits", "٣ + ٤ = ٧, ½ of 10 is 5, x² + y³, ①②③, ¼ cup, १२३, Ⅻ"),
    ("space_before_numerals", "a ½ b ² c ٣٤ d ⅷ e ¾"),
    ("spaces", "a  b   c    d     e"),
    ("tabs", "a\tb\t\tc\t \td"),
    ("newlines", "line one\n\n\nline two\nline three\n"),
    ("crlf", "first\r\nsecond\r\n\r\nthird"),
    ("trailing_spaces", "trailing spaces   "),
    ("leading_space", " leading space"),
    ("leading_spaces", "   three leading spaces"),
    ("only_whitespace", " \n\t "),
    ("special_mid", "Hello <|im_end|> world<|im_start|>user\nHi<|endoftext|>!"),
    ("special_only", "<|im_start|><|im_end|>"),
    ("code", "def f(x):\n    return x ** 2  # square\n\nprint(f(3))"),
    ("contractions", "I'm sure they'll say it's what we've done, isn't it? DON'T SHOUT"),
    ("punctuation", "Wait... what?! (yes) [no] {maybe} -- \"quoted\" 'single' #hash @at $5.00 50% a/b"),
]


def chat_cases(gsm, csqa):
    q = gsm[0]
    return [
        ("chat_france_issue26", [{"role": "user", "content": FRANCE}], True),
        ("chat_user_only", [{"role": "user", "content": "What is the capital of France?"}], True),
        ("chat_system_user", [{"role": "system", "content": "You are a careful math tutor."},
                              {"role": "user", "content": q}], True),
        ("chat_system_user_no_generation_prompt",
         [{"role": "system", "content": "You are a careful math tutor."},
          {"role": "user", "content": q}], False),
        ("chat_multi_turn", [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is 2+3?"},
            {"role": "assistant", "content": "2+3 = 5."},
            {"role": "user", "content": "And times 4?"},
            {"role": "assistant", "content": "5 * 4 = 20."},
        ], False),
        ("chat_multi_turn_generation_prompt", [
            {"role": "user", "content": "Name a prime number."},
            {"role": "assistant", "content": "7"},
            {"role": "user", "content": "Another one, larger than 100?"},
        ], True),
        ("chat_csqa", [{"role": "user", "content": csqa[0]}], True),
        ("chat_unicode", [{"role": "user", "content": "Übersetze: 北京 ½ 👍🏽 ٣"}], True),
        ("chat_whitespace", [{"role": "user", "content": "  padded  \n\n"}], True),
    ]


# ---------------------------------------------------------------------------------------------
# Output helpers


def versions():
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("torch", "transformers", "tokenizers", "peft", "trl", "gguf"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _dump(obj, indent=0):
    """JSON with lists of numbers (and short lists of strings) on one line."""
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad} {json.dumps(k)}: {_dump(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in obj):
            return "[" + ", ".join(json.dumps(x) for x in obj) + "]"
        if all(isinstance(x, list) and all(isinstance(y, (int, float)) for y in x) for x in obj) and obj:
            inner = [f"{pad}  " + _dump(x) for x in obj]
            return "[\n" + ",\n".join(inner) + "\n" + pad + "]"
        if not obj:
            return "[]"
        inner = [f"{pad}  " + _dump(x, indent + 2) for x in obj]
        return "[\n" + ",\n".join(inner) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def write_json(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dump(obj) + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def f32(x) -> float:
    """A float32 value as the shortest decimal that reads back to the same float32."""
    import numpy as np
    v = np.float32(x)
    return float(np.format_float_positional(v, unique=True, trim="-")) if np.isfinite(v) else float(v)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Data read from ../shared (copied into the fixture)


def corpus_questions(data_dir: Path, out: Path):
    gsm_path = data_dir / "gsm8k" / "test.jsonl"
    csqa_path = data_dir / "csqa" / "dev.jsonl"
    if gsm_path.exists() and csqa_path.exists():
        gsm = [json.loads(l)["question"] for l in gsm_path.read_text().splitlines()[:3]]
        csqa = []
        for l in csqa_path.read_text().splitlines()[:3]:
            r = json.loads(l)
            choices = "\n".join(f"{a}. {t}" for a, t in zip(r["choices"]["label"], r["choices"]["text"]))
            csqa.append(f"{r['question']}\n{choices}")
        return gsm, csqa
    for folder in (out, DEFAULT_OUT):
        f = folder / "smollm2_tokenizer.json"
        if f.exists():
            entries = {e["name"]: e["text"] for e in json.loads(f.read_text())["raw"]}
            gsm = [entries[f"gsm8k_{i}"] for i in range(3)]
            csqa = [entries[f"csqa_{i}"] for i in range(3)]
            print(f"{data_dir} not found: GSM8K and CommonsenseQA texts from {f}")
            return gsm, csqa
    sys.exit(f"neither {data_dir} nor an earlier fixture holds the GSM8K / CommonsenseQA texts")


# ---------------------------------------------------------------------------------------------
# SmolLM2 from the GGUF


class Smol:
    def __init__(self, gguf: Path):
        from transformers import AutoTokenizer
        if not gguf.exists():
            sys.exit(f"{gguf} does not exist (malt fetches it: `malt generate --model smollm2-135m-instruct ...`)")
        self.gguf = gguf
        self.tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        self._model = None
        self.llamacpp = llamacpp_reading(self.tok)

    @property
    def model(self):
        if self._model is None:
            import torch
            from transformers import LlamaForCausalLM
            self._model = LlamaForCausalLM.from_pretrained(
                str(self.gguf.parent), gguf_file=self.gguf.name, dtype=torch.float32)
            self._model.eval()
        return self._model

    def ids(self, text, add_special=False):
        return self.tok(text, add_special_tokens=add_special)["input_ids"]

    def chat(self, messages, gen):
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def llamacpp_reading(tok):
    """transformers' GGUF tokenizer with llama.cpp's pre-tokenizer for `pre = "smollm"`:
    `\\p{N}` isolated first, then the GPT-2 regex (llama-vocab.cpp), which is also what
    SmolLM2's own tokenizer.json does (Digits(individual_digits=True) + ByteLevel)."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    t = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    return t


def group_tokenizer(smol: Smol, out: Path, gsm, csqa):
    raw = list(RAW_TEXTS)
    raw += [(f"gsm8k_{i}", q) for i, q in enumerate(gsm)]
    raw += [(f"csqa_{i}", q) for i, q in enumerate(csqa)]
    raw += [(f"math_{i}", q) for i, q in enumerate(MATH_PROBLEMS)]
    differ = []

    def entry(name, text):
        ids = smol.ids(text)
        e = {"name": name, "text": text, "ids": ids, "ids_default": smol.ids(text, True)}
        lc = smol.llamacpp.encode(text, add_special_tokens=False).ids
        if lc != ids:
            e["ids_llamacpp"] = lc
            e["readings_differ"] = True
            differ.append(name)
        return e

    raws = [entry(n, t) for n, t in raw]
    chats = []
    for name, msgs, gen in chat_cases(gsm, csqa):
        text = smol.chat(msgs, gen)
        e = entry(name, text)
        templ = smol.tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
        templ = templ["input_ids"] if isinstance(templ, dict) or hasattr(templ, "keys") else templ
        assert list(templ) == e["ids"], f"{name}: apply_chat_template(tokenize=True) != ids of its text"
        chats.append({"name": name, "messages": msgs, "add_generation_prompt": gen, **{
            k: v for k, v in e.items() if k != "name"}})
    france = next(c for c in chats if c["name"] == "chat_france_issue26")
    assert len(france["ids"]) == FRANCE_IDS, f"France prompt: {len(france['ids'])} ids, expected {FRANCE_IDS}"
    meta = {
        "source": "transformers AutoTokenizer.from_pretrained(dir, gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf)",
        "gguf_sha256": sha256_file(smol.gguf),
        "ids": "tok(text, add_special_tokens=False); chat entries: the text of apply_chat_template(messages, "
               "tokenize=False, add_generation_prompt) tokenized the same way (equal to tokenize=True)",
        "ids_default": "tok(text) with its default add_special_tokens (SmolLM2 adds none)",
        "ids_llamacpp": "only where it differs from ids: llama.cpp's reading of pre = \"smollm\" (\\p{N} "
                        "isolated, then the GPT-2 regex), which is also SmolLM2's own tokenizer.json",
        "readings_differ": differ,
        "pre_tokenizer": json.loads(smol.tok.backend_tokenizer.to_str())["pre_tokenizer"],
        "bos_token": smol.tok.bos_token, "eos_token": smol.tok.eos_token,
        "chat_template": smol.tok.chat_template,
        "versions": versions(),
    }
    write_json(out / "smollm2_tokenizer.json", {"meta": meta, "raw": raws, "chat": chats})
    if differ:
        print(f"transformers' GGUF reading and llama.cpp's differ on: {', '.join(differ)}")


def smol_prompts(smol: Smol, gsm):
    """The prompts of the logits, greedy and sampling groups: (name, text, ids)."""
    chat = lambda msgs: smol.chat(msgs, True)  # noqa: E731
    out = [
        ("capital", "The capital of France is"),
        ("tom", "Tom has 3 apples and buys 12 more. How many apples does he have now?"),
        ("chat_france_issue26", chat([{"role": "user", "content": FRANCE}])),
        ("chat_gsm8k", chat([{"role": "system", "content": "You are a careful math tutor."},
                             {"role": "user", "content": gsm[1]}])),
    ]
    return [(n, t, smol.ids(t)) for n, t in out]


def group_logits(smol: Smol, out: Path, gsm):
    import torch
    prompts = []
    for name, text, ids in smol_prompts(smol, gsm):
        with torch.no_grad():
            logits = smol.model(torch.tensor([ids])).logits[0].float()
        vals, idx = logits.topk(TOP_K, dim=-1)
        prompts.append({
            "name": name, "text": text, "ids": ids,
            "top_ids": idx.tolist(),
            "top_logits": [[f32(v) for v in row] for row in vals.tolist()],
        })
    meta = {"source": "LlamaForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32), a full "
                      "forward of ids (no cache)", "k": TOP_K, "tolerance": 1e-3,
            "gguf_sha256": sha256_file(smol.gguf), "versions": versions()}
    write_json(out / "smollm2_logits.json", {"meta": meta, "prompts": prompts})


def greedy_ids(model, ids, n, stop):
    """Greedy continuation with a KV cache; stops after a stop id (included). Returns the ids
    and the top-1 minus top-2 logit margin of each step."""
    import torch
    from transformers import DynamicCache
    out, margins = [], []
    cache = DynamicCache()
    x = torch.tensor([ids])
    # transformers 5.25 renamed the argument `past_key_values` to `cache` (the old name warns).
    arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        for _ in range(n):
            o = model(x, use_cache=True, **{arg: cache})  # the cache is updated in place
            last = o.logits[0, -1].float()
            top = last.topk(2)
            t = int(top.indices[0])
            out.append(t)
            margins.append(f32(top.values[0] - top.values[1]))
            if t in stop:
                break
            x = torch.tensor([[t]])
    return out, margins


def group_greedy(smol: Smol, out: Path, gsm):
    conts = []
    for name, text, ids in smol_prompts(smol, gsm):
        gen, margins = greedy_ids(smol.model, ids, GREEDY_TOKENS, SMOLLM2_STOP)
        body = gen[:-1] if gen and gen[-1] in SMOLLM2_STOP else gen
        conts.append({"name": name, "prompt": text, "prompt_ids": ids, "ids": gen,
                      "text": smol.tok.decode(body, skip_special_tokens=True), "margins": margins})
    france = next(c for c in conts if c["name"] == "chat_france_issue26")
    assert france["text"] == FRANCE_ANSWER, f"France answer {france['text']!r}"
    answer = {"question": FRANCE, "messages": [{"role": "user", "content": FRANCE}],
              "prompt": france["prompt"], "prompt_ids": france["prompt_ids"],
              "ids": france["ids"], "text": france["text"], "first_margin": france["margins"][0]}
    meta = {"source": "argmax of LlamaForCausalLM's f32 logits with a KV cache, from the prompt's ids",
            "max_new_tokens": GREEDY_TOKENS, "stop_ids": SMOLLM2_STOP,
            "ids": "generated ids; a stop id ends them and is included",
            "text": "decode of ids without the stop id, skip_special_tokens",
            "margin_rule": "compare up to the first step whose margin is below 1e-3",
            "gguf_sha256": sha256_file(smol.gguf), "versions": versions()}
    write_json(out / "smollm2_greedy.json", {"meta": meta, "continuations": conts, "france_answer": answer})


def distribution(logits, temperature):
    """Tokens of softmax(logits / T) by decreasing probability until all but SAMPLING_TAIL of the
    mass is covered, and the remainder."""
    import torch
    p = torch.softmax(logits.double() / temperature, dim=-1)
    probs, idx = p.sort(descending=True)
    toks, acc = [], 0.0
    for q, i in zip(probs.tolist(), idx.tolist()):
        if acc >= 1.0 - SAMPLING_TAIL:
            break
        toks.append([i, q])
        acc += q
    return toks, max(0.0, 1.0 - acc)


def group_sampling(smol: Smol, out: Path, gsm):
    """For two prompts, the point of their greedy continuation where the temperature-0.3
    distribution has the most entropy (at the prompts' own end it is nearly one token), and the
    distribution there."""
    import torch
    prompts = []
    for name, text, ids in smol_prompts(smol, gsm):
        if name not in ("capital", "tom"):
            continue
        gen, _ = greedy_ids(smol.model, ids, GREEDY_TOKENS, SMOLLM2_STOP)
        with torch.no_grad():
            logits = smol.model(torch.tensor([ids + gen])).logits[0].float()
        best, best_h = 0, -1.0
        for k in range(len(gen)):
            p = torch.softmax(logits[len(ids) - 1 + k].double() / TEMPERATURE, dim=-1)
            h = float(-(p * p.clamp(min=1e-300).log()).sum())
            if h > best_h:
                best, best_h = k, h
        ctx = ids + gen[:best]
        toks, rest = distribution(logits[len(ctx) - 1], TEMPERATURE)
        prompts.append({"name": name, "text": smol.tok.decode(ctx), "ids": ctx, "temperature": TEMPERATURE,
                        "entropy": best_h, "tokens": [t for t, _ in toks], "probs": [q for _, q in toks],
                        "remainder": rest})
    meta = {"source": "softmax(logits / T) in f64 of LlamaForCausalLM's f32 next-token logits after ids "
                      "(a prompt and the start of its greedy continuation, cut where the distribution "
                      "has the most entropy)",
            "tokens": f"by decreasing probability until all but {SAMPLING_TAIL} of the mass",
            "gguf_sha256": sha256_file(smol.gguf), "versions": versions()}
    write_json(out / "smollm2_sampling.json", {"meta": meta, "prompts": prompts})


# ---------------------------------------------------------------------------------------------
# Tiny random models

TINY_SYSTEM = "Be brief."
TINY_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + TINY_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
TINY_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "What is 2+3? 2+3 is 5. What is 12 + 30? It is 42.",
    "The sky is blue on a clear day and the sea is salty.",
    "Hello, who are you? I am a tiny test model, and I answer briefly.",
    "system user assistant You are a helpful assistant. Answer briefly.",
    "Name the color of the sky. Name a prime number: 7, 11, 13, 101.",
    "The cat sat on the mat. The dog ran in the park with the cat.",
    "Is the sea salty? Yes, the sea is salty. No, it is not.",
] * 4
TINY_VOCAB = 320
TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LORA_R = 4
LORA_ALPHA = 8
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DPO_BETA = 0.1

TINY_TEXTS = [
    ("plain", "The cat sat on the mat."),
    ("digits", "12 + 30 = 42, and 2+3 is 5."),
    ("unicode", "Café ½ 北京 👍"),
    ("whitespace", "  two  spaces\n\nand\ttab "),
    ("special", "Hi<|im_end|>\n<|im_start|>user"),
    ("empty", ""),
]
TINY_CHATS = [
    ("user_only", [{"role": "user", "content": "Hi, who are you?"}], True),
    ("system_user", [{"role": "system", "content": "Answer briefly."},
                     {"role": "user", "content": "What is 2+3?"}], True),
    ("multi_turn", [{"role": "user", "content": "What is 2+3?"},
                    {"role": "assistant", "content": "5"},
                    {"role": "user", "content": "Is the sea salty?"}], False),
]
TINY_SEQUENCES = [
    ("chat", "user_only"),    # the rendered chat of TINY_CHATS[0]
    ("text", "The cat sat on the mat. 12 + 30 = 42"),
]
SFT_RECORDS = [
    {"prompt": [{"role": "user", "content": "What is 2+3?"}],
     "completion": [{"role": "assistant", "content": "2+3 is 5."}]},
    {"prompt": [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Name the color of the sky on a clear day."}],
     "completion": [{"role": "assistant", "content": "The sky is blue on a clear day, and the sea is blue too."}]},
]
DPO_RECORDS = [
    {"prompt": [{"role": "user", "content": "What is 2+3?"}],
     "chosen": [{"role": "assistant", "content": "5"}],
     "rejected": [{"role": "assistant", "content": "It is 6, I think."}]},
    {"prompt": [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Is the sea salty?"}],
     "chosen": [{"role": "assistant", "content": "Yes, the sea is salty."}],
     "rejected": [{"role": "assistant", "content": "No."}]},
]
TINY_STOP = [0, 2]

# The policy-gradient fixture (group `pg`): one sibling group (a prompt and three completions,
# MALT's n = 3), the last one cut before its EOS as a completion stopped at max_new_tokens is.
PG_PROMPT = [{"role": "user", "content": "What is 12 + 30?"}]
PG_COMPLETIONS = ["It is 42.", "12 + 30 is 5, I think. No, it is 6.", "42"]
PG_ADVANTAGES = [1.0, -1.25, 0.25]
PG_TEMPERATURE = 0.7
PG_BETA = 0.04
PG_EPS = 0.2
# The log-probs "when the update started" are the policy's shifted by this times
# cos(1.7 (t + 3 b)): ratios from 0.70 to 1.42, so tokens fall on both sides of both clips.
PG_OLD_SHIFT = 0.35


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=TINY_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    t.train_from_iterator(TINY_CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = TINY_TEMPLATE
    return tok


def tiny_config(arch, vocab):
    from transformers import LlamaConfig, Qwen2Config
    common = dict(vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        # Untied head, llama3 RoPE scaling: of the 12-dim heads' 6 frequencies one is kept, one
        # smoothed and four divided by the factor (wavelengths 6, 56, 500+ against 16 and 64).
        return LlamaConfig(**common, tie_word_embeddings=False, rope_theta=500000.0,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    # Qwen2: q/k/v biases, tied embeddings, Qwen2.5's RoPE base.
    return Qwen2Config(**common, tie_word_embeddings=True, rope_theta=1000000.0, use_sliding_window=False)


def tiny_init(model, seed):
    """Weights with a spread of logits (HF's N(0, 0.02) gives near-uniform ones and greedy
    margins of 1e-4): embeddings N(0, 0.5), matrices N(0, 1/sqrt(in)) (the head 2/sqrt(in)),
    norms 1 +- 0.2, biases +- 0.2."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                p.copy_(1.0 + (torch.rand(p.shape, generator=g) - 0.5) * 0.4)
            elif name.endswith("bias"):
                p.copy_((torch.rand(p.shape, generator=g) - 0.5) * 0.4)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "lm_head" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 2.0 / math.sqrt(p.shape[1]))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def lora_config():
    from peft import LoraConfig
    return LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=LORA_TARGETS,
                      init_lora_weights=False, task_type="CAUSAL_LM", bias="none")


def peft_name(n: str) -> str:
    """PEFT's parameter name as saved (and as malt names its variables)."""
    return n.replace(".default.", ".")


def lora_params(model):
    return [(peft_name(n), p) for n, p in model.named_parameters() if "lora_" in n and ".default." in n]


def seq_logps(model, seqs, pad_id):
    """Per-sequence sums of completion-token log-probs (right-padded batch with an attention
    mask), and the completion token counts."""
    import torch
    n = max(len(s["ids"]) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), n), dtype=torch.long)
    lab = torch.full((len(seqs), n), -100, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s["ids"])] = torch.tensor(s["ids"])
        att[r, :len(s["ids"])] = 1
        lab[r, s["prompt_len"]:len(s["ids"])] = torch.tensor(s["ids"][s["prompt_len"]:])
    logits = model(input_ids=ids, attention_mask=att).logits.float()
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    tgt = lab[:, 1:]
    mask = tgt != -100
    tok = lp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    return tok.sum(dim=1), mask.sum(dim=1)


def grads_of(model):
    out = {}
    for n, p in lora_params(model):
        out[n] = p.grad.detach().clone() if p.grad is not None else None
        assert out[n] is not None, f"{n}: no gradient"
    return out


def zero_grads(model):
    for _, p in model.named_parameters():
        p.grad = None


def grad_norm(grads):
    return math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads.values()))


def max_rel_diff(a, b):
    worst = 0.0
    for k in a:
        scale = max(float(a[k].abs().max()), 1e-30)
        worst = max(worst, float((a[k] - b[k]).abs().max()) / scale)
    return worst


def malt_sequences(tok, records, completion_key):
    """malt's tokenisation (host/crates/train/src/data.rs): the prompt rendered with the chat
    template and the generation prompt, then the completion text tokenised on its own, then EOS."""
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    seqs = []
    for r in records:
        p = tok(tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"]
        c = tok(r[completion_key][0]["content"], add_special_tokens=False)["input_ids"] + [eos]
        seqs.append({"ids": p + c, "prompt_len": len(p)})
    return seqs


def trl_sft_check(model, tok, seqs, loss, grads, tmp):
    """TRL's SFTTrainer loss (completion_only_loss, pre-tokenised input_ids + completion_mask)
    and its gradients on the same batch must equal ours."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    m = copy.deepcopy(model)
    zero_grads(m)
    data = Dataset.from_list([{"input_ids": s["ids"], "completion_mask":
                               [0] * s["prompt_len"] + [1] * (len(s["ids"]) - s["prompt_len"])} for s in seqs])
    args = SFTConfig(output_dir=str(tmp / "sft"), per_device_train_batch_size=2, completion_only_loss=True,
                     report_to=[], use_cpu=True, max_length=None, logging_strategy="no", save_strategy="no",
                     dataset_num_proc=None, disable_tqdm=True)
    tr = SFTTrainer(model=m, args=args, train_dataset=data, processing_class=tok)
    batch = tr.data_collator([tr.train_dataset[i] for i in range(len(seqs))])
    n_items = int((batch["labels"][:, 1:] != -100).sum())
    tr.model.train()
    trl_loss = tr.compute_loss(tr.model, batch, num_items_in_batch=n_items)
    trl_loss.backward()
    g = grads_of(tr.model)
    dl, dg = abs(float(trl_loss) - loss), max_rel_diff(grads, g)
    print(f"  TRL SFTTrainer: loss {float(trl_loss):.7f} (ours {loss:.7f}), gradients max rel diff {dg:.2e}")
    assert dl < 1e-5 and dg < 1e-4, "our SFT loss / gradients disagree with TRL's"
    return {"loss": float(trl_loss), "loss_abs_diff": dl, "grads_max_rel_diff": dg}


def trl_dpo_check(model, tok, pairs, ref_base, loss, grads, tmp):
    """TRL's DPOTrainer (sigmoid loss, beta 0.1) on the same pairs. A PEFT model passed with its
    adapter gets a frozen copy of that adapter as reference ("ref"); deleting the copy makes TRL
    disable the adapter for the reference, i.e. use the base model (its path for a new adapter)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    m = copy.deepcopy(model)
    zero_grads(m)
    data = Dataset.from_list(DPO_RECORDS)
    args = DPOConfig(output_dir=str(tmp / "dpo"), per_device_train_batch_size=2, beta=DPO_BETA,
                     loss_type=["sigmoid"], report_to=[], use_cpu=True, logging_strategy="no",
                     save_strategy="no", precompute_ref_log_probs=False, max_length=None,
                     dataset_num_proc=None, disable_tqdm=True)
    tr = DPOTrainer(model=m, args=args, train_dataset=data, processing_class=tok)
    pm = tr.model
    if ref_base:
        assert "ref" in pm.peft_config, "TRL did not add its reference adapter copy"
        pm.delete_adapter("ref")
        pm.set_adapter("default")
        for n, p in pm.named_parameters():
            p.requires_grad_("lora_" in n)
    examples = [{"prompt_ids": c["ids"][:c["prompt_len"]], "chosen_ids": c["ids"][c["prompt_len"]:],
                 "rejected_ids": r["ids"][r["prompt_len"]:]} for c, r in pairs]
    batch = tr.data_collator(examples)
    pm.train()
    trl_loss = tr.compute_loss(pm, batch)
    trl_loss.backward()
    g = grads_of(pm)
    dl, dg = abs(float(trl_loss) - loss), max_rel_diff(grads, g)
    which = "base" if ref_base else "initial adapter"
    print(f"  TRL DPOTrainer (reference {which}): loss {float(trl_loss):.7f} (ours {loss:.7f}), "
          f"gradients max rel diff {dg:.2e}")
    assert dl < 1e-5 and dg < 1e-4, "our DPO loss / gradients disagree with TRL's"
    return {"loss": float(trl_loss), "loss_abs_diff": dl, "grads_max_rel_diff": dg}


def group_tiny(out: Path, check_trl: bool):
    import torch
    from peft import get_peft_model
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM
    tok = tiny_tokenizer()
    vocab = len(tok)
    assert vocab == TINY_VOCAB, f"tiny tokenizer has {vocab} tokens, expected {TINY_VOCAB}"
    for sid, s in enumerate(TINY_SPECIALS):
        assert tok.convert_tokens_to_ids(s) == sid
    for arch, cls, seed in (("llama", LlamaForCausalLM, 11), ("qwen2", Qwen2ForCausalLM, 12)):
        d = out / f"tiny_{arch}"
        print(f"tiny {arch} -> {d}")
        if d.exists():
            for child in d.iterdir():
                if child.name != "malt_sft_adapter" and not child.name.startswith("malt_adapter_logits"):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        d.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        model = cls(tiny_config(arch, vocab))
        tiny_init(model, seed)
        model.eval()
        model.save_pretrained(str(d), safe_serialization=True)
        tok.save_pretrained(str(d))
        (d / "generation_config.json").unlink(missing_ok=True)
        tensors = {}

        # Tokenizer and chat template.
        texts = [{"name": n, "text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]}
                 for n, t in TINY_TEXTS]
        chats = []
        for n, msgs, gen in TINY_CHATS:
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            chats.append({"name": n, "messages": msgs, "add_generation_prompt": gen, "text": text,
                          "ids": tok(text, add_special_tokens=False)["input_ids"]})

        # Full logits of two sequences, base model.
        seqs = []
        for n, t in TINY_SEQUENCES:
            text = next(c["text"] for c in chats if c["name"] == t) if n == "chat" else t
            ids = tok(text, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                tensors[f"logits.{n}"] = model(torch.tensor([ids])).logits[0].float().contiguous()
            seqs.append({"name": n, "text": text, "ids": ids})

        # Greedy continuations of both sequences.
        greedy = []
        for s in seqs:
            gen, margins = greedy_ids(model, s["ids"], GREEDY_TOKENS, TINY_STOP)
            greedy.append({"name": s["name"], "prompt_ids": s["ids"], "ids": gen, "margins": margins})

        # The PEFT adapter: A and B random (init_lora_weights=False), saved as malt loads it.
        torch.manual_seed(seed + 100)
        pm = get_peft_model(model, lora_config())
        pm.save_pretrained(str(d / "adapter_init"))
        (d / "adapter_init" / "README.md").unlink(missing_ok=True)
        # PEFT writes target_modules from a set, in an order that varies from run to run.
        cfg_path = d / "adapter_init" / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["target_modules"] = sorted(cfg["target_modules"])
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        pm.eval()
        for s in seqs:
            with torch.no_grad():
                tensors[f"adapter_logits.{s['name']}"] = pm(torch.tensor([s["ids"]])).logits[0].float().contiguous()

        # One SFT step's loss and gradients: two sequences of different lengths, loss on the
        # completion tokens only, the mean over all completion tokens of the batch (TRL's
        # num_items_in_batch normalisation; malt's step divides by the same count).
        sft_seqs = malt_sequences(tok, SFT_RECORDS, "completion")
        assert len(sft_seqs[0]["ids"]) != len(sft_seqs[1]["ids"])
        pm.train()
        zero_grads(pm)
        sums, counts = seq_logps(pm, sft_seqs, pad_id=0)
        n_tok = int(counts.sum())
        loss = -sums.sum() / n_tok
        loss.backward()
        g = grads_of(pm)
        for k, v in g.items():
            tensors[f"sft.{k}"] = v.float().contiguous()
        sft = {"records": SFT_RECORDS, "sequences": sft_seqs, "loss": float(loss), "tokens": n_tok,
               "tokens_per_sequence": counts.tolist(), "grad_norm": grad_norm(g),
               "gradients": "reference.safetensors: sft.<PEFT tensor name>"}
        tmp = Path(tempfile.mkdtemp(prefix="malt-ref-trl-"))
        try:
            if check_trl:
                sft["trl_check"] = trl_sft_check(pm, tok, sft_seqs, float(loss), g, tmp)

            # DPO: policy = the adapter; reference = the base model (adapter disabled: TRL with a
            # new PEFT adapter, malt's DPO phase without an initial adapter) or = the initial
            # adapter itself (TRL with a PEFT model it copies as "ref", malt's DPO after SFT).
            chosen = malt_sequences(tok, DPO_RECORDS, "chosen")
            rejected = malt_sequences(tok, DPO_RECORDS, "rejected")
            pairs = list(zip(chosen, rejected))
            dpo = {}
            for key, ref_base in (("dpo_ref_base", True), ("dpo_ref_init", False)):
                zero_grads(pm)
                pm.eval()  # dropout is 0 anyway
                with torch.no_grad():
                    if ref_base:
                        with pm.disable_adapter():
                            ref_sums, _ = seq_logps(pm, chosen + rejected, pad_id=0)
                    else:
                        ref_sums, _ = seq_logps(pm, chosen + rejected, pad_id=0)
                pm.train()
                pol, cnt = seq_logps(pm, chosen + rejected, pad_id=0)
                b = len(pairs)
                h = (pol[:b] - ref_sums[:b]) - (pol[b:] - ref_sums[b:])
                losses = -torch.nn.functional.logsigmoid(DPO_BETA * h)
                dloss = losses.mean()
                dloss.backward()
                gd = grads_of(pm)
                for k, v in gd.items():
                    tensors[f"{key}.{k}"] = v.float().contiguous()
                entry = {
                    "reference": "base model (adapter disabled)" if ref_base else "the initial adapter",
                    "beta": DPO_BETA, "loss": float(dloss), "pair_losses": losses.tolist(),
                    "policy_chosen_logps": pol[:b].tolist(), "policy_rejected_logps": pol[b:].tolist(),
                    "ref_chosen_logps": ref_sums[:b].tolist(), "ref_rejected_logps": ref_sums[b:].tolist(),
                    "tokens": cnt.tolist(), "grad_norm": grad_norm(gd),
                    "gradients": f"reference.safetensors: {key}.<PEFT tensor name>",
                }
                if check_trl:
                    entry["trl_check"] = trl_dpo_check(pm, tok, pairs, ref_base, float(dloss), gd, tmp)
                dpo[key] = entry
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        zero_grads(pm)

        save_file(tensors, str(d / "reference.safetensors"))
        ref = {
            "meta": {
                "model": f"{cls.__name__} with random weights (seed {seed}), save_pretrained in f32",
                "tokenizer": f"byte-level BPE trained by `tokenizers` on a small corpus ({vocab} tokens, "
                             "ChatML special tokens), chat template with a default system prompt",
                "adapter_init": "PEFT LoraConfig(r=4, lora_alpha=8, lora_dropout=0, all seven projections, "
                                "init_lora_weights=False), save_pretrained",
                "logits": "reference.safetensors: logits.<sequence> (base), adapter_logits.<sequence> "
                          "(with adapter_init), each (positions, vocab) f32",
                "greedy": "argmax with a KV cache from the sequence's ids, stop ids included",
                "sequences_rule": "SFT/DPO ids are malt's tokenisation (data.rs): chat prompt with the "
                                  "generation prompt, then the completion text's ids, then EOS "
                                  "(<|im_end|>); loss on the ids after prompt_len",
                "stop_ids": TINY_STOP, "versions": versions(),
            },
            "texts": texts, "chats": chats, "sequences": seqs, "greedy": greedy,
            "sft": sft,
            "dpo_records": DPO_RECORDS,
            "dpo_sequences": {"chosen": chosen, "rejected": rejected},
            **dpo,
        }
        write_json(d / "reference.json", ref)


def pg_token_logps(model, seqs, prompt_len, pad_id, temperature):
    """Per-token log-probs of each completion under logits / temperature, right-padded
    (batch, completion tokens), and the completion mask."""
    import torch
    n = max(len(s["ids"]) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), n), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s["ids"])] = torch.tensor(s["ids"])
        att[r, :len(s["ids"])] = 1
    logits = model(input_ids=ids, attention_mask=att).logits.float()
    lp = torch.log_softmax(logits[:, prompt_len - 1:-1] / temperature, dim=-1)
    tgt = ids[:, prompt_len:]
    mask = att[:, prompt_len:].float()
    return lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) * mask, mask, ids


def pg_loss(lp, old, ref, adv, mask, norm):
    """TRL's GRPO per-token loss (two-sided clip, k3 KL) with `norm` = "token" (TRL's bnpo:
    sum over every completion token / their number) or "sequence" (TRL's grpo: each
    completion's token mean, then the mean)."""
    import torch
    r = torch.exp(lp - old)
    a = adv.unsqueeze(1)
    per_token = -torch.min(r * a, torch.clamp(r, 1 - PG_EPS, 1 + PG_EPS) * a)
    # The KL estimate is weighted by r: the tokens were drawn from the old policy, not the
    # current one (TRL's default `use_bias_correction_kl`).
    per_token = per_token + PG_BETA * r * (torch.exp(ref - lp) - (ref - lp) - 1)
    if norm == "token":
        return (per_token * mask).sum() / mask.sum()
    return ((per_token * mask).sum(-1) / mask.sum(-1)).mean()


def trl_pg_check(pm, tok, prompt_len, ids, mask, old, ref, adv, norm, loss, grads, tmp):
    """TRL's GRPOTrainer._compute_loss on the same group (loss_type bnpo for the token norm,
    grpo for the sequence norm), its own log-probs at the same temperature."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    m = copy.deepcopy(pm)
    zero_grads(m)
    args = GRPOConfig(output_dir=str(tmp / "grpo"), beta=PG_BETA, epsilon=PG_EPS, temperature=PG_TEMPERATURE,
                      loss_type={"token": "bnpo", "sequence": "grpo"}[norm], num_generations=3,
                      per_device_train_batch_size=3, max_completion_length=ids.shape[1] - prompt_len,
                      report_to=[], use_cpu=True, logging_strategy="no", save_strategy="no",
                      disable_tqdm=True, bf16=False)  # TRL's default autocasts to bf16: ~0.2 off in log-probs
    data = Dataset.from_list([{"prompt": PG_PROMPT}] * 3)
    tr = GRPOTrainer(model=m, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                     args=args, train_dataset=data, processing_class=tok)
    tr.current_gradient_accumulation_steps = 1
    inputs = {
        "prompt_ids": ids[:, :prompt_len], "prompt_mask": torch.ones_like(ids[:, :prompt_len]),
        "completion_ids": ids[:, prompt_len:], "completion_mask": mask.long(),
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    tr.model.train()
    trl_loss = tr._compute_loss(tr.model, inputs)
    trl_loss.backward()
    g = grads_of(tr.model)
    dl, dg = abs(float(trl_loss) - loss), max_rel_diff(grads, g)
    print(f"  TRL GRPOTrainer ({args.loss_type}): loss {float(trl_loss):.7f} (ours {loss:.7f}), "
          f"gradients max rel diff {dg:.2e}")
    assert dl < 1e-5 and dg < 1e-4, "our policy-gradient loss / gradients disagree with TRL's"
    return {"loss_type": args.loss_type, "loss": float(trl_loss), "loss_abs_diff": dl,
            "grads_max_rel_diff": dg}


def group_pg(out: Path, check_trl: bool):
    """tiny_*/pg_reference.{json,safetensors}: the clipped policy-gradient loss with a KL penalty
    to the base model on one sibling group, both normalisations, from the `tiny` group's model
    and initial adapter."""
    import torch
    from peft import PeftModel
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    for arch in ("llama", "qwen2"):
        d = out / f"tiny_{arch}"
        if not (d / "adapter_init").is_dir():
            sys.exit(f"{d}/adapter_init is missing: run the `tiny` group first")
        print(f"pg {arch} -> {d}")
        tok = AutoTokenizer.from_pretrained(str(d))
        base = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
        pm = PeftModel.from_pretrained(base, str(d / "adapter_init"), is_trainable=True)
        records = [{"prompt": PG_PROMPT, "completion": [{"role": "assistant", "content": c}]}
                   for c in PG_COMPLETIONS]
        seqs = malt_sequences(tok, records, "completion")
        seqs[-1]["ids"] = seqs[-1]["ids"][:-1]
        prompt_len = seqs[0]["prompt_len"]
        assert all(s["prompt_len"] == prompt_len for s in seqs)
        adv = torch.tensor(PG_ADVANTAGES)
        pm.eval()
        with torch.no_grad():
            with pm.disable_adapter():
                ref, mask, ids = pg_token_logps(pm, seqs, prompt_len, 0, PG_TEMPERATURE)
            lp0, _, _ = pg_token_logps(pm, seqs, prompt_len, 0, PG_TEMPERATURE)
        b, c = mask.shape
        phase = torch.arange(c).unsqueeze(0) + 3 * torch.arange(b).unsqueeze(1)
        old = (lp0 - PG_OLD_SHIFT * torch.cos(1.7 * phase.float())) * mask
        r0 = torch.exp(lp0 - old)
        clipped = int((((r0 > 1 + PG_EPS) & (adv.unsqueeze(1) > 0)) |
                       ((r0 < 1 - PG_EPS) & (adv.unsqueeze(1) < 0))).mul(mask.bool()).sum())
        assert clipped > 0, "the fixture clips no token"
        tensors = {"logps": lp0.contiguous(), "old_logps": old.contiguous(), "ref_logps": ref.contiguous(),
                   "mask": mask.contiguous()}
        entry = {}
        tmp = Path(tempfile.mkdtemp(prefix="malt-ref-pg-"))
        try:
            for norm in ("token", "sequence"):
                pm.train()
                zero_grads(pm)
                lp, _, _ = pg_token_logps(pm, seqs, prompt_len, 0, PG_TEMPERATURE)
                loss = pg_loss(lp, old, ref, adv, mask, norm)
                loss.backward()
                g = grads_of(pm)
                for k, v in g.items():
                    tensors[f"pg_{norm}.{k}"] = v.float().contiguous()
                entry[f"pg_{norm}"] = {"loss": float(loss), "grad_norm": grad_norm(g),
                                       "gradients": f"pg_reference.safetensors: pg_{norm}.<PEFT tensor name>"}
                if check_trl:
                    entry[f"pg_{norm}"]["trl_check"] = trl_pg_check(
                        pm, tok, prompt_len, ids, mask, old, ref, adv, norm, float(loss), g, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        zero_grads(pm)
        save_file(tensors, str(d / "pg_reference.safetensors"))
        write_json(d / "pg_reference.json", {
            "meta": {
                "policy": "adapter_init (trainable) on the tiny model; reference: the base model",
                "loss": "per token -min(r A, clip(r, 1 - eps, 1 + eps) A) + beta r (exp(ref - lp) - (ref - lp) - 1), "
                        "r = exp(lp - old), log-probs of logits / temperature; token norm: sum over every "
                        "completion token / their number; sequence norm: each completion's mean, then the mean",
                "old_logps": f"the policy's log-probs minus {PG_OLD_SHIFT} cos(1.7 (t + 3 b)), t the completion "
                             "token, b the completion",
                "tensors": "pg_reference.safetensors: logps, old_logps, ref_logps, mask (completions x tokens, "
                           "right-padded, 0 past each completion), pg_<norm>.<PEFT name> gradients",
                "versions": versions(),
            },
            "temperature": PG_TEMPERATURE, "beta": PG_BETA, "epsilon": PG_EPS,
            "advantages": PG_ADVANTAGES, "sequences": seqs, "prompt_len": prompt_len,
            "clipped_tokens": clipped, "tokens": int(mask.sum()),
            **entry,
        })


def group_malt_adapter(out: Path, required: bool):
    import torch
    from peft import PeftModel
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    for arch in ("llama", "qwen2"):
        d = out / f"tiny_{arch}"
        adapter = d / "malt_sft_adapter"
        if not (adapter / "adapter_config.json").exists():
            committed = DEFAULT_OUT / f"tiny_{arch}" / "malt_sft_adapter"
            if (committed / "adapter_config.json").exists() and d != committed.parent:
                shutil.copytree(committed, adapter, dirs_exist_ok=True)
            elif not required:
                print(f"{adapter} is missing: group malt_adapter skipped (see the flow above)")
                continue
            else:
                sys.exit(f"{adapter} is missing: run MALT_REFERENCE_WRITE_ADAPTER=1 cargo nextest run "
                         "-p malt-train --test reference first")
        ref = json.loads((d / "reference.json").read_text())
        base = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
        pm = PeftModel.from_pretrained(base, str(adapter))
        pm.eval()
        tensors = {}
        for s in ref["sequences"]:
            with torch.no_grad():
                tensors[s["name"]] = pm(torch.tensor([s["ids"]])).logits[0].float().contiguous()
        save_file(tensors, str(d / "malt_adapter_logits.safetensors"))
        write_json(d / "malt_adapter_logits.json", {
            "source": "PeftModel.from_pretrained(tiny model, malt_sft_adapter/) logits of reference.json's "
                      "sequences (malt_adapter_logits.safetensors: <sequence> -> (positions, vocab) f32)",
            "adapter_model_sha256": sha256_file(adapter / "adapter_model.safetensors"),
            "model_sha256": sha256_file(d / "model.safetensors"),
            "versions": versions(),
        })


# ---------------------------------------------------------------------------------------------
# The exported tokenizer check


def check_exported(dir_: Path, fixtures: Path) -> int:
    from transformers import AutoTokenizer
    fx = json.loads((fixtures / "smollm2_tokenizer.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(dir_))
    bad = 0
    for e in fx["raw"]:
        got = tok(e["text"], add_special_tokens=False)["input_ids"]
        want = e.get("ids_llamacpp", e["ids"])  # llama.cpp's reading where the two differ
        if got != want:
            bad += 1
            print(f"raw {e['name']}: {first_diff(got, want)}")
    for e in fx["chat"]:
        text = tok.apply_chat_template(e["messages"], tokenize=False,
                                       add_generation_prompt=e["add_generation_prompt"])
        if text != e["text"]:
            bad += 1
            print(f"chat {e['name']}: rendered text differs: {text!r} vs {e['text']!r}")
            continue
        got = tok(text, add_special_tokens=False)["input_ids"]
        want = e.get("ids_llamacpp", e["ids"])
        if got != want:
            bad += 1
            print(f"chat {e['name']}: {first_diff(got, want)}")
    total = len(fx["raw"]) + len(fx["chat"])
    print(f"exported tokenizer {dir_}: {total - bad} of {total} corpus entries agree")
    return 1 if bad else 0


def first_diff(got, want):
    i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return (f"first difference at position {i}: got {got[i:i + 6]} want {want[i:i + 6]} "
            f"(lengths {len(got)} vs {len(want)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="folder with gsm8k/test.jsonl and csqa/dev.jsonl")
    ap.add_argument("--only", default=None, help=f"comma-separated groups of {GROUPS}")
    ap.add_argument("--no-trl-check", action="store_true",
                    help="skip the cross-check of the SFT/DPO numbers against TRL's trainers")
    ap.add_argument("--exported-tokenizer", type=Path, default=None,
                    help="check a tokenizer folder against the fixture (--out) and exit")
    a = ap.parse_args()

    import torch
    torch.set_num_threads(2)
    torch.manual_seed(0)
    if a.exported_tokenizer is not None:
        sys.exit(check_exported(a.exported_tokenizer, a.out))
    groups = GROUPS if a.only is None else [g.strip() for g in a.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        sys.exit(f"unknown group(s) {unknown}: expected {GROUPS}")
    a.out.mkdir(parents=True, exist_ok=True)
    smol_groups = {"tokenizer", "logits", "greedy", "sampling"}
    if smol_groups & set(groups):
        gsm, csqa = corpus_questions(a.data, a.out)
        smol = Smol(a.gguf)
        if "tokenizer" in groups:
            group_tokenizer(smol, a.out, gsm, csqa)
        if "logits" in groups:
            group_logits(smol, a.out, gsm)
        if "greedy" in groups:
            group_greedy(smol, a.out, gsm)
        if "sampling" in groups:
            group_sampling(smol, a.out, gsm)
    if "tiny" in groups:
        group_tiny(a.out, not a.no_trl_check)
    if "malt_adapter" in groups:
        group_malt_adapter(a.out, required=a.only is not None)
    if "pg" in groups:
        group_pg(a.out, not a.no_trl_check)


if __name__ == "__main__":
    main()
