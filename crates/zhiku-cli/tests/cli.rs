//! The `zhiku` binary end to end: train -> eval -> predict on a tiny random model, bad input
//! (clear message with file and line, non-zero exit, no output folder), Ctrl-C and --resume.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const WORDS: [&str; 12] = ["apple", "banana", "cherry", "grape", "lemon", "mango", "car", "truck", "train", "plane", "boat", "bus"];

fn zhiku() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zhiku"))
}

fn run(args: &[&str]) -> Output {
    zhiku().args(args).output().expect("zhiku runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn data_lines(n: usize, offset: usize) -> String {
    (0..n)
        .map(|i| {
            let k = i + offset;
            let (base, label) = if k.is_multiple_of(2) { (0, "fruit") } else { (6, "vehicle") };
            format!("{{\"text\": \"{} {} {}\", \"label\": \"{label}\"}}\n", WORDS[base + k % 6], WORDS[base + (k / 2) % 6], WORDS[base + (k / 3) % 6])
        })
        .collect()
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        zhiku_models::testing::write_tiny_model(&dir.path().join("model"), &WORDS, 0.1, 1).unwrap();
        std::fs::write(dir.path().join("train.jsonl"), data_lines(48, 0)).unwrap();
        std::fs::write(dir.path().join("dev.jsonl"), data_lines(16, 100)).unwrap();
        Self { dir }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.p(name).display().to_string()
    }
    fn train_args(&self, out: &str) -> Vec<String> {
        ["train", "--model", &self.s("model"), "--train", &self.s("train.jsonl"), "--dev", &self.s("dev.jsonl"), "--output", &self.s(out),
         "--epochs", "4", "--batch-size", "8", "--lr", "1e-2", "--max-length", "16", "--quiet"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

#[test]
fn train_eval_predict_roundtrip() {
    let f = Fixture::new();
    let mut a = f.train_args("out");
    a.push("--json".into());
    let o = run(&args(&a));
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["stop"], "Finished");

    let o = run(&["eval", "--model", &f.s("out"), "--data", &f.s("dev.jsonl"), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(m["accuracy"].as_f64().unwrap() >= 0.9, "{m}");
    assert!(m["macro_f1"].as_f64().is_some() && m["confusion"].is_array() && m["per_class"].is_array());
    let o = run(&["eval", "--model", &f.s("out"), "--data", &f.s("dev.jsonl")]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("confusion matrix"));

    let o = run(&["predict", "--model", &f.s("out"), "apple lemon grape", "truck bus boat", "--json", "--top-k", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["labels"][0], "fruit");
    assert_eq!(lines[1]["labels"][0], "vehicle");
    assert_eq!(lines[0]["scores"].as_array().unwrap().len(), 2);

    // Standard input, one text per line.
    let mut child = zhiku().args(["predict", "--model", &f.s("out")]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"cherry mango\ncar plane\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let labels: Vec<&str> = text.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(labels, vec!["fruit", "vehicle"]);

    // An existing run is not silently overwritten.
    let o = run(&args(&f.train_args("out")));
    assert!(!o.status.success() && stderr(&o).contains("--overwrite"), "{}", stderr(&o));
}

/// Each bad input: non-zero exit, a message naming the file (and line), and no output folder.
#[test]
fn bad_input_is_reported_without_side_effects() {
    let f = Fixture::new();
    let write = |name: &str, content: &[u8]| std::fs::write(f.p(name), content).unwrap();
    write("malformed.jsonl", b"{\"text\": \"apple\", \"label\": \"fruit\"}\n{\"text\": oops}\n");
    write("empty_text.jsonl", b"{\"text\": \"apple\", \"label\": \"fruit\"}\n{\"text\": \"\", \"label\": \"fruit\"}\n");
    write("no_column.csv", b"body,label\napple,fruit\n");
    write("latin1.csv", b"text,label\napple,fruit\n\xe9t\xe9,fruit\n");
    write("unseen.jsonl", b"{\"text\": \"apple\", \"label\": \"fruit\"}\n{\"text\": \"car\", \"label\": \"boats\"}\n");
    std::fs::create_dir_all(f.p("broken_model")).unwrap();
    std::fs::copy(f.p("model/config.json"), f.p("broken_model/config.json")).unwrap();
    std::fs::copy(f.p("model/vocab.txt"), f.p("broken_model/vocab.txt")).unwrap();

    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--train".into(), f.s("missing.jsonl")], "missing.jsonl: no such file"),
        (vec!["--train".into(), f.s("malformed.jsonl")], "malformed.jsonl:2: not a JSON object"),
        (vec!["--train".into(), f.s("empty_text.jsonl")], "empty_text.jsonl:2: column \"text\" is empty"),
        (vec!["--train".into(), f.s("no_column.csv")], "no_column.csv:1: no column \"text\""),
        (vec!["--train".into(), f.s("latin1.csv")], "latin1.csv:3: not valid UTF-8"),
        (vec!["--train".into(), f.s("train.jsonl"), "--dev".into(), f.s("unseen.jsonl")], "unseen.jsonl:2: label \"boats\" does not occur"),
        (vec!["--train".into(), f.s("train.jsonl"), "--text-column".into(), "body".into()], "train.jsonl:1: no column \"body\""),
        (vec!["--train".into(), f.s("train.jsonl"), "--peft".into(), "lora".into(), "--lora-targets".into(), "qkv".into()], "\"qkv\" matches no linear layer"),
        (vec!["--train".into(), f.s("train.jsonl"), "--peft".into(), "ia3".into()], "unknown --peft \"ia3\""),
        (vec!["--train".into(), f.s("train.jsonl"), "--peft".into(), "prefix".into(), "--fgm-epsilon".into(), "1".into()], "--fgm-epsilon perturbs the word embeddings"),
        (vec!["--train".into(), f.s("train.jsonl"), "--rdrop-alpha=-1".into()], "--rdrop-alpha must be 0 or more"),
        (vec!["--train".into(), f.s("train.jsonl"), "--dropout".into(), "1.5".into()], "--dropout must be in [0, 1)"),
        (vec!["--train".into(), f.s("train.jsonl"), "--precision".into(), "fp8".into()], "unknown precision \"fp8\": use fp32, bf16 or fp16"),
    ];
    for (extra, want) in cases {
        let out = f.s("never");
        let mut a = vec!["train".to_string(), "--model".into(), f.s("model"), "--output".into(), out.clone(), "--quiet".into()];
        a.extend(extra);
        let o = run(&args(&a));
        assert!(!o.status.success(), "expected failure for {want}");
        assert!(stderr(&o).contains(want), "wanted {want:?} in: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        assert!(!Path::new(&out).exists(), "output folder created despite bad input ({want})");
    }
    let o = run(&["train", "--model", &f.s("broken_model"), "--train", &f.s("train.jsonl"), "--output", &f.s("never")]);
    assert!(!o.status.success() && stderr(&o).contains("broken_model has no weights"), "{}", stderr(&o));
    assert!(!f.p("never").exists());
    let o = run(&["train", "--model", &f.s("nope"), "--train", &f.s("train.jsonl"), "--output", &f.s("never")]);
    assert!(!o.status.success() && stderr(&o).contains("does not exist"), "{}", stderr(&o));
    let o = run(&["eval", "--model", &f.s("model"), "--data", &f.s("dev.jsonl")]);
    assert!(!o.status.success() && stderr(&o).contains("without a classification head"), "{}", stderr(&o));
}

#[cfg(unix)]
#[test]
fn ctrl_c_checkpoints_and_resume_matches_an_uninterrupted_run() {
    let f = Fixture::new();
    let mut long = f.train_args("cut");
    if let Some(e) = long.iter_mut().skip_while(|a| *a != "--epochs").nth(1) {
        *e = "30".into();
    }
    let mut full_args = long.clone();
    *full_args.iter_mut().find(|a| a.ends_with("cut")).unwrap() = f.s("full");
    let o = run(&args(&full_args));
    assert!(o.status.success(), "{}", stderr(&o));

    let child = zhiku().args(args(&long)).stderr(Stdio::piped()).spawn().unwrap();
    let log = f.p("cut/train_log.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&log).map(|s| s.lines().count()).unwrap_or(0) < 5 {
        assert!(t0.elapsed().as_secs() < 60, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(stderr(&o).contains("--resume"));
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f.p("cut/checkpoint/state.json")).unwrap()).unwrap();
    let stopped_at = state["global_step"].as_u64().unwrap();
    assert!(stopped_at < 180, "interrupted too late to test anything: step {stopped_at}");

    let mut resume = long.clone();
    resume.push("--resume".into());
    let o = run(&args(&resume));
    assert!(o.status.success(), "{}", stderr(&o));
    let a = zhiku_train::trainer::load_model_tensors(&f.p("full")).unwrap();
    let b = zhiku_train::trainer::load_model_tensors(&f.p("cut")).unwrap();
    assert_eq!(a.len(), b.len());
    for (name, x) in &a {
        let same = x.flatten_all().unwrap().to_vec1::<f32>().unwrap() == b[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(same, "{name}: resumed model differs from the uninterrupted run (interrupted at step {stopped_at})");
    }
}

fn predict_json(args: &[&str]) -> Vec<serde_json::Value> {
    let o = run(args);
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn peft_methods_train_small_adapters_that_predict_merge_and_ensemble() {
    let f = Fixture::new();
    let full_size = {
        let o = run(&args(&f.train_args("full")));
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::metadata(f.p("full/model.safetensors")).unwrap().len()
    };
    for (method, extra) in [("lora", vec!["--lora-r", "4", "--lora-targets", "query,value,dense"]), ("adapter", vec!["--adapter-size", "8"]), ("prefix", vec!["--prefix-length", "4"])] {
        let out = format!("{method}-out");
        let mut a = f.train_args(&out);
        // Mean pooling: the tiny random encoder's [CLS] state barely depends on the input.
        a.extend(["--peft", method, "--json", "--pooling", "mean"].iter().map(|s| s.to_string()));
        a.extend(extra.iter().map(|s| s.to_string()));
        let o = run(&args(&a));
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let adapter = f.p(&format!("{out}/adapter_model.safetensors"));
        assert!(adapter.is_file() && !f.p(&format!("{out}/model.safetensors")).exists(), "{method}: adapter-only output");
        let size = std::fs::metadata(&adapter).unwrap().len();
        assert!(size < full_size / 2, "{method}: adapter {size} bytes vs full model {full_size}");
        // The saved head is the trained one: the adapter predicts the training labels.
        let o = run(&["eval", "--model", &f.s(&out), "--data", &f.s("dev.jsonl"), "--json"]);
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(m["accuracy"].as_f64().unwrap() >= 0.9, "{method}: {m}");
    }
    // LoRA merges into a plain folder with the same predictions; the others refuse.
    let o = run(&["merge", "--adapter", &f.s("lora-out"), "--output", &f.s("merged")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(f.p("merged/model.safetensors").is_file() && !f.p("merged/adapter_config.json").exists());
    let texts = ["apple lemon grape", "truck bus boat", "mango car"];
    let mut p = vec!["predict", "--json", "--top-k", "2", "--model"];
    let lora = f.s("lora-out");
    let merged = f.s("merged");
    let (a, b) = (predict_json(&[&p[..], &[&lora], &texts].concat()), predict_json(&[&p[..], &[&merged], &texts].concat()));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["labels"], y["labels"]);
        let d = (x["scores"][0]["score"].as_f64().unwrap() - y["scores"][0]["score"].as_f64().unwrap()).abs();
        assert!(d < 1e-5, "merged differs by {d}");
    }
    let o = run(&["merge", "--adapter", &f.s("adapter-out"), "--output", &f.s("nope")]);
    assert!(!o.status.success() && stderr(&o).contains("only LoRA") && !f.p("nope").exists(), "{}", stderr(&o));

    // An ensemble averages its members' probabilities.
    let prefix = f.s("prefix-out");
    p.truncate(4);
    let single = |m: &str| predict_json(&[&p[..], &["--model", m], &texts[..1]].concat());
    let ens = predict_json(&[&p[..], &["--model", &lora, "--model", &prefix], &texts[..1]].concat());
    let score = |v: &[serde_json::Value], label: &str| {
        v[0]["scores"].as_array().unwrap().iter().find(|s| s["label"] == label).map_or(0.0, |s| s["score"].as_f64().unwrap())
    };
    let (sl, sp) = (single(&lora), single(&prefix));
    for label in ["fruit", "vehicle"] {
        let want = (score(&sl, label) + score(&sp, label)) / 2.0;
        assert!((score(&ens, label) - want).abs() < 1e-5, "{label}: ensemble {} vs mean {want}", score(&ens, label));
    }

    // A moved base is named in the error, and --base finds it.
    std::fs::rename(f.p("model"), f.p("moved")).unwrap();
    let o = run(&["predict", "--model", &lora, "apple"]);
    assert!(!o.status.success() && stderr(&o).contains("--base"), "{}", stderr(&o));
    let o = run(&["predict", "--model", &lora, "--base", &f.s("moved"), "apple"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn augmentation_adds_copies_and_rejects_unknown_operations() {
    let f = Fixture::new();
    let mut a = f.train_args("aug");
    a.extend(["--augment", "2", "--augment-ops", "swap,delete", "--augment-rate", "0.3"].iter().map(|s| s.to_string()));
    let epochs = a.iter().position(|s| s == "--epochs").unwrap();
    a[epochs + 1] = "1".into();
    let o = run(&args(&a));
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f.p("aug/metrics.json")).unwrap()).unwrap();
    let n = m["augmented_examples"].as_u64().unwrap();
    assert!(n > 48 && n <= 96, "2 copies of 48 examples, less exact repeats: {n}");
    let split = std::fs::read_to_string(f.p("train.jsonl")).unwrap();
    assert_eq!(split.lines().count(), 48, "the training file is not touched");

    let mut a = f.train_args("bad");
    a.extend(["--augment", "1", "--augment-ops", "shuffle"].iter().map(|s| s.to_string()));
    let o = run(&args(&a));
    assert!(!o.status.success() && stderr(&o).contains("shuffle") && !f.p("bad").exists(), "{}", stderr(&o));
}

#[test]
fn epoch_checkpoints_average_into_a_working_model() {
    let f = Fixture::new();
    let mut a = f.train_args("run");
    a.push("--save-every-epoch".into());
    let o = run(&args(&a));
    assert!(o.status.success(), "{}", stderr(&o));
    for e in 1..=4 {
        assert!(f.p(&format!("run/epoch-{e}/model.safetensors")).is_file(), "epoch {e}");
    }
    let o = run(&["average", "--model", &f.s("run/epoch-3"), "--model", &f.s("run/epoch-4"), "--output", &f.s("avg")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let load = |d: &str| zhiku_train::trainer::load_model_tensors(&f.p(d)).unwrap();
    let (x, y, m) = (load("run/epoch-3"), load("run/epoch-4"), load("avg"));
    let name = "bert.encoder.layer.0.attention.self.query.weight";
    let want = ((&x[name] + &y[name]).unwrap() / 2.0).unwrap();
    let d = (&m[name] - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-6, "{d}");
    let o = run(&["eval", "--model", &f.s("avg"), "--data", &f.s("dev.jsonl"), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Folders that do not match are refused, and nothing is written.
    let o = run(&["average", "--model", &f.s("run/epoch-3"), "--model", &f.s("model"), "--output", &f.s("bad")]);
    assert!(!o.status.success() && !f.p("bad").exists(), "{}", stderr(&o));
}

#[test]
fn setfit_trains_a_plain_classifier_folder() {
    let f = Fixture::new();
    let mut a = f.train_args("setfit");
    a.extend(["--setfit", "--setfit-iterations", "4", "--json"].iter().map(|s| s.to_string()));
    let lr = a.iter().position(|s| s == "--lr").unwrap();
    a[lr + 1] = "1e-3".into();
    let o = run(&args(&a));
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["steps"], 2 * 4 * 48 / 8, "2 pairs per example and round, 8 pairs a step");
    assert!(summary["dev"]["accuracy"].as_f64().unwrap() >= 0.9, "{summary}");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f.p("setfit/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["zhiku_pooling"], "mean");
    let o = run(&["predict", "--model", &f.s("setfit"), "apple lemon grape", "truck bus boat"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.starts_with("fruit") && out.lines().nth(1).unwrap().starts_with("vehicle"), "{out}");
}

#[test]
fn bench_reports_speeds_against_the_measured_fma_peak() {
    let f = Fixture::new();
    let model = f.s("model");
    let o = run(&["bench", "--model", &model, "--seq", "16", "--train-batch", "2", "--infer-batch", "4", "--steps", "1", "--batches", "1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("bench --json prints one JSON object");
    let z = &v["zhiku"];
    let peak = z["peak_gflops"].as_f64().expect("the CPU's FMA peak is measured");
    assert!(peak > 0.1, "peak {peak}");
    assert!(z["infer"]["seq_per_s"].as_f64().unwrap() > 0.0 && z["train"]["median_s"].as_f64().unwrap() > 0.0, "{v}");
    // Nothing runs faster than the register-only FMA loop (generous margin for a noisy machine).
    assert!(z["gemm_2048_gflops"].as_f64().unwrap() < 1.5 * peak, "{v}");
    let o = run(&["bench", "--model", &model, "--peak-gflops", "0"]);
    assert!(!o.status.success() && stderr(&o).contains("--peak-gflops must be a positive number"), "{}", stderr(&o));
}
