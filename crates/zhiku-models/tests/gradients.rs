//! Every parameter of the encoder and head must receive a gradient, and the gradients must be
//! right (central finite differences in f64 on a tiny random model).

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use zhiku_models::{BertConfig, ClassifierConfig, DropoutRng, EncodedBatch, Pooling, ProblemType, SequenceClassifier};

fn tiny(pooling: Pooling, dtype: DType) -> SequenceClassifier {
    let head = ClassifierConfig { labels: vec!["a".into(), "b".into(), "c".into()], pooling, problem_type: ProblemType::SingleLabel, thresholds: None, text_pairs: false };
    SequenceClassifier::build(&BertConfig::tiny(40), HashMap::new(), head, 3, &Device::Cpu, dtype).unwrap()
}

fn batch() -> EncodedBatch {
    zhiku_models::testing::tiny_batch()
}

/// A scalar that depends on every logit with distinct weights.
fn loss(model: &SequenceClassifier, rng: Option<&mut DropoutRng>) -> Tensor {
    let logits = model.forward(&batch(), rng).unwrap();
    let w = Tensor::new(&[[0.3f64, -1.1, 0.7], [1.3, 0.2, -0.5]], &Device::Cpu).unwrap().to_dtype(logits.dtype()).unwrap();
    (logits * w).unwrap().sqr().unwrap().sum_all().unwrap()
}

#[test]
fn every_parameter_gets_a_gradient() {
    for pooling in [Pooling::Pooler, Pooling::Cls, Pooling::Mean] {
        let model = tiny(pooling, DType::F32);
        let mut rng = DropoutRng::new(1);
        let grads = loss(&model, Some(&mut rng)).backward().unwrap();
        assert!(model.params.len() > 30);
        for (name, var) in model.params.iter() {
            let g = grads.get(var).unwrap_or_else(|| panic!("{pooling:?}: no gradient for {name}"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{pooling:?}: zero or non-finite gradient for {name}: {norm}");
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let model = tiny(Pooling::Pooler, DType::F64);
    let grads = loss(&model, None).backward().unwrap();
    let probes = [
        ("bert.embeddings.word_embeddings.weight", 7 * 16 + 3),
        ("bert.embeddings.position_embeddings.weight", 2 * 16 + 5),
        ("bert.embeddings.token_type_embeddings.weight", 16 + 1),
        ("bert.embeddings.LayerNorm.weight", 4),
        ("bert.encoder.layer.0.attention.self.query.weight", 37),
        ("bert.encoder.layer.0.attention.self.key.bias", 2),
        ("bert.encoder.layer.1.attention.self.value.weight", 100),
        ("bert.encoder.layer.1.attention.output.dense.weight", 55),
        ("bert.encoder.layer.0.intermediate.dense.weight", 300),
        ("bert.encoder.layer.1.output.dense.bias", 9),
        ("bert.encoder.layer.1.output.LayerNorm.bias", 11),
        ("bert.pooler.dense.weight", 17),
        ("classifier.weight", 20),
        ("classifier.bias", 1),
    ];
    let eps = 1e-6;
    for (name, idx) in probes {
        let var = model.params.get(name).unwrap_or_else(|| panic!("no param {name}"));
        let shape = var.shape().clone();
        let orig: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
        let at = |delta: f64| {
            let mut v = orig.clone();
            v[idx] += delta;
            var.set(&Tensor::from_vec(v, shape.clone(), &Device::Cpu).unwrap()).unwrap();
            loss(&model, None).to_scalar::<f64>().unwrap()
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
        var.set(&Tensor::from_vec(orig.clone(), shape.clone(), &Device::Cpu).unwrap()).unwrap();
        let analytic: f64 = grads.get(var).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()[idx];
        let err = (numeric - analytic).abs() / (1e-8 + numeric.abs().max(analytic.abs()));
        assert!(err < 1e-4, "{name}[{idx}]: analytic {analytic:e} vs numeric {numeric:e} (rel err {err:e})");
    }
}

#[test]
fn dropout_is_seeded() {
    let model = tiny(Pooling::Cls, DType::F32);
    let a = loss(&model, Some(&mut DropoutRng::new(5))).to_scalar::<f32>().unwrap();
    let b = loss(&model, Some(&mut DropoutRng::new(5))).to_scalar::<f32>().unwrap();
    let c = loss(&model, Some(&mut DropoutRng::new(6))).to_scalar::<f32>().unwrap();
    let eval = loss(&model, None).to_scalar::<f32>().unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a, eval);
}

#[test]
fn inference_view_shares_weights_and_records_no_graph() {
    let model = tiny(Pooling::Pooler, DType::F32);
    let view = model.inference_view(&BertConfig::tiny(40)).unwrap();
    let trained = model.forward(&batch(), None).unwrap();
    let viewed = view.forward(&batch(), None).unwrap();
    assert!(trained.track_op(), "the training model records a graph");
    assert!(!viewed.track_op(), "the view must not");
    let diff = (&trained - &viewed).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-6, "{diff}");
    // The optimiser updates weights in place; the view sees the new values without a rebuild.
    let bias = model.params.get("classifier.bias").unwrap();
    bias.set(&(bias.as_tensor() + 1.0).unwrap()).unwrap();
    let moved = view.forward(&batch(), None).unwrap();
    let shift = (&moved - &viewed).unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!((shift - 1.0).abs() < 1e-5, "{shift}");
}
