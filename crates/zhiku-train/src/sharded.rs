//! One forward and backward pass of a batch, data-parallel across CPU cores: each shard of rows
//! computes its part of the loss and its own backward pass on a core of its own
//! (`zhiku_models::shard`), and the shards' gradients are summed. Losses here are sums over rows
//! divided by the whole step's normaliser, so the summed gradients equal the whole batch's.

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::Tensor;
use std::ops::Range;
use std::time::Instant;
use zhiku_models::{shard, EncodedBatch, Params, SequenceClassifier};

pub struct ShardedPass {
    /// The summed loss value.
    pub loss: f64,
    pub grads: GradStore,
    /// The slowest shard's forward (loss included) and backward times.
    pub forward_s: f64,
    pub backward_s: f64,
}

/// Runs `loss_of(shard, rows)` (`rows`: the shard's rows within `batch`) and its backward pass on
/// every shard of `batch`.
pub fn forward_backward(model: &SequenceClassifier, batch: &EncodedBatch, loss_of: impl Fn(&EncodedBatch, Range<usize>) -> Result<Tensor> + Sync) -> Result<ShardedPass> {
    let rows = batch.lengths.len();
    forward_backward_in(model, batch, shard::shard_count(rows, batch.input_ids.device()), loss_of)
}

fn forward_backward_in(model: &SequenceClassifier, batch: &EncodedBatch, shards: usize, loss_of: impl Fn(&EncodedBatch, Range<usize>) -> Result<Tensor> + Sync) -> Result<ShardedPass> {
    let rows = batch.lengths.len();
    let ranges = shard::split_rows(rows, shards);
    let parts = shard::run(ranges.len(), |i| {
        let t0 = Instant::now();
        let part = batch.rows(ranges[i].clone())?;
        let loss = loss_of(&part, ranges[i].clone())?;
        let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        Ok((value, grads, (t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64()))
    })?;
    let mut pass: Option<ShardedPass> = None;
    for (loss, grads, forward_s, backward_s) in parts {
        pass = Some(match pass {
            None => ShardedPass { loss, grads, forward_s, backward_s },
            Some(mut p) => {
                add_grads(&mut p.grads, &grads, &model.params)?;
                p.loss += loss;
                p.forward_s = p.forward_s.max(forward_s);
                p.backward_s = p.backward_s.max(backward_s);
                p
            }
        });
    }
    Ok(pass.expect("a batch has at least one shard"))
}

/// `into += from` for every parameter of `params`.
pub fn add_grads(into: &mut GradStore, from: &GradStore, params: &Params) -> Result<()> {
    for (_, var) in params.iter() {
        if let Some(g) = from.get(var) {
            add_grad(into, var, g)?;
        }
    }
    Ok(())
}

/// `var`'s gradient in `into` += `g` (inserted if it has none), in place where it can.
pub fn add_grad(into: &mut GradStore, var: &Tensor, g: &Tensor) -> Result<()> {
    match into.get(var) {
        Some(prev) if add_assign(prev, g)? => {}
        Some(prev) => {
            let sum = (prev + g)?;
            into.insert(var, sum);
        }
        None => {
            into.insert(var, g.clone());
        }
    }
    Ok(())
}

/// `into += from` written into `into`'s own storage, for contiguous f32 CPU tensors of one
/// shape; false (nothing done) otherwise. Only for a gradient store's entries: candle builds
/// each of them fresh (`zeros + g`), so no other tensor shares the storage that changes.
/// Summing in place, rather than into a new tensor per step, keeps a model-sized gradient
/// from being allocated and freed every step (full fine-tuning: half a gigabyte for
/// SmolLM2-135M, whose pages the allocator would either keep, raising the peak, or return and
/// fault in again, costing time).
pub fn add_assign(into: &Tensor, from: &Tensor) -> Result<bool> {
    let fits = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.is_contiguous();
    if !fits(into) || !fits(from) || into.shape() != from.shape() {
        return Ok(false);
    }
    into.inplace_op2(from, &AddAssign)?;
    Ok(true)
}

struct AddAssign;

impl candle_core::InplaceOp2 for AddAssign {
    fn name(&self) -> &'static str {
        "add-assign"
    }

    fn cpu_fwd(&self, a: &mut candle_core::CpuStorage, al: &candle_core::Layout, b: &candle_core::CpuStorage, bl: &candle_core::Layout) -> candle_core::Result<()> {
        let (candle_core::CpuStorage::F32(a), candle_core::CpuStorage::F32(b)) = (a, b) else {
            candle_core::bail!("add-assign expects f32 tensors")
        };
        let (Some((a0, a1)), Some((b0, b1))) = (al.contiguous_offsets(), bl.contiguous_offsets()) else {
            candle_core::bail!("add-assign expects contiguous tensors")
        };
        if a1 - a0 != b1 - b0 {
            candle_core::bail!("add-assign: sizes differ")
        }
        for (x, y) in a[a0..a1].iter_mut().zip(&b[b0..b1]) {
            *x += y;
        }
        Ok(())
    }
}

/// Adds `grads` to the running sum `acc` of a step's passes (the first pass's become it).
pub fn sum_grads(acc: &mut Option<GradStore>, grads: GradStore, params: &Params) -> Result<()> {
    match acc {
        None => *acc = Some(grads),
        Some(a) => add_grads(a, &grads, params)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::cross_entropy_sum;
    use candle_core::{DType, Device, D};
    use std::collections::HashMap;
    use zhiku_models::{BertConfig, ClassifierConfig, DropoutRng, Pooling, ProblemType};

    #[test]
    fn add_assign_sums_in_place_or_declines() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap();
        let b = Tensor::new(&[[10f32, 20.], [30., 40.]], &dev).unwrap();
        assert!(add_assign(&a, &b).unwrap());
        assert_eq!(a.to_vec2::<f32>().unwrap(), vec![vec![11., 22.], vec![33., 44.]]);
        // A transposed view, another dtype or another shape: declined, nothing changed.
        assert!(!add_assign(&a.t().unwrap(), &b).unwrap());
        assert!(!add_assign(&a, &b.to_dtype(DType::F64).unwrap()).unwrap());
        assert!(!add_assign(&a, &b.flatten_all().unwrap()).unwrap());
        assert_eq!(a.to_vec2::<f32>().unwrap(), vec![vec![11., 22.], vec![33., 44.]]);
    }

    fn tiny_with_dropout() -> SequenceClassifier {
        let mut cfg = BertConfig::tiny(40);
        cfg.raw.insert("hidden_dropout_prob".into(), 0.2.into());
        cfg.raw.insert("attention_probs_dropout_prob".into(), 0.2.into());
        let cfg = BertConfig::from_json_str(&cfg.raw_json()).unwrap();
        let head = ClassifierConfig { labels: vec!["a".into(), "b".into(), "c".into()], pooling: Pooling::Mean, problem_type: ProblemType::SingleLabel, thresholds: None, text_pairs: false };
        SequenceClassifier::build(&cfg, HashMap::new(), head, 7, &Device::Cpu, DType::F32).unwrap()
    }

    fn batch() -> EncodedBatch {
        let dev = Device::Cpu;
        let ids = Tensor::new(&[[2u32, 7, 9, 11, 3, 0], [2, 5, 3, 13, 17, 3], [2, 8, 8, 3, 0, 0], [2, 30, 31, 32, 33, 3], [2, 6, 3, 0, 0, 0]], &dev).unwrap();
        let mask = ids.ne(0u32).unwrap().to_dtype(DType::U32).unwrap();
        EncodedBatch { token_type_ids: ids.zeros_like().unwrap(), input_ids: ids, attention_mask: mask, lengths: vec![5, 6, 4, 6, 3] }
    }

    /// Shards (with dropout on everywhere) train exactly like the whole batch: same loss, same
    /// gradient for every parameter. Fails if a shard drew another row's dropout masks.
    #[test]
    fn shards_give_the_whole_batch_gradients() {
        let model = tiny_with_dropout();
        let batch = batch();
        let labels = [0u32, 2, 1, 1, 0];
        let loss_of = |part: &EncodedBatch, rows: Range<usize>| -> Result<Tensor> {
            let logits = model.forward(part, Some(&mut DropoutRng::for_step(3, 1, 0).for_rows(rows.start)))?;
            Ok((cross_entropy_sum(&logits, &labels[rows], None, 0.0)?.0 / 5.0)?)
        };
        let whole = forward_backward_in(&model, &batch, 1, loss_of).unwrap();
        for shards in [2, 3] {
            let split = forward_backward_in(&model, &batch, shards, loss_of).unwrap();
            assert!((whole.loss - split.loss).abs() < 1e-6, "{shards} shards: loss {} against {}", split.loss, whole.loss);
            for (name, var) in model.params.iter() {
                let (a, b) = (whole.grads.get(var).unwrap(), split.grads.get(var).unwrap());
                let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(D::Minus1).unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 1e-5, "{shards} shards: gradient of {name} differs by {diff}");
            }
        }
        // Other masks give another loss: the comparison above can fail.
        let other = forward_backward_in(&model, &batch, 1, |part, rows| {
            let logits = model.forward(part, Some(&mut DropoutRng::for_step(4, 1, 0).for_rows(rows.start)))?;
            Ok((cross_entropy_sum(&logits, &labels[rows], None, 0.0)?.0 / 5.0)?)
        })
        .unwrap();
        assert!((whole.loss - other.loss).abs() > 1e-4);
    }

    /// Inference shards (inside `BertModel::forward`) give the rows of the whole batch's output.
    #[test]
    fn sharded_inference_equals_row_by_row() {
        let model = tiny_with_dropout();
        let batch = batch();
        let all = model.forward(&batch, None).unwrap();
        for r in 0..5 {
            let one = model.forward(&batch.rows(r..r + 1).unwrap(), None).unwrap();
            let diff = (all.narrow(0, r, 1).unwrap() - one).unwrap().abs().unwrap().flatten_all().unwrap().max(D::Minus1).unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "row {r}: {diff}");
        }
    }
}
