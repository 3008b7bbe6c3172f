//! The OpenAI chat-completions wire format: the choices of a response and error messages (request
//! bodies are engine-specific: [`crate::engine::Engine::request_body`]).

use malt_tree::{Completion, FinishReason};
use serde_json::Value;

/// The completions of a response, by choice index (`None`: the server did not return it).
/// Choices with an index outside `0..n` are ignored; a choice without `index` takes the first
/// free slot, as some servers omit it. A choice's sampled token ids are read from `token_ids`
/// (vLLM with `return_token_ids`, `malt serve`) or `tokens` (llama.cpp), its finish reason
/// from `finish_reason`.
pub fn parse_choices(body: &str, n: usize) -> Result<Vec<Option<Completion>>, String> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| format!("response is not JSON ({e}): {}", excerpt(body)))?;
    let choices = v
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("response has no `choices` array: {}", excerpt(body)))?;
    let mut out: Vec<Option<Completion>> = vec![None; n];
    // llama.cpp answers one choice per response and puts its ids and stop type in the
    // response's `__verbose` (asked for with `verbose` and `return_tokens`).
    let verbose = v.get("__verbose").filter(|_| choices.len() == 1);
    for c in choices {
        let text = c
            .pointer("/message/content")
            .or_else(|| c.get("text"))
            .map(|t| t.as_str().unwrap_or_default().to_owned())
            .ok_or_else(|| format!("a choice has no message content: {}", excerpt(body)))?;
        let slot = match c.get("index").and_then(Value::as_u64) {
            Some(i) => i as usize,
            None => match out.iter().position(Option::is_none) {
                Some(i) => i,
                None => continue,
            },
        };
        if slot < n && out[slot].is_none() {
            out[slot] = Some(Completion {
                text,
                token_ids: token_ids(c).or_else(|| verbose.and_then(token_ids)),
                finish: verbose
                    .and_then(llama_cpp_stop)
                    .or_else(|| finish_reason(c)),
                logprobs: logprobs(c),
            });
        }
    }
    Ok(out)
}

/// The choice's sampled ids, when the engine returned them as an array of integers.
fn token_ids(choice: &Value) -> Option<Vec<u32>> {
    let arr = ["token_ids", "tokens"]
        .iter()
        .find_map(|k| choice.get(*k)?.as_array())?;
    arr.iter()
        .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect()
}

/// The log-prob of each sampled token (OpenAI's `logprobs.content[i].logprob`), when the
/// choice has one for every token.
fn logprobs(choice: &Value) -> Option<Vec<f32>> {
    let content = choice.pointer("/logprobs/content")?.as_array()?;
    content
        .iter()
        .map(|e| e.get("logprob")?.as_f64().map(|x| x as f32))
        .collect()
}

/// OpenAI's `finish_reason`: "length" is a cut output; "stop" says only that the output ended on
/// its own. Engines that say which: `malt serve` (`malt_finish`), vLLM (`stop_reason`: null for
/// the model's EOS, a token id, or the stop string) and SGLang (`matched_stop`: the same).
fn finish_reason(choice: &Value) -> Option<FinishReason> {
    if let Some(f) = choice.get("malt_finish").and_then(Value::as_str) {
        return serde_json::from_value(Value::String(f.to_owned())).ok();
    }
    match choice.get("finish_reason")?.as_str()? {
        "length" => Some(FinishReason::Length),
        "stop" | "eos" => {
            let matched = ["stop_reason", "matched_stop"]
                .iter()
                .find_map(|k| choice.get(*k));
            Some(match matched {
                Some(Value::String(_)) => FinishReason::StopString,
                Some(Value::Number(_)) => FinishReason::EndOfTurn,
                // vLLM's null is its EOS; elsewhere a missing field says nothing.
                Some(Value::Null) if choice.get("stop_reason").is_some() => FinishReason::EndOfTurn,
                _ => FinishReason::Stop,
            })
        }
        _ => None,
    }
}

/// llama.cpp's `__verbose.stop_type`.
fn llama_cpp_stop(verbose: &Value) -> Option<FinishReason> {
    match verbose.get("stop_type")?.as_str()? {
        "eos" => Some(FinishReason::EndOfTurn),
        "word" => Some(FinishReason::StopString),
        "limit" => Some(FinishReason::Length),
        _ => None,
    }
}

/// The server's own message from an error body (`{"error": {"message": ...}}`, `{"detail":
/// ...}`, `{"message": ...}`), else the body itself, shortened.
pub fn error_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        for ptr in ["/error/message", "/error", "/detail", "/message"] {
            if let Some(s) = v.pointer(ptr).and_then(Value::as_str) {
                return excerpt(s);
            }
        }
    }
    excerpt(body)
}

/// At most 300 characters of `s`, for error messages.
pub fn excerpt(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_land_by_index_and_missing_ones_stay_empty() {
        let body = r#"{"choices":[{"index":2,"message":{"content":"c"}},{"index":0,"message":{"content":null}},{"index":9,"message":{"content":"x"}}]}"#;
        let got = parse_choices(body, 3).unwrap();
        let texts: Vec<Option<String>> = got
            .iter()
            .map(|c| c.as_ref().map(|c| c.text.clone()))
            .collect();
        assert_eq!(texts, vec![Some(String::new()), None, Some("c".into())]);
        assert!(parse_choices("<html>", 1).unwrap_err().contains("not JSON"));
        assert!(parse_choices("{}", 1).unwrap_err().contains("choices"));
    }

    #[test]
    fn token_ids_and_finish_reasons_are_read_where_engines_put_them() {
        let body = r#"{"choices":[
            {"index":0,"message":{"content":"a"},"token_ids":[5,6,2],"finish_reason":"stop"},
            {"index":1,"text":"b","tokens":[7],"finish_reason":"length"},
            {"index":2,"message":{"content":"c"},"finish_reason":"stop","malt_finish":"end_of_turn","token_ids":[1,2]},
            {"index":3,"message":{"content":"d"},"token_ids":["x"]}]}"#;
        let got: Vec<Completion> = parse_choices(body, 4)
            .unwrap()
            .into_iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(got[0].token_ids, Some(vec![5, 6, 2]));
        assert_eq!(got[0].finish, Some(FinishReason::Stop));
        assert_eq!(got[1].token_ids, Some(vec![7]));
        assert_eq!(got[1].finish, Some(FinishReason::Length));
        assert_eq!(got[2].finish, Some(FinishReason::EndOfTurn));
        // Ids that are not integers are no ids: the text is re-encoded instead.
        assert_eq!((got[3].token_ids.clone(), got[3].finish), (None, None));
        assert_eq!(got[0].logprobs, None);
        let body = r#"{"choices":[{"index":0,"message":{"content":"a"},
            "logprobs":{"content":[{"token":"token_id:5","logprob":-0.5},{"token":"b","logprob":-2.25}]}},
            {"index":1,"message":{"content":"b"},"logprobs":{"content":[{"token":"x"}]}}]}"#;
        let got = parse_choices(body, 2).unwrap();
        assert_eq!(got[0].as_ref().unwrap().logprobs, Some(vec![-0.5, -2.25]));
        assert_eq!(got[1].as_ref().unwrap().logprobs, None);
    }

    #[test]
    fn vllm_sglang_and_llama_cpp_say_which_stop_ended_a_choice() {
        let stop = |extra: &str| {
            let body = format!(
                r#"{{"choices":[{{"index":0,"message":{{"content":"a"}},"finish_reason":"stop"{extra}}}]}}"#
            );
            parse_choices(&body, 1).unwrap()[0].clone().unwrap().finish
        };
        assert_eq!(
            stop(r#","stop_reason":null"#),
            Some(FinishReason::EndOfTurn)
        );
        assert_eq!(
            stop(r#","stop_reason":"\n\n""#),
            Some(FinishReason::StopString)
        );
        assert_eq!(stop(r#","matched_stop":2"#), Some(FinishReason::EndOfTurn));
        assert_eq!(stop(""), Some(FinishReason::Stop));
        let llama = r#"{"choices":[{"index":0,"message":{"content":"a"},"finish_reason":"stop"}],
            "__verbose":{"tokens":[64,2],"stop_type":"eos"}}"#;
        let c = parse_choices(llama, 1).unwrap()[0].clone().unwrap();
        assert_eq!(c.token_ids, Some(vec![64, 2]));
        assert_eq!(c.finish, Some(FinishReason::EndOfTurn));
    }

    #[test]
    fn error_messages_prefer_the_servers_words() {
        assert_eq!(
            error_message(r#"{"error":{"message":"prompt too long"}}"#),
            "prompt too long"
        );
        assert_eq!(error_message(r#"{"detail":"nope"}"#), "nope");
        assert_eq!(error_message("plain"), "plain");
    }
}
