//! Evaluation metrics: accuracy, macro-F1, per-class precision/recall/F1 and the confusion
//! matrix for single-label tasks; micro/macro-F1, subset accuracy and tuned per-label thresholds
//! for multi-label tasks.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassificationReport {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub weighted_f1: f64,
    pub examples: usize,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    pub labels: Vec<String>,
}

fn prf(tp: usize, fp: usize, fn_: usize) -> (f64, f64, f64) {
    let p = if tp + fp == 0 { 0.0 } else { tp as f64 / (tp + fp) as f64 };
    let r = if tp + fn_ == 0 { 0.0 } else { tp as f64 / (tp + fn_) as f64 };
    let f = if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) };
    (p, r, f)
}

impl ClassificationReport {
    /// Metrics from gold and predicted label ids. Macro-F1 averages over classes present in the
    /// gold labels or predictions (scikit-learn's default `labels=None` behaviour).
    pub fn new(labels: &[String], gold: &[usize], predicted: &[usize]) -> Self {
        let k = labels.len();
        let mut confusion = vec![vec![0usize; k]; k];
        for (&g, &p) in gold.iter().zip(predicted) {
            confusion[g][p] += 1;
        }
        let n = gold.len();
        let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
        let mut per_class = Vec::with_capacity(k);
        let (mut f1_sum, mut present, mut weighted) = (0.0, 0usize, 0.0);
        for i in 0..k {
            let tp = confusion[i][i];
            let support: usize = confusion[i].iter().sum();
            let predicted_i: usize = (0..k).map(|r| confusion[r][i]).sum();
            let (p, r, f) = prf(tp, predicted_i - tp, support - tp);
            if support > 0 || predicted_i > 0 {
                f1_sum += f;
                present += 1;
            }
            weighted += f * support as f64;
            per_class.push(ClassMetrics { label: labels[i].clone(), precision: p, recall: r, f1: f, support });
        }
        Self {
            accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 },
            macro_f1: if present == 0 { 0.0 } else { f1_sum / present as f64 },
            weighted_f1: if n == 0 { 0.0 } else { weighted / n as f64 },
            examples: n,
            per_class,
            confusion,
            labels: labels.to_vec(),
        }
    }

    /// A plain-text table for terminals.
    pub fn to_table(&self) -> String {
        let width = self.labels.iter().map(|l| l.chars().count()).max().unwrap_or(5).max(9);
        let mut s = format!("{:<width$}  precision  recall     f1  support\n", "label");
        for c in &self.per_class {
            s += &format!("{:<width$}  {:>9.4}  {:>6.4}  {:>6.4}  {:>7}\n", c.label, c.precision, c.recall, c.f1, c.support);
        }
        s += &format!("\naccuracy {:.4}   macro-F1 {:.4}   weighted-F1 {:.4}   ({} examples)\n", self.accuracy, self.macro_f1, self.weighted_f1, self.examples);
        s += "\nconfusion matrix (rows: true, columns: predicted)\n";
        let cw = self.confusion.iter().flatten().map(|c| c.to_string().len()).max().unwrap_or(1).max(3);
        for (i, row) in self.confusion.iter().enumerate() {
            s += &format!("{:<width$} ", self.labels[i]);
            for c in row {
                s += &format!(" {c:>cw$}");
            }
            s += "\n";
        }
        s
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MultiLabelReport {
    pub micro_f1: f64,
    pub macro_f1: f64,
    /// Share of examples whose predicted label set equals the gold set exactly.
    pub subset_accuracy: f64,
    pub examples: usize,
    pub per_class: Vec<ClassMetrics>,
    pub thresholds: Vec<f32>,
}

impl MultiLabelReport {
    /// `probs[i][j]`: probability of label j for example i; `gold[i][j]`: whether it applies.
    pub fn new(labels: &[String], probs: &[Vec<f32>], gold: &[Vec<bool>], thresholds: &[f32]) -> Self {
        let k = labels.len();
        let (mut tp_all, mut fp_all, mut fn_all) = (0, 0, 0);
        let mut per_class = Vec::with_capacity(k);
        let mut f1_sum = 0.0;
        for j in 0..k {
            let (mut tp, mut fp, mut fn_) = (0, 0, 0);
            for (p, g) in probs.iter().zip(gold) {
                match (p[j] >= thresholds[j], g[j]) {
                    (true, true) => tp += 1,
                    (true, false) => fp += 1,
                    (false, true) => fn_ += 1,
                    _ => {}
                }
            }
            let (pr, rc, f) = prf(tp, fp, fn_);
            f1_sum += f;
            tp_all += tp;
            fp_all += fp;
            fn_all += fn_;
            per_class.push(ClassMetrics { label: labels[j].clone(), precision: pr, recall: rc, f1: f, support: tp + fn_ });
        }
        let exact = probs.iter().zip(gold).filter(|(p, g)| (0..k).all(|j| (p[j] >= thresholds[j]) == g[j])).count();
        Self {
            micro_f1: prf(tp_all, fp_all, fn_all).2,
            macro_f1: if k == 0 { 0.0 } else { f1_sum / k as f64 },
            subset_accuracy: if probs.is_empty() { 0.0 } else { exact as f64 / probs.len() as f64 },
            examples: probs.len(),
            per_class,
            thresholds: thresholds.to_vec(),
        }
    }
}

/// Per-label thresholds that maximise each label's F1 on the given (dev) predictions, searched
/// on a 0.05 grid; ties go to the threshold nearest 0.5.
pub fn tune_thresholds(probs: &[Vec<f32>], gold: &[Vec<bool>], num_labels: usize) -> Vec<f32> {
    (0..num_labels)
        .map(|j| {
            let mut best = (f64::MIN, 0.5f32);
            for step in 1..20 {
                let t = step as f32 * 0.05;
                let (mut tp, mut fp, mut fn_) = (0, 0, 0);
                for (p, g) in probs.iter().zip(gold) {
                    match (p[j] >= t, g[j]) {
                        (true, true) => tp += 1,
                        (true, false) => fp += 1,
                        (false, true) => fn_ += 1,
                        _ => {}
                    }
                }
                let f = prf(tp, fp, fn_).2;
                if f > best.0 + 1e-12 || ((f - best.0).abs() <= 1e-12 && (t - 0.5).abs() < (best.1 - 0.5).abs()) {
                    best = (f, t);
                }
            }
            best.1
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_label_metrics_match_sklearn() {
        // sklearn: accuracy 0.5, macro-F1 0.4889 for this example.
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let gold = [0, 0, 1, 1, 2, 2];
        let pred = [0, 1, 1, 1, 0, 2];
        let r = ClassificationReport::new(&labels, &gold, &pred);
        assert!((r.accuracy - 4.0 / 6.0).abs() < 1e-12);
        // a: p=1/2 r=1/2 f=.5; b: p=2/3 r=1 f=.8; c: p=1 r=1/2 f=2/3
        assert!((r.macro_f1 - (0.5 + 0.8 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert_eq!(r.confusion, vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]);
        assert!(r.to_table().contains("macro-F1"));
    }

    #[test]
    fn multi_label_thresholds_improve_f1() {
        let probs = vec![vec![0.3, 0.9], vec![0.25, 0.1], vec![0.1, 0.8], vec![0.05, 0.2]];
        let gold = vec![vec![true, true], vec![true, false], vec![false, true], vec![false, false]];
        let t = tune_thresholds(&probs, &gold, 2);
        assert!(t[0] > 0.1 && t[0] <= 0.25, "{t:?}");
        let tuned = MultiLabelReport::new(&["x".into(), "y".into()], &probs, &gold, &t);
        let plain = MultiLabelReport::new(&["x".into(), "y".into()], &probs, &gold, &[0.5, 0.5]);
        assert!(tuned.macro_f1 > plain.macro_f1);
        assert_eq!(tuned.subset_accuracy, 1.0);
    }
}
