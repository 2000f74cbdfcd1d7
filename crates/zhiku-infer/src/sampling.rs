//! Choosing the next token from logits: penalties, temperature, top-k, top-p, min-p, and a
//! seeded random draw (the same seed gives the same text).

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off: tokens below `min_p` times the best token's probability are dropped.
    pub min_p: f32,
    /// 1 = off: logits of tokens already in the context are divided (positive) or multiplied
    /// (negative) by it (the CTRL / llama.cpp rule).
    pub repetition_penalty: f32,
    /// 0 = off: subtracted once from the logit of every token already generated (OpenAI's).
    pub presence_penalty: f32,
    /// 0 = off: subtracted per occurrence of a token already generated (OpenAI's).
    pub frequency_penalty: f32,
    /// How many recent tokens the repetition penalty looks at (0 = all).
    pub penalty_window: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_window: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// Rejects values outside their meaningful range, naming the parameter.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=2.0).contains(&self.temperature) || self.temperature.is_nan() {
            bail!("temperature must be between 0 and 2, got {}", self.temperature)
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("top_p must be in (0, 1], got {}", self.top_p)
        }
        if !(0.0..=1.0).contains(&self.min_p) || self.min_p.is_nan() {
            bail!("min_p must be between 0 and 1, got {}", self.min_p)
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 10.0) {
            bail!("repetition_penalty must be in (0, 10], got {}", self.repetition_penalty)
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) || self.presence_penalty.is_nan() {
            bail!("presence_penalty must be between -2 and 2, got {}", self.presence_penalty)
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) || self.frequency_penalty.is_nan() {
            bail!("frequency_penalty must be between -2 and 2, got {}", self.frequency_penalty)
        }
        Ok(())
    }
}

/// One sequence's sampler: its parameters and random state.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Reused buffer of (token, logit) candidates.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Self { params, rng, candidates: Vec::new() }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token. `context` is the prompt and the tokens generated so far;
    /// `generated` the number of them that were generated (the tail of `context`).
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32], generated: usize) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let window = if p.penalty_window == 0 { context.len() } else { p.penalty_window.min(context.len()) };
            let mut seen = std::collections::HashSet::new();
            for &t in &context[context.len() - window..] {
                if seen.insert(t) {
                    if let Some(l) = logits.get_mut(t as usize) {
                        *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                    }
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut counts = std::collections::HashMap::new();
            for &t in &context[context.len() - generated.min(context.len())..] {
                *counts.entry(t).or_insert(0u32) += 1;
            }
            for (t, n) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let cands = &mut self.candidates;
        cands.clear();
        cands.extend(logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l / p.temperature)));
        if cands.is_empty() {
            return argmax(logits);
        }
        // Sort only what top-k keeps (or everything), best first.
        let k = if p.top_k == 0 { cands.len() } else { p.top_k.min(cands.len()) };
        if k < cands.len() {
            cands.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            cands.truncate(k);
        }
        cands.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let max = cands[0].1;
        let mut probs: Vec<f32> = cands.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|v| *v /= total);
        let mut keep = probs.len();
        if p.min_p > 0.0 {
            let floor = p.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut n = 0;
            for &q in &probs[..keep] {
                acc += q;
                n += 1;
                if acc >= p.top_p {
                    break;
                }
            }
            keep = n.max(1);
        }
        let total: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, &q) in probs[..keep].iter().enumerate() {
            r -= q;
            if r <= 0.0 {
                return cands[i].0;
            }
        }
        cands[keep - 1].0
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.5, -1.0, 0.0, 2.9]
    }

    #[test]
    fn greedy_picks_the_best_and_penalties_change_it() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&mut logits(), &[], 0), 1);
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 1.5, ..SamplingParams::greedy() });
        assert_eq!(s.sample(&mut logits(), &[1], 0), 5);
        let mut s = Sampler::new(SamplingParams { presence_penalty: 1.0, ..SamplingParams::greedy() });
        assert_eq!(s.sample(&mut logits(), &[1, 5], 2), 2);
        // Presence penalty counts only generated tokens, not the prompt.
        let mut s = Sampler::new(SamplingParams { presence_penalty: 1.0, ..SamplingParams::greedy() });
        assert_eq!(s.sample(&mut logits(), &[1, 5], 0), 1);
    }

    #[test]
    fn same_seed_same_draws_and_filters_hold() {
        let p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 7, ..Default::default() };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..50).map(|_| s.sample(&mut logits(), &[], 0)).collect::<Vec<_>>()
        };
        assert_eq!(draw(&p), draw(&p));
        assert_ne!(draw(&p), draw(&SamplingParams { seed: 8, ..p.clone() }));
        // top-k 2 keeps tokens 1 and 5 only.
        assert!(draw(&SamplingParams { top_k: 2, ..p.clone() }).iter().all(|t| [1, 5].contains(t)));
        // min-p 0.5: within a factor 2 of the best (e^-0.69): tokens 1, 5, 2.
        assert!(draw(&SamplingParams { min_p: 0.5, ..p.clone() }).iter().all(|t| [1, 5, 2].contains(t)));
        // top-p 0.3: the best token alone already covers 30%.
        assert!(draw(&SamplingParams { top_p: 0.3, ..p.clone() }).iter().all(|&t| t == 1));
        let all = draw(&p);
        assert!(all.contains(&0) || all.contains(&4) || all.contains(&3), "temperature 1 with no filters samples beyond the top three");
    }

    #[test]
    fn out_of_range_values_are_named() {
        for (p, name) in [
            (SamplingParams { temperature: -1.0, ..Default::default() }, "temperature"),
            (SamplingParams { top_p: 0.0, ..Default::default() }, "top_p"),
            (SamplingParams { min_p: 1.5, ..Default::default() }, "min_p"),
            (SamplingParams { repetition_penalty: 0.0, ..Default::default() }, "repetition_penalty"),
            (SamplingParams { presence_penalty: 3.0, ..Default::default() }, "presence_penalty"),
            (SamplingParams { temperature: f32::NAN, ..Default::default() }, "temperature"),
        ] {
            assert!(p.validate().unwrap_err().to_string().contains(name));
        }
        SamplingParams::default().validate().unwrap();
    }
}
