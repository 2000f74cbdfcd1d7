//! Mixed precision: bf16 / fp16 activations over f32 master weights give the f32 model's logits
//! within half precision's error, and every master weight receives an f32 gradient close to the
//! f32 model's.

use candle_core::{DType, Device, Tensor, D};
use std::collections::HashMap;
use zhiku_models::{BertConfig, ClassifierConfig, DropoutRng, EncodedBatch, Pooling, Precision, ProblemType, SequenceClassifier};

fn tiny(pooling: Pooling, precision: Precision) -> SequenceClassifier {
    let head = ClassifierConfig { labels: vec!["a".into(), "b".into(), "c".into()], pooling, problem_type: ProblemType::SingleLabel, thresholds: None, text_pairs: false };
    let mut m = SequenceClassifier::build(&BertConfig::tiny(40), HashMap::new(), head, 3, &Device::Cpu, DType::F32).unwrap();
    m.set_precision(precision);
    m
}

fn batch() -> EncodedBatch {
    zhiku_models::testing::tiny_batch()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(D::Minus1).unwrap().to_scalar::<f32>().unwrap()
}

fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.flatten_all().unwrap().to_dtype(DType::F64).unwrap(), b.flatten_all().unwrap().to_dtype(DType::F64).unwrap());
    let dot = (&a * &b).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    let na = a.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    let nb = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    dot / (na * nb)
}

#[test]
fn half_precision_matches_fp32_with_f32_gradients_for_every_master_weight() {
    for pooling in [Pooling::Pooler, Pooling::Mean] {
        let reference = tiny(pooling, Precision::Fp32);
        let ref_logits = reference.forward(&batch(), None).unwrap();
        let ref_grads = ref_logits.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for precision in [Precision::Bf16, Precision::Fp16] {
            let model = tiny(pooling, precision);
            // Masters stay f32.
            assert!(model.params.iter().all(|(_, v)| v.dtype() == DType::F32));
            let logits = model.forward(&batch(), None).unwrap();
            assert_eq!(logits.dtype(), DType::F32, "{precision}: logits come back in f32");
            let err = max_abs(&(&logits - &ref_logits).unwrap());
            let tol = if precision == Precision::Bf16 { 0.05 } else { 0.01 } * max_abs(&ref_logits).max(1.0);
            assert!(err < tol, "{precision} {pooling:?}: logits differ by {err} (tolerance {tol})");
            assert!(err > 0.0, "{precision}: the computation did not run in half precision");
            // fp16 needs the trainer's loss scaling: this tiny model's gradients (~1e-8) would
            // otherwise underflow to zero in fp16. Cosines below do not depend on the scale.
            let scale = if precision == Precision::Fp16 { 65536.0 } else { 1.0 };
            let grads = (logits.sqr().unwrap().sum_all().unwrap() * scale).unwrap().backward().unwrap();
            for (name, var) in model.params.iter() {
                let g = grads.get(var).unwrap_or_else(|| panic!("{precision}: no gradient for {name}"));
                assert_eq!(g.dtype(), DType::F32, "{precision}: gradient of {name}");
                if name.ends_with("attention.self.key.bias") {
                    // Softmax ignores a shift shared by a query's scores, so this gradient is
                    // zero up to rounding in any precision: nothing to compare.
                    continue;
                }
                let r = ref_grads.get(reference.params.get(name).unwrap()).unwrap();
                let c = cosine(g, r);
                assert!(c > 0.98, "{precision} {pooling:?}: gradient of {name} has cosine {c} with fp32's");
            }
        }
    }
}

#[test]
fn half_precision_trains_with_dropout() {
    let model = tiny(Pooling::Pooler, Precision::Fp16);
    let logits = model.forward(&batch(), Some(&mut DropoutRng::new(4))).unwrap();
    let v: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    assert!(v.iter().flatten().all(|x| x.is_finite()));
}

