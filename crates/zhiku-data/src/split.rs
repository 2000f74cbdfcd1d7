use crate::Example;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// Splits examples into (train, dev, test), stratified by each example's first label so every
/// class keeps its share in each part. Deterministic for a given seed.
pub fn stratified_split(examples: &[Example], dev_fraction: f64, test_fraction: f64, seed: u64) -> (Vec<Example>, Vec<Example>, Vec<Example>) {
    let mut by_label: BTreeMap<&str, Vec<&Example>> = BTreeMap::new();
    for e in examples {
        by_label.entry(e.labels.first().map(String::as_str).unwrap_or("")).or_default().push(e);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut dev, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for (_, mut group) in by_label {
        group.shuffle(&mut rng);
        let n = group.len();
        // A class with at least 3 examples puts at least one in each part that is asked for.
        let take = |frac: f64| -> usize {
            let k = (n as f64 * frac).round() as usize;
            if frac > 0.0 && n >= 3 { k.max(1) } else { k }
        };
        let n_test = take(test_fraction).min(n);
        let n_dev = take(dev_fraction).min(n - n_test);
        test.extend(group[..n_test].iter().map(|e| (*e).clone()));
        dev.extend(group[n_test..n_test + n_dev].iter().map(|e| (*e).clone()));
        train.extend(group[n_test + n_dev..].iter().map(|e| (*e).clone()));
    }
    // Keep file order within each part (the shuffle above only chose membership).
    for part in [&mut train, &mut dev, &mut test] {
        part.sort_by_key(|e| e.line);
    }
    (train, dev, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_class_shares_and_is_deterministic() {
        let ex: Vec<Example> = (0..100)
            .map(|i| Example { text: format!("t{i}"), pair: None, labels: vec![if i % 4 == 0 { "a" } else { "b" }.into()], line: i + 1 })
            .collect();
        let (tr, dv, te) = stratified_split(&ex, 0.1, 0.2, 7);
        assert_eq!(tr.len() + dv.len() + te.len(), 100);
        assert_eq!(te.iter().filter(|e| e.labels[0] == "a").count(), 5);
        assert_eq!(dv.iter().filter(|e| e.labels[0] == "a").count(), 3); // 2.5 rounds to 3
        let again = stratified_split(&ex, 0.1, 0.2, 7);
        assert_eq!(again.2, te);
        let other = stratified_split(&ex, 0.1, 0.2, 8);
        assert_ne!(other.2, te);
    }
}
