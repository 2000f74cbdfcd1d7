//! `zhiku tag-images`: zero-shot tagging and embeddings of images with CLIP or Chinese-CLIP.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use zhiku_media::clip::ImageTextModel;

#[derive(Args, Debug)]
#[command(after_help = "Each image is matched against each label's text (the template with {} replaced by the label) in the\n\
model's shared embedding space: the similarity is the cosine of the two embeddings, the probability a softmax\n\
of the scaled similarities over the labels (CLIP's zero-shot classification). Without labels, --format json\n\
prints each image's embedding.\n\n\
Model: a Hugging Face CLIP or Chinese-CLIP folder (config.json, model.safetensors, tokenizer.json or vocab.txt,\n\
preprocessor_config.json), e.g. openai/clip-vit-base-patch32 or OFA-Sys/chinese-clip-vit-base-patch16.\n\n\
Examples:\n  \
zhiku tag-images --model chinese-clip --labels 猫,狗,风景,人物 --template '{}的照片' covers/*.jpg\n  \
zhiku tag-images --model clip --labels-file topics.txt --template 'a photo of {}' --format json --top 5 *.png\n  \
zhiku tag-images --model clip --format json --embeddings --embed-text 'a lecture slide' slide.png")]
pub struct TagImagesArgs {
    /// Image files (PNG, JPEG).
    files: Vec<PathBuf>,
    /// The CLIP or Chinese-CLIP model folder.
    #[arg(long, short)]
    model: PathBuf,
    /// Labels, separated by commas.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// A file of labels, one per line (added to --labels).
    #[arg(long, value_name = "FILE")]
    labels_file: Option<PathBuf>,
    /// The text each label is matched as; {} stands for the label.
    #[arg(long, default_value = "{}")]
    template: String,
    /// Labels shown per image, best first.
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// txt (a line per image: file, then label (probability) ...) or json (a line per image:
    /// {"file", "labels": [{"label", "similarity", "probability"}], "embedding"?}).
    #[arg(long, default_value = "txt")]
    format: String,
    /// json: add each image's unit-length embedding.
    #[arg(long)]
    embeddings: bool,
    /// Also print this text's embedding (json, {"text", "embedding"}); repeat for several.
    #[arg(long, value_name = "TEXT")]
    embed_text: Vec<String>,
}

pub fn run(a: TagImagesArgs) -> Result<i32> {
    let json = match a.format.as_str() {
        "txt" | "text" => false,
        "json" => true,
        other => bail!("unknown --format {other:?}: expected txt or json"),
    };
    let mut labels: Vec<String> = a.labels.iter().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    if let Some(f) = &a.labels_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        labels.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from));
    }
    if labels.is_empty() && !json {
        bail!("no labels: give --labels or --labels-file (or --format json for embeddings only)")
    }
    if (a.embeddings || !a.embed_text.is_empty()) && !json {
        bail!("embeddings are printed with --format json")
    }
    if a.files.is_empty() && a.embed_text.is_empty() {
        bail!("no images (and no --embed-text)")
    }
    let model = ImageTextModel::load(&a.model).with_context(|| format!("cannot load a CLIP model from {}", a.model.display()))?;
    let mut out = std::io::stdout().lock();
    if !a.embed_text.is_empty() {
        let texts: Vec<&str> = a.embed_text.iter().map(String::as_str).collect();
        for (t, e) in texts.iter().zip(model.embed_texts(&texts)?) {
            writeln!(out, "{}", serde_json::json!({"text": t, "embedding": e}))?;
        }
    }
    // The labels' texts are embedded once for all the images.
    let label_set = if labels.is_empty() { None } else { Some(model.labels(&labels.iter().map(String::as_str).collect::<Vec<_>>(), &a.template)?) };
    let mut failed = 0;
    for path in &a.files {
        let image = match zhiku_media::image::load_image(path) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
                continue;
            }
        };
        let embedding = model.embed_images(&[&image])?.remove(0);
        let scores = label_set.as_ref().map_or_else(Vec::new, |l| model.rank(&embedding, l));
        let shown = &scores[..a.top.min(scores.len())];
        if json {
            let mut v = serde_json::json!({"file": path, "labels": shown});
            if a.embeddings || labels.is_empty() {
                v["embedding"] = serde_json::json!(embedding);
            }
            writeln!(out, "{v}")?;
        } else {
            let tags: Vec<String> = shown.iter().map(|s| format!("{} ({:.2})", s.label, s.probability)).collect();
            writeln!(out, "{}\t{}", path.display(), tags.join(", "))?;
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
