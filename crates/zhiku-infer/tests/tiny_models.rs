//! Tiny random models of each architecture, made with transformers from a config
//! (tests/fixtures/tiny-llm/make_tiny_llms.py): qwen2 in f32, llama in bf16, gemma3 in f16.
//! - Loaded from their Hugging Face folders, logits at every position equal transformers' within
//!   1e-4 of their range and 16 greedy tokens are the same.
//! - Written to GGUF by zhiku (llama's Q/K rows permuted and Gemma's norms stored as w + 1, as
//!   llama.cpp's converter does), in F32 they give the same logits as the folder, and in Q8_0
//!   within the quantisation's error.

use serde_json::Value;
use std::path::{Path, PathBuf};
use zhiku_infer::sampling::SamplingParams;
use zhiku_infer::{LanguageModel, Prompt, Request};
use zhiku_models::blocks::{quantize::quantize, GgmlType};
use zhiku_models::decoder::{Arch, CausalLm, DecoderModel, Logits, Step};
use zhiku_models::gguf::{GgufFile, GgufWriter, Value as Meta};

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llm").join(name)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn logits_all(model: &dyn CausalLm, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(tokens.len());
    model.forward(&mut [Step { cache: &mut cache, tokens, logits: Logits::All }]).unwrap()
}

/// Worst |a − b| over the rows, relative to each reference row's range.
fn worst_rel(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let range = y.iter().cloned().fold(f32::NEG_INFINITY, f32::max) - y.iter().cloned().fold(f32::INFINITY, f32::min);
            x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / range
        })
        .fold(0f32, f32::max)
}

fn check_against_transformers(name: &str) {
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir(name).join("reference.json")).unwrap()).unwrap();
    let lm = LanguageModel::open_with(&dir(name), &zhiku_infer::OpenOptions::engine(zhiku_infer::Engine::Cpu)).unwrap();
    let tokens = ids(&reference["ids"]);
    let probes = ids(&reference["probe_ids"]);
    let rows = logits_all(lm.model.as_ref(), &tokens);
    for (row, r) in rows.iter().zip(reference["rows"].as_array().unwrap()) {
        let top: Vec<f32> = r["top_values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let probe: Vec<f32> = r["probe_values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let range = top[0] - probe.iter().cloned().fold(f32::INFINITY, f32::min);
        for (&t, &v) in ids(&r["top_ids"]).iter().zip(&top) {
            assert!((row[t as usize] - v).abs() <= 1e-4 * range, "{name}: logit of {t}: {} vs {v}", row[t as usize]);
        }
        for (&t, &v) in probes.iter().zip(&probe) {
            assert!((row[t as usize] - v).abs() <= 1e-4 * range, "{name}: logit of {t}: {} vs {v}", row[t as usize]);
        }
        assert_eq!(zhiku_infer::sampling::argmax(row), ids(&r["top_ids"])[0], "{name}: argmax");
    }
    let expect = ids(&reference["greedy"]);
    let req = Request { prompt: Prompt::Tokens(ids(&reference["greedy_prompt"])), params: SamplingParams::greedy(), max_tokens: expect.len(), stop: vec![], truncate: false, adapter: None };
    let mut got = lm.generate(std::slice::from_ref(&req), |_, _| {}).unwrap().remove(0).token_ids;
    // transformers ignored end-of-turn tokens (min_new_tokens); we stop at one.
    if got.len() < expect.len() {
        assert!(lm.info.stop_tokens.contains(got.last().unwrap()));
        got.pop();
    }
    assert_eq!(got, expect[..got.len()], "{name}: greedy tokens");
    // The chat template from tokenizer_config.json renders and tokenises.
    let chat = lm.prompt_ids(&Prompt::Chat(vec![zhiku_infer::template::Message::new("user", "hi")])).unwrap();
    assert_eq!(chat[0], lm.tokenizer.token_to_id("<|im_start|>").unwrap());
}

#[test]
fn tiny_qwen2_f32_folder_matches_transformers() {
    check_against_transformers("qwen2");
}

#[test]
fn tiny_llama_bf16_folder_matches_transformers() {
    check_against_transformers("llama");
}

#[test]
fn tiny_gemma3_f16_folder_matches_transformers() {
    check_against_transformers("gemma3");
}

/// Writes the folder's model as GGUF the way llama.cpp's converter lays it out.
fn write_gguf_file(folder: &Path, out: &Path, matrix_type: GgmlType) {
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap()).unwrap();
    let st = std::fs::read(folder.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&st).unwrap();
    let get = |n: &str| -> (Vec<usize>, Vec<f32>) {
        let t = tensors.tensor(n).unwrap();
        let ty = match t.dtype() {
            safetensors::Dtype::F32 => GgmlType::F32,
            safetensors::Dtype::BF16 => GgmlType::BF16,
            safetensors::Dtype::F16 => GgmlType::F16,
            d => panic!("{d:?}"),
        };
        let mut v = vec![0f32; t.shape().iter().product()];
        ty.dequantize(t.data(), &mut v).unwrap();
        (t.shape().to_vec(), v)
    };
    let model_type = cfg["model_type"].as_str().unwrap();
    let arch = if model_type.starts_with("gemma3") { "gemma3" } else { model_type };
    let u = |k: &str| cfg[k].as_u64().unwrap() as u32;
    let (heads, kv_heads, hidden) = (u("num_attention_heads"), u("num_key_value_heads"), u("hidden_size"));
    let head_dim = cfg["head_dim"].as_u64().map(|v| v as u32).unwrap_or(hidden / heads);
    let mut w = GgufWriter::new();
    let rope = &cfg["rope_parameters"];
    let theta = rope["rope_theta"].as_f64().or(rope["full_attention"]["rope_theta"].as_f64()).unwrap() as f32;
    w.meta("general.architecture", Meta::String(arch.into()))
        .meta(&format!("{arch}.block_count"), Meta::U32(u("num_hidden_layers")))
        .meta(&format!("{arch}.context_length"), Meta::U32(u("max_position_embeddings")))
        .meta(&format!("{arch}.embedding_length"), Meta::U32(hidden))
        .meta(&format!("{arch}.feed_forward_length"), Meta::U32(u("intermediate_size")))
        .meta(&format!("{arch}.attention.head_count"), Meta::U32(heads))
        .meta(&format!("{arch}.attention.head_count_kv"), Meta::U32(kv_heads))
        .meta(&format!("{arch}.attention.key_length"), Meta::U32(head_dim))
        .meta(&format!("{arch}.rope.freq_base"), Meta::F32(theta))
        .meta(&format!("{arch}.attention.layer_norm_rms_epsilon"), Meta::F32(cfg["rms_norm_eps"].as_f64().unwrap() as f32));
    if arch == "gemma3" {
        w.meta("gemma3.attention.sliding_window", Meta::U32(u("sliding_window")));
    }
    let gemma = arch == "gemma3";
    let mut put = |gguf: &str, hf: &str, plus_one: bool, permute_heads: Option<u32>| {
        let (shape, mut v) = get(hf);
        if plus_one {
            v.iter_mut().for_each(|x| *x += 1.0);
        }
        if let Some(nh) = permute_heads {
            // llama.cpp's permute: rows of each head reordered so pairs (i, i + d/2) sit at (2i, 2i + 1).
            let (rows, cols) = (shape[0], shape[1]);
            let hd = rows / nh as usize;
            let mut p = vec![0f32; v.len()];
            for h in 0..nh as usize {
                for i in 0..hd / 2 {
                    for (half, dst) in [(0, 2 * i), (1, 2 * i + 1)] {
                        let src = h * hd + half * hd / 2 + i;
                        p[(h * hd + dst) * cols..(h * hd + dst + 1) * cols].copy_from_slice(&v[src * cols..(src + 1) * cols]);
                    }
                }
            }
            v = p;
        }
        let dims: Vec<usize> = shape.iter().rev().copied().collect();
        let ty = if shape.len() == 2 && !gguf.starts_with("token_embd") { matrix_type } else { GgmlType::F32 };
        w.tensor(gguf, &dims, ty, quantize(ty, &v));
    };
    put("token_embd.weight", "model.embed_tokens.weight", false, None);
    put("output_norm.weight", "model.norm.weight", gemma, None);
    if tensors.names().contains(&"lm_head.weight") {
        put("output.weight", "lm_head.weight", false, None);
    }
    let llama = arch == "llama";
    for i in 0..u("num_hidden_layers") {
        let b = |s: &str| format!("blk.{i}.{s}");
        let h = |s: &str| format!("model.layers.{i}.{s}");
        put(&b("attn_norm.weight"), &h("input_layernorm.weight"), gemma, None);
        put(&b("attn_q.weight"), &h("self_attn.q_proj.weight"), false, llama.then_some(heads));
        put(&b("attn_k.weight"), &h("self_attn.k_proj.weight"), false, llama.then_some(kv_heads));
        put(&b("attn_v.weight"), &h("self_attn.v_proj.weight"), false, None);
        put(&b("attn_output.weight"), &h("self_attn.o_proj.weight"), false, None);
        for x in ["q", "k", "v"] {
            let hf = h(&format!("self_attn.{x}_proj.bias"));
            if tensors.names().iter().any(|n| **n == hf) {
                put(&b(&format!("attn_{x}.bias")), &hf, false, None);
            }
        }
        put(&b("ffn_gate.weight"), &h("mlp.gate_proj.weight"), false, None);
        put(&b("ffn_up.weight"), &h("mlp.up_proj.weight"), false, None);
        put(&b("ffn_down.weight"), &h("mlp.down_proj.weight"), false, None);
        if gemma {
            put(&b("attn_q_norm.weight"), &h("self_attn.q_norm.weight"), true, None);
            put(&b("attn_k_norm.weight"), &h("self_attn.k_norm.weight"), true, None);
            put(&b("post_attention_norm.weight"), &h("post_attention_layernorm.weight"), true, None);
            put(&b("ffn_norm.weight"), &h("pre_feedforward_layernorm.weight"), true, None);
            put(&b("post_ffw_norm.weight"), &h("post_feedforward_layernorm.weight"), true, None);
        } else {
            put(&b("ffn_norm.weight"), &h("post_attention_layernorm.weight"), false, None);
        }
    }
    w.write(out).unwrap();
}

#[test]
fn gguf_written_from_the_tiny_models_gives_the_folders_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["qwen2", "llama", "gemma3"] {
        let folder = DecoderModel::from_hf_folder(&dir(name)).unwrap();
        let tokens: Vec<u32> = (0..12).map(|i| (i * 29 + 3) % folder.config.vocab as u32).collect();
        let reference = logits_all(&folder, &tokens);
        for (ty, tol) in [(GgmlType::F32, 1e-5), (GgmlType::Q8_0, 0.03)] {
            let path = tmp.path().join(format!("{name}-{}.gguf", ty.name()));
            write_gguf_file(&dir(name), &path, ty);
            let gguf = DecoderModel::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
            assert_eq!(gguf.config.arch, if name == "gemma3" { Arch::Gemma3 } else if name == "llama" { Arch::Llama } else { Arch::Qwen2 });
            let worst = worst_rel(&logits_all(&gguf, &tokens), &reference);
            assert!(worst <= tol, "{name} {}: logits differ by {worst} of their range", ty.name());
        }
    }
}

/// A PEFT adapter (transformers' row order) on the GGUF of each tiny model (llama's query and
/// key rows permuted by the converter) gives the same logits as on the folder, in both engines,
/// and the differentiable engine writes it back in PEFT's order.
#[test]
fn peft_adapters_on_the_gguf_give_the_folders_logits() {
    use zhiku_models::decoder::adapter::{self, DecoderAdapter};
    use zhiku_models::decoder::graph::{GraphDecoder, GraphOptions, LoraSpec};
    let tmp = tempfile::tempdir().unwrap();
    for name in ["qwen2", "llama", "gemma3"] {
        let peft = DecoderAdapter::open(&dir(&format!("peft-lora-{name}"))).unwrap();
        let path = tmp.path().join(format!("{name}.gguf"));
        write_gguf_file(&dir(name), &path, GgmlType::F32);
        let tokens: Vec<u32> = (0..12).map(|i| (i * 29 + 3) % 200).collect();
        let adapted = |mut m: DecoderModel| {
            m.set_exact(true);
            let w = zhiku_models::decoder::lora::LoraWeights::new("t", &m.config, peft.spec.alpha, peft.spec.rank, &peft.tensors).unwrap();
            let i = CausalLm::add_adapter(&mut m, w).unwrap();
            let mut cache = m.new_cache(tokens.len()).with_adapter(Some(i));
            m.forward(&mut [Step { cache: &mut cache, tokens: &tokens, logits: Logits::All }]).unwrap()
        };
        let folder = adapted(DecoderModel::from_hf_folder(&dir(name)).unwrap());
        let gguf = adapted(DecoderModel::from_gguf(&GgufFile::open(&path).unwrap()).unwrap());
        let worst = worst_rel(&gguf, &folder);
        assert!(worst <= 1e-5, "{name}: generation engine, GGUF vs folder with the adapter: {worst}");

        let opts = GraphOptions { lora: Some(LoraSpec { rank: peft.spec.rank, alpha: peft.spec.alpha, targets: peft.spec.targets.clone(), seed: 0, dropout: 0.0 }), ..GraphOptions::cpu() };
        let g = GraphDecoder::new(DecoderModel::from_gguf(&GgufFile::open(&path).unwrap()).unwrap(), &opts).unwrap();
        g.load_lora(&peft.tensors).unwrap();
        let hidden = g.hidden(&[&tokens]).unwrap();
        let rows: Vec<Vec<f32>> = g.logits(&hidden.states).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let worst = worst_rel(&rows, &folder);
        assert!(worst <= 1e-4, "{name}: differentiable engine, GGUF vs folder with the adapter: {worst}");

        let out = tmp.path().join(format!("{name}-adapter"));
        adapter::save(&out, &g, &peft.spec, &path, &serde_json::json!({})).unwrap();
        let back = DecoderAdapter::open(&out).unwrap();
        for (n, t) in &peft.tensors {
            let d = (back.tensors[n].clone() - t).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d == 0.0, "{name}: {n} written back differs by {d}");
        }
    }
}

/// PEFT's logits for the adapted tiny model, rows as `logits_all` gives them, at the reference
/// ids; compared on the top-5 and probe ids only (what reference.json holds).
fn within_peft(name: &str, what: &str, rows: &[Vec<f32>], tol: f32) {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir(&format!("peft-lora-{name}")).join("reference.json")).unwrap()).unwrap();
    let probes = ids(&r["probe_ids"]);
    let mut worst = 0f32;
    for (row, want) in rows.iter().zip(r["rows"].as_array().unwrap()) {
        let top: Vec<f32> = want["top_values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let probe: Vec<f32> = want["probe_values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let range = top[0] - probe.iter().cloned().fold(f32::INFINITY, f32::min);
        for (&t, &v) in ids(&want["top_ids"]).iter().zip(&top).chain(probes.iter().zip(&probe)) {
            worst = worst.max((row[t as usize] - v).abs() / range);
        }
    }
    eprintln!("{name} {what}: worst {worst}");
    assert!(worst <= tol, "{name} {what}: logits differ from PEFT's by {worst} of their range");
}

/// `zhiku merge`'s writers: each tiny model with its PEFT adapter folded in, written as GGUF
/// (from the GGUF base) in F32, F16 and Q8_0 and as a Hugging Face folder (from either base),
/// gives PEFT's adapted logits: exactly in f32, within the storage type's rounding otherwise.
#[test]
fn merged_models_give_peft_logits_in_every_output_format() {
    use zhiku_models::decoder::adapter::DecoderAdapter;
    use zhiku_models::decoder::export::{write_gguf, write_hf_folder, Merger};
    use zhiku_models::decoder::{hf, DecoderConfig};
    let tmp = tempfile::tempdir().unwrap();
    for name in ["qwen2", "llama", "gemma3"] {
        let peft = DecoderAdapter::open(&dir(&format!("peft-lora-{name}"))).unwrap();
        let adapter = Some((peft.spec.alpha, peft.spec.rank, &peft.tensors));
        let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir(&format!("peft-lora-{name}")).join("reference.json")).unwrap()).unwrap();
        let tokens = ids(&reference["ids"]);
        let parts = zhiku_infer::ModelParts::open(&dir(name), false).unwrap();

        let base_gguf = tmp.path().join(format!("{name}.gguf"));
        write_gguf_file(&dir(name), &base_gguf, GgmlType::F32);
        let file = GgufFile::open(&base_gguf).unwrap();
        let config = DecoderConfig::from_gguf(&file).unwrap();
        let merger = Merger::new(&config, &file, adapter).unwrap();
        // The fixture's random adapters are large (A and B ~ N(0, 0.3²)), which makes these tiny
        // models sensitive to rounding: Q8_0's ~0.4% per weight moves logits by ~10% of their
        // range, so Q8_0 is also checked tensor by tensor against the F32 file below.
        for (ty, tol) in [(GgmlType::F32, 1e-4), (GgmlType::F16, 0.01), (GgmlType::Q8_0, 0.2)] {
            let out = tmp.path().join(format!("{name}-merged-{}.gguf", ty.name()));
            write_gguf(&file, &merger, ty, &out, &mut |_, _| {}).unwrap();
            let merged = GgufFile::open(&out).unwrap();
            assert_eq!(merged.get_u64("general.file_type"), Some(match ty { GgmlType::F32 => 0, GgmlType::F16 => 1, _ => 7 }));
            let mut m = DecoderModel::from_gguf(&merged).unwrap();
            m.set_exact(true);
            within_peft(name, &format!("GGUF {}", ty.name()), &logits_all(&m, &tokens), tol);
        }
        // Every Q8_0 weight is within half a quantisation step of the F32 file's.
        let (f32_file, q8_file) = (GgufFile::open(&tmp.path().join(format!("{name}-merged-F32.gguf"))).unwrap(), GgufFile::open(&tmp.path().join(format!("{name}-merged-Q8_0.gguf"))).unwrap());
        for info in f32_file.tensors() {
            let (exact, q) = (f32_file.tensor(&info.name).unwrap().to_f32().unwrap(), q8_file.tensor(&info.name).unwrap().to_f32().unwrap());
            for (block, qb) in exact.chunks(32).zip(q.chunks(32)) {
                let step = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                let worst = block.iter().zip(qb).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(worst <= step * 0.5 + step * 2e-3 + 1e-7, "{name} {}: Q8_0 off by {worst}, step {step}", info.name);
            }
        }
        let folder = tmp.path().join(format!("{name}-from-gguf"));
        write_hf_folder(&folder, &merger, candle_core::DType::F32, &parts.tokenizer, &parts.info, &mut |_, _| {}).unwrap();
        within_peft(name, "folder from the GGUF", &logits_all(&DecoderModel::from_hf_folder(&folder).unwrap(), &tokens), 1e-4);

        let (config, weights) = hf::open(&dir(name)).unwrap();
        let merger = Merger::new(&config, &weights, adapter).unwrap();
        let folder = tmp.path().join(format!("{name}-from-folder"));
        write_hf_folder(&folder, &merger, candle_core::DType::F32, &parts.tokenizer, &parts.info, &mut |_, _| {}).unwrap();
        let lm = zhiku_infer::LanguageModel::open_with(&folder, &zhiku_infer::OpenOptions::engine(zhiku_infer::Engine::Cpu)).unwrap();
        within_peft(name, "folder from the folder", &logits_all(lm.model.as_ref(), &tokens), 1e-4);
        // The written tokenizer and template are the base's.
        let chat = lm.prompt_ids(&Prompt::Chat(vec![zhiku_infer::template::Message::new("user", "hi")])).unwrap();
        let base_lm = zhiku_infer::LanguageModel::open_with(&dir(name), &zhiku_infer::OpenOptions::engine(zhiku_infer::Engine::Cpu)).unwrap();
        assert_eq!(chat, base_lm.prompt_ids(&Prompt::Chat(vec![zhiku_infer::template::Message::new("user", "hi")])).unwrap(), "{name}: chat prompt ids");
    }
}
