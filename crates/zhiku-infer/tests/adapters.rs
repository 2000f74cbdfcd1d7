//! LoRA adapters written by Python PEFT (tests/fixtures/tiny-llm/make_peft_lora.py) on the tiny
//! random decoders, run by zhiku:
//! - the generation engine (exact products) gives PEFT's logits at every position and its 16
//!   greedy tokens, while sequences without the adapter still get the base model's;
//! - the differentiable engine with the same adapter loaded gives the same logits;
//! - an adapter made for another model, or an unknown adapter name, is an error.

use serde_json::Value;
use std::path::PathBuf;
use zhiku_infer::sampling::SamplingParams;
use zhiku_infer::{Engine, LanguageModel, OpenOptions, Prompt, Request};
use zhiku_models::decoder::adapter::DecoderAdapter;
use zhiku_models::decoder::graph::{GraphDecoder, GraphOptions};
use zhiku_models::decoder::{CausalLm, Logits, Step};

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llm").join(name)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn reference(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn logits(model: &dyn CausalLm, tokens: &[u32], adapter: Option<usize>) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(tokens.len()).with_adapter(adapter);
    model.forward(&mut [Step { cache: &mut cache, tokens, logits: Logits::All }]).unwrap()
}

/// Every row's top-5 and probe logits within `tol` of the row's range of the reference.
fn check_rows(what: &str, rows: &[Vec<f32>], reference: &Value, tol: f32) {
    let probes = ids(&reference["probe_ids"]);
    for (row, r) in rows.iter().zip(reference["rows"].as_array().unwrap()) {
        let top: Vec<f32> = r["top_values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let probe: Vec<f32> = r["probe_values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let range = top[0] - probe.iter().cloned().fold(f32::INFINITY, f32::min);
        for (&t, &v) in ids(&r["top_ids"]).iter().zip(&top).chain(probes.iter().zip(&probe)) {
            assert!((row[t as usize] - v).abs() <= tol * range, "{what}: logit of {t}: {} vs {v}", row[t as usize]);
        }
    }
}

fn open(name: &str) -> LanguageModel {
    LanguageModel::open_with(&dir(name), &OpenOptions::engine(Engine::Cpu)).unwrap()
}

#[test]
fn peft_adapters_give_peft_logits_and_greedy_text_beside_the_base() {
    for name in ["qwen2", "llama", "gemma3"] {
        let peft = reference(dir(&format!("peft-lora-{name}")).join("reference.json"));
        let base = reference(dir(name).join("reference.json"));
        let mut lm = open(name);
        lm.model.set_exact(true);
        lm.load_adapter("tuned", &dir(&format!("peft-lora-{name}"))).unwrap();
        let tokens = ids(&peft["ids"]);
        check_rows(&format!("{name} with the adapter"), &logits(lm.model.as_ref(), &tokens, Some(0)), &peft, 1e-4);
        check_rows(&format!("{name} without"), &logits(lm.model.as_ref(), &tokens, None), &base, 1e-4);
        // One batch, one sequence with the adapter and one without: each gets its own.
        let request = |adapter: Option<&str>| Request {
            prompt: Prompt::Tokens(ids(&peft["greedy_prompt"])),
            params: SamplingParams::greedy(),
            max_tokens: 16,
            stop: vec![],
            truncate: false,
            adapter: adapter.map(str::to_string),
        };
        let out = lm.generate(&[request(Some("tuned")), request(None)], |_, _| {}).unwrap();
        for (c, expect, what) in [(&out[0], ids(&peft["greedy"]), "adapter"), (&out[1], ids(&base["greedy"]), "base")] {
            let mut got = c.token_ids.clone();
            // transformers ignored end-of-turn tokens (min_new_tokens); we stop at one.
            if got.len() < expect.len() {
                got.pop();
            }
            assert_eq!(got, expect[..got.len()], "{name} {what}: greedy tokens");
        }
        // Without exact products (8-bit activations) the adapter still picks PEFT's tokens.
        lm.model.set_exact(false);
        let fast = logits(lm.model.as_ref(), &tokens, Some(0));
        let agree = fast.iter().zip(peft["rows"].as_array().unwrap()).filter(|(row, r)| zhiku_infer::sampling::argmax(row) == ids(&r["top_ids"])[0]).count();
        assert!(agree + 1 >= fast.len(), "{name}: fast kernels agree on {agree} of {} top tokens", fast.len());
    }
}

#[test]
fn the_differentiable_engine_loads_the_same_adapter() {
    for name in ["qwen2", "llama", "gemma3"] {
        let peft = reference(dir(&format!("peft-lora-{name}")).join("reference.json"));
        let adapter = DecoderAdapter::open(&dir(&format!("peft-lora-{name}"))).unwrap();
        assert_eq!((adapter.spec.rank, adapter.spec.alpha, adapter.spec.targets.len()), (4, 8.0, 7));
        let parts = zhiku_infer::ModelParts::open(&dir(name), false).unwrap();
        let g = GraphDecoder::new(parts.model, &GraphOptions { lora: Some(adapter.spec.clone()), ..GraphOptions::cpu() }).unwrap();
        g.load_lora(&adapter.tensors).unwrap();
        check_rows(&format!("{name} graph"), &logits(&g, &ids(&peft["ids"]), None), &peft, 1e-4);
    }
}

#[test]
fn mismatched_adapters_and_names_are_errors() {
    let mut lm = open("qwen2");
    let e = format!("{:#}", lm.load_adapter("x", &dir("peft-lora-gemma3")).unwrap_err());
    assert!(e.contains("this model needs") || e.contains("no place"), "{e}");
    lm.load_adapter("tuned", &dir("peft-lora-qwen2")).unwrap();
    assert!(lm.load_adapter("tuned", &dir("peft-lora-qwen2")).is_err(), "the same name twice");
    let r = Request { prompt: Prompt::Text("hi".into()), params: SamplingParams::greedy(), max_tokens: 2, stop: vec![], truncate: false, adapter: Some("other".into()) };
    let e = format!("{:#}", lm.prepare(&r).unwrap_err());
    assert!(e.contains("\"other\" is not loaded (loaded: tuned)"), "{e}");
}
