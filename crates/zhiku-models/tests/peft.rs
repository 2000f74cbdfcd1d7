//! Parameter-efficient tuning: what trains, that gradients reach it, that LoRA merges exactly,
//! that adapter folders reload with their head, and that adapters share one base in memory.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use zhiku_models::classifier::save_full;
use zhiku_models::peft::{merge_lora, AdapterFolder};
use zhiku_models::{ClassifierConfig, DropoutRng, ModelFolder, PeftConfig, Pooling, ProblemType, SequenceClassifier, TextModel, TokenizedText};

fn head() -> ClassifierConfig {
    ClassifierConfig { labels: vec!["a".into(), "b".into(), "c".into()], pooling: Pooling::Pooler, problem_type: ProblemType::SingleLabel, thresholds: None, text_pairs: false }
}

fn methods() -> Vec<PeftConfig> {
    vec![
        PeftConfig::Lora { r: 4, alpha: 8.0, dropout: 0.1, targets: vec!["query".into(), "value".into(), "intermediate.dense".into()] },
        PeftConfig::Adapter { size: 4 },
        PeftConfig::Prefix { length: 3 },
    ]
}

const WORDS: [&str; 8] = ["apple", "banana", "car", "road", "river", "tree", "stone", "cloud"];

fn base_folder(dir: &std::path::Path) -> ModelFolder {
    zhiku_models::testing::write_tiny_model(dir, &WORDS, 0.1, 5).unwrap();
    ModelFolder::open(dir).unwrap()
}

fn texts() -> Vec<&'static str> {
    vec!["apple banana car", "road river", "tree stone cloud apple", "car"]
}

fn logits(model: &SequenceClassifier, folder: &ModelFolder, rng: Option<&mut DropoutRng>) -> Tensor {
    let tok = folder.tokenizer(32).unwrap();
    let batch = tok.encode_batch(&texts(), None, &Device::Cpu).unwrap();
    model.forward(&batch, rng).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Gives every trainable parameter random values, so that no gradient is zero merely because
/// a zero-initialised matrix (LoRA's B, an adapter's up projection) blocks it.
fn randomise_trainable(model: &SequenceClassifier, seed: u64) {
    for (i, (_, var)) in model.params.iter().enumerate() {
        let n = var.elem_count();
        let v: Vec<f32> = (0..n).map(|j| ((((seed + i as u64) * 7919 + j as u64 * 104729) % 2001) as f32 / 1000.0 - 1.0) * 0.3).collect();
        var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
    }
}

#[test]
fn only_added_modules_and_head_train_and_all_get_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let folder = base_folder(dir.path());
    let full = SequenceClassifier::from_folder(&folder, Some(head()), 1, &Device::Cpu).unwrap().params.num_elements();
    for peft in methods() {
        let model = SequenceClassifier::from_folder_peft(&folder, Some(head()), 1, &Device::Cpu, Some(&peft)).unwrap();
        let names: Vec<&str> = model.params.iter().map(|(n, _)| n).collect();
        assert!(names.iter().all(|n| peft.is_trainable(n)), "{peft:?}: {names:?}");
        assert!(names.contains(&"classifier.weight") && names.contains(&"bert.pooler.dense.weight"));
        assert!(!names.contains(&"bert.encoder.layer.0.attention.self.query.weight"));
        assert!(!names.contains(&"bert.embeddings.word_embeddings.weight"));
        match &peft {
            PeftConfig::Lora { .. } => {
                assert!(names.contains(&"bert.encoder.layer.1.attention.self.value.lora_A.weight"));
                assert!(names.contains(&"bert.encoder.layer.0.intermediate.dense.lora_B.weight"));
                assert!(!names.iter().any(|n| n.contains("key.lora")), "key was not targeted");
            }
            PeftConfig::Adapter { .. } => {
                assert!(names.contains(&"bert.encoder.layer.0.output.adapter.up.weight"));
                assert!(names.contains(&"bert.encoder.layer.1.attention.output.adapter.down.bias"));
                assert!(names.contains(&"bert.encoder.layer.1.output.LayerNorm.weight"));
            }
            PeftConfig::Prefix { .. } => assert!(names.contains(&"bert.encoder.layer.1.attention.self.prefix_value")),
        }
        assert!(model.params.num_elements() < full / 2, "{peft:?} trains {} of {full}", model.params.num_elements());

        randomise_trainable(&model, 3);
        let mut rng = DropoutRng::new(9);
        let loss = logits(&model, &folder, Some(&mut rng)).sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in model.params.iter() {
            let g = grads.get(var).unwrap_or_else(|| panic!("{peft:?}: no gradient for {name}"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{peft:?}: zero or non-finite gradient for {name}");
        }
    }
}

#[test]
fn lora_and_adapters_start_as_the_base_model() {
    let dir = tempfile::tempdir().unwrap();
    let folder = base_folder(dir.path());
    let tok = folder.tokenizer(32).unwrap();
    let batch = tok.encode_batch(&texts(), None, &Device::Cpu).unwrap();
    let base = SequenceClassifier::from_folder(&folder, Some(head()), 1, &Device::Cpu).unwrap();
    let hidden = |m: &SequenceClassifier| m.encoder.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, None).unwrap();
    let reference = hidden(&base);
    for peft in &methods()[..2] {
        let m = SequenceClassifier::from_folder_peft(&folder, Some(head()), 1, &Device::Cpu, Some(peft)).unwrap();
        assert!(max_diff(&hidden(&m), &reference) < 1e-6, "{peft:?} changes the encoder before training");
    }
}

#[test]
fn merged_lora_equals_unmerged_and_adapters_reload_with_their_head() {
    let dir = tempfile::tempdir().unwrap();
    let base_dir = dir.path().join("base");
    let folder = base_folder(&base_dir);
    let tok = folder.tokenizer(32).unwrap();
    for peft in methods() {
        let trained = SequenceClassifier::from_folder_peft(&folder, Some(head()), 1, &Device::Cpu, Some(&peft)).unwrap();
        randomise_trainable(&trained, 11);
        let expected = logits(&trained, &folder, None);
        let out = dir.path().join(peft.method());
        trained.save_adapter(&out, &folder, &tok).unwrap();
        assert!(!out.join("model.safetensors").exists(), "an adapter folder holds no base weights");

        // Reloaded on the base: same outputs, the trained head included.
        let adapter = AdapterFolder::open(&out, None).unwrap();
        let base_weights = folder.load_weights(&Device::Cpu).unwrap();
        let reloaded = SequenceClassifier::from_adapter(&adapter, &base_weights, &Device::Cpu).unwrap();
        assert!(max_diff(&logits(&reloaded, &folder, None), &expected) < 1e-6, "{peft:?}: reloaded adapter differs");
        // Through the inference entry point that `predict` and the server use.
        let tm = TextModel::open(&out, &Device::Cpu).unwrap();
        let items = tm.tokenizer.encode_many(&texts(), None).unwrap();
        let refs: Vec<&TokenizedText> = items.iter().collect();
        let probs = Tensor::new(tm.classify(&refs).unwrap(), &Device::Cpu).unwrap();
        let want = candle_nn::ops::softmax(&expected, 1).unwrap();
        assert!(max_diff(&probs, &want) < 1e-6);

        let mut tensors = trained.all_tensors();
        let merged = merge_lora(&mut tensors, &peft);
        if !matches!(peft, PeftConfig::Lora { .. }) {
            assert!(merged.is_err(), "only LoRA merges");
            continue;
        }
        assert_eq!(merged.unwrap(), 6, "3 targets in 2 layers");
        let merged_dir = dir.path().join("merged");
        let config = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        save_full(&merged_dir, &tensors, &config, &tok).unwrap();
        let plain = SequenceClassifier::for_inference(&ModelFolder::open(&merged_dir).unwrap(), None, &Device::Cpu).unwrap();
        assert!(plain.peft.is_none());
        let d = max_diff(&logits(&plain, &folder, None), &expected);
        assert!(d < 1e-5, "merged LoRA differs from unmerged by {d}");
    }
}

#[test]
fn several_adapters_share_one_base_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let folder = base_folder(&dir.path().join("base"));
    let tok = folder.tokenizer(32).unwrap();
    let mut outputs = Vec::new();
    for (i, peft) in methods().into_iter().enumerate() {
        let m = SequenceClassifier::from_folder_peft(&folder, Some(head()), i as u64, &Device::Cpu, Some(&peft)).unwrap();
        randomise_trainable(&m, 20 + i as u64);
        let out = dir.path().join(format!("task{i}"));
        m.save_adapter(&out, &folder, &tok).unwrap();
        outputs.push((out, logits(&m, &folder, None)));
    }
    let base_weights: HashMap<String, Tensor> = folder.load_weights(&Device::Cpu).unwrap();
    let loaded: Vec<SequenceClassifier> = outputs
        .iter()
        .map(|(out, _)| SequenceClassifier::from_adapter(&AdapterFolder::open(out, None).unwrap(), &base_weights, &Device::Cpu).unwrap())
        .collect();
    let word = "bert.embeddings.word_embeddings.weight";
    for (m, (_, expected)) in loaded.iter().zip(&outputs) {
        assert_eq!(m.fixed[word].id(), base_weights[word].id(), "the base tensors must be shared, not copied");
        assert!(max_diff(&logits(m, &folder, None), expected) < 1e-6);
    }
    assert!(max_diff(&logits(&loaded[0], &folder, None), &logits(&loaded[1], &folder, None)) > 1e-3, "each call uses its own adapter");
}

#[test]
fn bad_settings_and_folders_get_clear_errors() {
    let bad = PeftConfig::Lora { r: 8, alpha: 16.0, dropout: 0.0, targets: vec!["qkv".into()] };
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("qkv") && e.contains("attention.self.query"), "{e}");
    assert!(PeftConfig::Lora { r: 0, alpha: 16.0, dropout: 0.0, targets: vec!["query".into()] }.validate().is_err());
    assert!(PeftConfig::Prefix { length: 0 }.validate().is_err());

    let dir = tempfile::tempdir().unwrap();
    let folder = base_folder(&dir.path().join("base"));
    let m = SequenceClassifier::from_folder_peft(&folder, Some(head()), 1, &Device::Cpu, Some(&methods()[0])).unwrap();
    let out = dir.path().join("adapter");
    m.save_adapter(&out, &folder, &folder.tokenizer(32).unwrap()).unwrap();
    std::fs::rename(dir.path().join("base"), dir.path().join("moved")).unwrap();
    let e = AdapterFolder::open(&out, None).err().unwrap().to_string();
    assert!(e.contains("--base"), "{e}");
    assert!(AdapterFolder::open(&out, Some(&dir.path().join("moved"))).is_ok());
    let _ = DType::F32;
}
