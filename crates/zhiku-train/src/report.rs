//! The end-of-training report: `report.svg` (loss and dev-metric curves) and `report.md`.

use crate::state::{TrainConfig, TrainSummary, TrainerState};
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

pub fn write(dir: &Path, state: &TrainerState, summary: &TrainSummary, config: &TrainConfig) -> Result<()> {
    let svg = dir.join("report.svg");
    let tmp = dir.join(".report.svg.tmp");
    plot(&tmp, state, &summary.metric).map_err(|e| anyhow!("cannot draw {}: {e}", svg.display()))?;
    std::fs::rename(&tmp, &svg)?;
    let mut md = String::from("# zhiku training report\n\n![loss and dev metric](report.svg)\n\n");
    md += &format!(
        "Stopped: {:?} after {} optimizer steps in {:.0} s. Best dev {} = {:.4} at step {}.\n\n",
        summary.stop,
        summary.steps,
        summary.seconds,
        summary.metric,
        summary.best_dev_metric.unwrap_or(f64::NAN),
        summary.best_step
    );
    for (name, part) in [("dev", &summary.dev), ("test", &summary.test)] {
        if let Some(r) = part {
            md += &format!("## {name}\n\n");
            for key in ["accuracy", "macro_f1", "weighted_f1", "micro_f1", "subset_accuracy"] {
                if let Some(v) = r.get(key).and_then(|v| v.as_f64()) {
                    md += &format!("- {key}: {v:.4}\n");
                }
            }
            md += "\n";
        }
    }
    md += &format!("## settings\n\n```json\n{}\n```\n", serde_json::to_string_pretty(config)?);
    zhiku_models::classifier::write_atomic(&dir.join("report.md"), md.as_bytes())?;
    Ok(())
}

fn plot(path: &Path, state: &TrainerState, metric: &str) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);

    let losses = &state.losses;
    let max_step = losses.last().map(|l| l.0).unwrap_or(1).max(1) as f64;
    let max_loss = losses.iter().map(|l| l.1).fold(0.0f64, f64::max).max(1e-3) * 1.05;
    let mut chart = ChartBuilder::on(&left)
        .caption("training loss", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_step, 0f64..max_loss)?;
    chart.configure_mesh().x_desc("optimizer step").y_desc("loss").draw()?;
    chart.draw_series(LineSeries::new(losses.iter().map(|&(s, l)| (s as f64, l)), RGBColor(180, 180, 220)))?;
    // A moving average makes the trend readable through the noise of single steps.
    let w = (losses.len() / 30).max(1);
    let smooth: Vec<(f64, f64)> = losses.windows(w).map(|win| (win[win.len() - 1].0 as f64, win.iter().map(|x| x.1).sum::<f64>() / w as f64)).collect();
    chart.draw_series(LineSeries::new(smooth, BLUE.stroke_width(2)))?;

    let hist = &state.history;
    let (lo, hi) = hist.iter().fold((f64::MAX, f64::MIN), |(a, b), r| (a.min(r.metric), b.max(r.metric)));
    let (lo, hi) = if hist.is_empty() { (0.0, 1.0) } else { (lo - 0.02 * (hi - lo).max(0.05), hi + 0.02 * (hi - lo).max(0.05)) };
    let mut chart = ChartBuilder::on(&right)
        .caption(format!("dev {metric}"), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_step, lo..hi)?;
    chart.configure_mesh().x_desc("optimizer step").y_desc(metric).draw()?;
    chart.draw_series(LineSeries::new(hist.iter().map(|r| (r.step as f64, r.metric)), RED.stroke_width(2)))?;
    chart.draw_series(hist.iter().map(|r| Circle::new((r.step as f64, r.metric), 4, RED.filled())))?;
    root.present()?;
    Ok(())
}
