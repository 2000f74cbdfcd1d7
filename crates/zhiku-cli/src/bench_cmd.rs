use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use zhiku_models::ModelFolder;
use zhiku_train::bench;

#[derive(Args, Debug)]
#[command(after_help = "Runs a full training step (forward, backward, AdamW) at --train-batch x --seq tokens and\n\
batched inference at --infer-batch x --seq, on synthetic full-length sequences, and prints medians,\n\
achieved GFLOP/s and peak memory. With --reference, also runs that command (for example\n\
`python3 bench/torch_bench.py --model DIR`), which must print one JSON object with\n\
train_s_per_step and infer_seq_per_s, and prints zhiku's speed-up over it.")]
pub struct BenchArgs {
    /// Encoder folder (default: .cache/models/all-MiniLM-L6-v2, as fetched by scripts/fetch-models.sh).
    #[arg(long, default_value = ".cache/models/all-MiniLM-L6-v2")]
    model: PathBuf,
    #[arg(long, default_value_t = 16)]
    train_batch: usize,
    #[arg(long, default_value_t = 32)]
    infer_batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed training steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Timed inference batches (after one warm-up batch).
    #[arg(long, default_value_t = 5)]
    batches: usize,
    /// Skip the training measurement.
    #[arg(long)]
    no_train: bool,
    /// Skip the inference measurement.
    #[arg(long)]
    no_infer: bool,
    /// Also measure int8 inference (quantised linear layers) in the same run, with its speed-up.
    #[arg(long)]
    int8: bool,
    /// Compute precision: fp32, or bf16 / fp16 activations over f32 master weights (for GPUs;
    /// on the CPU half precision is slower than fp32).
    #[arg(long, default_value = "fp32")]
    precision: zhiku_models::Precision,
    /// A reference benchmark command to run in the same session (see below).
    #[arg(long)]
    reference: Option<String>,
    /// Peak FMA throughput of this machine in GFLOP/s, to print the share of peak reached
    /// (default on the CPU: measured at start-up with register-only FMA loops on every core).
    #[arg(long)]
    peak_gflops: Option<f64>,
    #[arg(long)]
    json: bool,
    /// Measure text generation instead, with this GGUF model: prompt processing
    /// (--prompt-tokens), decoding at batch 1 and aggregate decoding with --streams
    /// concurrent sequences, and the weight bytes read per second against the memory's.
    #[arg(long, value_name = "MODEL.gguf")]
    generate: Option<PathBuf>,
    /// Prompt length for --generate.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Concurrent sequences for --generate's decoding measurements.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    streams: Vec<usize>,
    /// Tokens each sequence decodes in --generate's measurements.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// --generate: read the GGUF file into memory instead of mapping it.
    #[arg(long)]
    no_mmap: bool,
}

fn run_generate(model: &std::path::Path, a: &BenchArgs) -> Result<i32> {
    if a.prompt_tokens == 0 || a.decode_tokens == 0 || a.streams.is_empty() || a.streams.contains(&0) {
        bail!("--prompt-tokens, --decode-tokens and every --streams value must be at least 1")
    }
    let lm = zhiku_infer::LanguageModel::open_with(model, &zhiku_infer::OpenOptions { mmap: !a.no_mmap, ..Default::default() })?;
    let c = lm.model.config();
    let threads = rayon::current_num_threads();
    eprintln!(
        "model {} ({}, {} layers, hidden {}, file {:.0} MB), {threads} threads, engine {}",
        model.display(), c.arch.name(), c.n_layers, c.hidden, lm.file_size as f64 / 1e6, lm.model.engine()
    );
    let r = zhiku_infer::bench::run(&lm, a.prompt_tokens, &a.streams, a.decode_tokens, a.batches.max(1))?;
    // The reference runs after ours, alone, so the two never share the cores.
    let reference = match &a.reference {
        Some(cmd) => Some(run_reference(cmd)?),
        None => None,
    };
    let single = r.decode.iter().find(|d| d.0 == 1).map(|d| d.1);
    let ref_of = |k: &str| reference.as_ref().and_then(|v| v.get(k)).and_then(|v| v.as_f64());
    let prefill_ratio = ref_of("prefill_tokens_per_s").map(|t| r.prefill_tokens_per_s / t);
    let decode_ratio = match (single, ref_of("decode_tokens_per_s")) {
        (Some(o), Some(t)) => Some(o / t),
        _ => None,
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"generate": r, "engine": lm.model.engine(), "threads": threads, "reference": reference, "prefill_speedup": prefill_ratio, "decode_speedup": decode_ratio}))?
        );
        return Ok(0);
    }
    println!("prompt processing ({} tokens): {:>7.1} tokens/s  ({:.1} GFLOP/s)", r.prompt_tokens, r.prefill_tokens_per_s, r.prefill_gflops);
    for (s, tps) in &r.decode {
        let rel = single.map(|b| format!("  ({:.2}x batch 1)", tps / b)).unwrap_or_default();
        println!("decoding, {s:>2} stream{}:          {:>7.1} tokens/s{rel}", if *s == 1 { " " } else { "s" }, tps);
    }
    println!(
        "weights read per token: {:.0} MB; at batch 1 that is {:.1} GB/s of the memory's measured {:.1} GB/s ({:.0}%)",
        r.weight_bytes_per_token as f64 / 1e6, r.decode_gb_per_s, r.memory_gb_per_s, 100.0 * r.decode_gb_per_s / r.memory_gb_per_s
    );
    if let Some(m) = r.rss_mib {
        println!("resident memory after the runs: {m:.0} MiB (the mapped file is {:.0} MiB; KV caches are freed)", r.file_mib);
    }
    if let Some(v) = &reference {
        println!("reference: {}", serde_json::to_string(v)?);
        if let (Some(x), Some(t)) = (prefill_ratio, ref_of("prefill_tokens_per_s")) {
            println!("prompt processing vs reference: {x:.2}x ({:.1} vs {t:.1} tokens/s)", r.prefill_tokens_per_s);
        }
        if let (Some(x), Some(t)) = (decode_ratio, ref_of("decode_tokens_per_s")) {
            println!("decoding at batch 1 vs reference: {x:.2}x ({:.1} vs {t:.1} tokens/s)", single.unwrap_or(0.0));
        }
    }
    Ok(0)
}

pub fn run(a: BenchArgs) -> Result<i32> {
    if let Some(m) = &a.generate {
        return run_generate(m, &a);
    }
    let folder = ModelFolder::open(&a.model)?;
    let device = zhiku_models::default_device();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    eprintln!("model {} ({} layers, hidden {}), device {:?}, {threads} threads, precision {}", a.model.display(), folder.config.num_hidden_layers, folder.config.hidden_size, device, a.precision);
    let peak = match a.peak_gflops {
        Some(p) if !(p.is_finite() && p > 0.0) => bail!("--peak-gflops must be a positive number, got {p}"),
        Some(p) => Some(p),
        None if device.is_cpu() => Some(bench::fma_peak_gflops(threads)),
        None => None,
    };
    let share = |gflops: f64| match peak {
        Some(p) => format!(" ({:.0}% of {p:.0} peak)", 100.0 * gflops / p),
        None => String::new(),
    };
    let infer = if a.no_infer { None } else { Some(bench::inference(&folder, a.infer_batch, a.seq, a.batches, &device, false, a.precision)?) };
    let infer_int8 = if a.int8 && !a.no_infer { Some(bench::inference(&folder, a.infer_batch, a.seq, a.batches, &device, true, a.precision)?) } else { None };
    let train = if a.no_train { None } else { Some(bench::train_step(&folder, a.train_batch, a.seq, a.steps, &device, a.precision)?) };
    let peak_rss = bench::peak_rss_mib();
    let ceiling = bench::gemm_ceiling(&device)?;
    let reference = match &a.reference {
        Some(cmd) => Some(run_reference(cmd)?),
        None => None,
    };
    let mut result = json!({"precision": a.precision, "device": format!("{device:?}"), "zhiku": {"train": train, "infer": infer, "infer_int8": infer_int8, "peak_rss_mib": peak_rss, "gemm_2048_gflops": ceiling, "peak_gflops": peak}, "reference": reference});
    if let (Some(t), Some(r)) = (&train, reference.as_ref().and_then(|r| r.get("train_s_per_step")).and_then(|v| v.as_f64())) {
        result["train_speedup"] = json!(r / t.median_s);
    }
    if let (Some(i), Some(r)) = (&infer, reference.as_ref().and_then(|r| r.get("infer_seq_per_s")).and_then(|v| v.as_f64())) {
        result["infer_speedup"] = json!(i.seq_per_s / r);
        for (engine, key) in [("torch", "torch_infer_seq_per_s"), ("ort", "ort_infer_seq_per_s")] {
            if let Some(r) = reference.as_ref().and_then(|r| r.get(key)).and_then(|v| v.as_f64()) {
                result[format!("infer_speedup_{engine}")] = json!(i.seq_per_s / r);
            }
        }
    }
    if let (Some(f), Some(q)) = (&infer, &infer_int8) {
        result["int8_speedup"] = json!(q.seq_per_s / f.seq_per_s);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(0);
    }
    if let Some(i) = &infer {
        println!(
            "inference  {}x{}: {:>7.1} seq/s   {:.2} GFLOP/seq  {:>6.1} GFLOP/s{}",
            i.batch, i.seq, i.seq_per_s, i.gflop_per_seq, i.gflops, share(i.gflops)
        );
    }
    if let (Some(f), Some(q)) = (&infer, &infer_int8) {
        println!("inference  {}x{} int8: {:>7.1} seq/s   {:.2}x the f32 speed (same run)", q.batch, q.seq, q.seq_per_s, q.seq_per_s / f.seq_per_s);
    }
    if let Some(t) = &train {
        println!(
            "train step {}x{}: {:>7.3} s/step (forward {:.3}, backward {:.3}, optimizer {:.3})  {:.0} GFLOP/step  {:.1} GFLOP/s{}",
            t.batch, t.seq, t.median_s, t.forward_s, t.backward_s, t.optimizer_s, t.gflop_per_step, t.gflops, share(t.gflops)
        );
    }
    if let Some(m) = peak_rss {
        println!("peak memory (RSS): {m:.0} MiB");
    }
    println!("GEMM ceiling (2048^3 f32 matmul): {ceiling:.1} GFLOP/s{}", share(ceiling));
    if let Some(r) = &reference {
        println!("reference: {}", serde_json::to_string(r)?);
        if let Some(s) = result.get("train_speedup").and_then(|v| v.as_f64()) {
            println!("training speed vs reference: {s:.2}x ({})", if s >= 1.0 { "faster" } else { "slower" });
        }
        if let Some(s) = result.get("infer_speedup").and_then(|v| v.as_f64()) {
            println!("inference speed vs reference: {s:.2}x ({}; against the faster of its engines)", if s >= 1.0 { "faster" } else { "slower" });
        }
        for (engine, name) in [("torch", "PyTorch"), ("ort", "ONNX Runtime")] {
            if let Some(s) = result.get(format!("infer_speedup_{engine}")).and_then(|v| v.as_f64()) {
                println!("  vs {name}: {s:.2}x");
            }
        }
        if let (Some(ours), Some(theirs)) = (peak_rss, r.get("peak_rss_mib").and_then(|v| v.as_f64())) {
            println!("peak memory: {ours:.0} MiB vs reference {theirs:.0} MiB ({:.2}x)", ours / theirs);
        }
    }
    Ok(0)
}

/// Runs the reference command through the shell and parses the last JSON line it prints.
fn run_reference(cmd: &str) -> Result<serde_json::Value> {
    eprintln!("running reference: {cmd}");
    let out = std::process::Command::new("sh").arg("-c").arg(cmd).output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("reference command failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr))
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).context("reference printed no JSON object")?;
    serde_json::from_str(line).context("reference output is not JSON")
}
