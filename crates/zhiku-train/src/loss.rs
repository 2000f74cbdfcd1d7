//! Losses, returned as a *sum* over the micro-batch plus the normaliser that the caller divides
//! by once for the whole optimizer step; that is what makes gradient accumulation give exactly
//! the large-batch gradient (a per-micro-batch mean would weight uneven micro-batches wrongly).

use anyhow::Result;
use candle_core::{DType, Tensor, D};

/// Softmax cross-entropy with optional class weights and label smoothing.
///
/// Per example: `-(1-ε)·log p[y] - (ε/C)·Σ_c log p[c]`, weighted by `w[y]`; the normaliser is
/// `Σ w[y]` (the example count without weights), as PyTorch's weighted mean reduction.
pub fn cross_entropy_sum(logits: &Tensor, targets: &[u32], class_weights: Option<&[f32]>, smoothing: f64) -> Result<(Tensor, f64)> {
    let (n, c) = logits.dims2()?;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let dev = logits.device();
    // One-hot targets mixed with the uniform smoothing distribution, times the example weight.
    let mut coef = vec![0f32; n * c];
    let mut norm = 0f64;
    for (i, &y) in targets.iter().enumerate() {
        let w = class_weights.map_or(1.0, |cw| cw[y as usize]);
        norm += w as f64;
        for j in 0..c {
            coef[i * c + j] = w * (smoothing / c as f64) as f32;
        }
        coef[i * c + y as usize] += w * (1.0 - smoothing) as f32;
    }
    let coef = Tensor::from_vec(coef, (n, c), dev)?.to_dtype(logp.dtype())?;
    let loss = logp.mul(&coef)?.sum_all()?.neg()?;
    Ok((loss, norm))
}

/// Binary cross-entropy with logits, summed over labels and examples, in the stable form
/// `max(x,0) - x·y + log(1 + e^-|x|)`. The normaliser is the number of (example, label) cells,
/// matching `BCEWithLogitsLoss(reduction="mean")`.
pub fn bce_with_logits_sum(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, f64)> {
    let targets = targets.to_dtype(logits.dtype())?;
    let relu = logits.relu()?;
    let softplus = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    let loss = (relu - logits.mul(&targets)?)?.add(&softplus)?.sum_all()?;
    Ok((loss, logits.elem_count() as f64))
}

/// R-Drop's consistency term, summed over the batch: `KL(p‖q) + KL(q‖p)` between the
/// predictions of two passes, which for distributions is `Σ (p − q)(log p − log q)` and for
/// per-label Bernoulli predictions reduces to `Σ (σ(x) − σ(y))(x − y)` over logits.
pub fn symmetric_kl_sum(a: &Tensor, b: &Tensor, multi_label: bool) -> Result<Tensor> {
    if multi_label {
        let sig = |x: &Tensor| -> Result<Tensor> { Ok((x.neg()?.exp()? + 1.0)?.recip()?) };
        return Ok((sig(a)? - sig(b)?)?.mul(&(a - b)?)?.sum_all()?);
    }
    let (la, lb) = (candle_nn::ops::log_softmax(a, D::Minus1)?, candle_nn::ops::log_softmax(b, D::Minus1)?);
    Ok((la.exp()? - lb.exp()?)?.mul(&(la - lb)?)?.sum_all()?)
}

/// Multi-hot targets `[n, num_labels]`.
pub fn multi_hot(label_ids: &[Vec<u32>], num_labels: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mut v = vec![0f32; label_ids.len() * num_labels];
    for (i, ids) in label_ids.iter().enumerate() {
        for &j in ids {
            v[i * num_labels + j as usize] = 1.0;
        }
    }
    Ok(Tensor::from_vec(v, (label_ids.len(), num_labels), device)?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_matches_hand_computation() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1.0f32, 2.0, 0.5], [0.1, -1.0, 3.0]], &dev).unwrap();
        let (loss, norm) = cross_entropy_sum(&logits, &[1, 2], None, 0.0).unwrap();
        let lse = |r: [f32; 3]| r.iter().map(|x| x.exp()).sum::<f32>().ln();
        let want = (lse([1.0, 2.0, 0.5]) - 2.0) + (lse([0.1, -1.0, 3.0]) - 3.0);
        assert!((loss.to_scalar::<f32>().unwrap() - want).abs() < 1e-5);
        assert_eq!(norm, 2.0);
        // Label smoothing 0.1 (PyTorch: F.cross_entropy(x, y, label_smoothing=0.1, reduction='sum')).
        let (ls, _) = cross_entropy_sum(&logits, &[1, 2], None, 0.1).unwrap();
        let row = |r: [f32; 3], y: usize| {
            let l = lse(r);
            let logp: Vec<f32> = r.iter().map(|x| x - l).collect();
            -(0.9 * logp[y] + 0.1 / 3.0 * logp.iter().sum::<f32>())
        };
        let want = row([1.0, 2.0, 0.5], 1) + row([0.1, -1.0, 3.0], 2);
        assert!((ls.to_scalar::<f32>().unwrap() - want).abs() < 1e-5);
        // Class weights: weighted sum and the sum of weights as normaliser.
        let (wl, wn) = cross_entropy_sum(&logits, &[1, 2], Some(&[1.0, 2.0, 0.5]), 0.0).unwrap();
        let want = 2.0 * (lse([1.0, 2.0, 0.5]) - 2.0) + 0.5 * (lse([0.1, -1.0, 3.0]) - 3.0);
        assert!((wl.to_scalar::<f32>().unwrap() - want).abs() < 1e-5);
        assert_eq!(wn, 2.5);
    }

    #[test]
    fn symmetric_kl_matches_its_definition() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1.0f32, 2.0, 0.5], [0.1, -1.0, 3.0]], &dev).unwrap();
        let b = Tensor::new(&[[0.0f32, 2.5, 0.5], [1.0, -1.0, 2.0]], &dev).unwrap();
        let softmax = |r: [f32; 3]| {
            let s: f32 = r.iter().map(|x| x.exp()).sum();
            r.map(|x| x.exp() / s)
        };
        let kl = |p: [f32; 3], q: [f32; 3]| p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum::<f32>();
        let rows = [([1.0, 2.0, 0.5], [0.0, 2.5, 0.5]), ([0.1, -1.0, 3.0], [1.0, -1.0, 2.0])];
        let want: f32 = rows.iter().map(|&(x, y)| kl(softmax(x), softmax(y)) + kl(softmax(y), softmax(x))).sum();
        let got = symmetric_kl_sum(&a, &b, false).unwrap().to_scalar::<f32>().unwrap();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        assert!(symmetric_kl_sum(&a, &a, false).unwrap().to_scalar::<f32>().unwrap().abs() < 1e-7);
        // Per-label Bernoulli KL in both directions.
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let bkl = |p: f32, q: f32| p * (p / q).ln() + (1.0 - p) * ((1.0 - p) / (1.0 - q)).ln();
        let want: f32 = [1.0f32, 2.0, 0.5, 0.1, -1.0, 3.0].iter().zip([0.0f32, 2.5, 0.5, 1.0, -1.0, 2.0]).map(|(&x, y)| bkl(sig(x), sig(y)) + bkl(sig(y), sig(x))).sum();
        let got = symmetric_kl_sum(&a, &b, true).unwrap().to_scalar::<f32>().unwrap();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn bce_is_stable_and_correct() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[100.0f32, -100.0], [0.3, -0.7]], &dev).unwrap();
        let targets = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let (loss, norm) = bce_with_logits_sum(&logits, &targets).unwrap();
        let sp = |x: f32| (1.0 + x.exp()).ln();
        let want = sp(-100.0) + sp(-100.0) + sp(0.3) + sp(0.7);
        assert!((loss.to_scalar::<f32>().unwrap() - want).abs() < 1e-5);
        assert_eq!(norm, 4.0);
    }
}
