//! `zhiku generate` and `zhiku chat`: text from a generative model (GGUF), streamed to the
//! terminal.

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use zhiku_infer::sampling::SamplingParams;
use zhiku_infer::template::Message;
use zhiku_infer::{Completion, LanguageModel, Prompt, Request};

/// The name `zhiku generate` and `zhiku chat` give the one adapter they load.
const ADAPTER: &str = "adapter";

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Model: a GGUF file or Hugging Face folder (qwen2, llama or gemma3 architecture); with
    /// --adapter, the base it was trained on [default: the base the adapter records].
    #[arg(long, short)]
    pub model: Option<PathBuf>,
    /// A LoRA adapter folder (PEFT's layout, from `zhiku train --task sft` or Python PEFT) to
    /// run over the base model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Randomness: 0 is greedy (always the most likely token), up to 2.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Sample among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Sample among the most likely tokens that together have this probability (1 = all).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise tokens seen in the last 64 tokens (1 = off; 1.1 is a common choice).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Subtract from the logits of tokens already generated (-2..2, OpenAI's presence penalty).
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Subtract per occurrence of tokens already generated (-2..2).
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Random seed: the same seed and settings give the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when this text appears (repeatable); it is not included in the output.
    #[arg(long)]
    pub stop: Vec<String>,
    /// System message for the chat template.
    #[arg(long)]
    pub system: Option<String>,
    /// Drop the oldest prompt tokens when the prompt does not fit the context (default: error).
    #[arg(long)]
    pub truncate: bool,
    /// Read a GGUF file into memory instead of mapping it (more memory, and on some machines
    /// faster decoding; see docs/benchmarks.md).
    #[arg(long)]
    pub no_mmap: bool,
    /// Products in f32 over the dequantised weights, as transformers computes them (slower; for
    /// checking against the reference, e.g. scripts/check_sft_peft_interop.py).
    #[arg(long)]
    pub exact: bool,
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        }
    }

    fn request(&self, prompt: Prompt) -> Request {
        let adapter = self.adapter.as_ref().map(|_| ADAPTER.to_string());
        Request { prompt, params: self.params(), max_tokens: self.max_tokens, stop: self.stop.clone(), truncate: self.truncate, adapter }
    }

    fn load(&self) -> Result<LanguageModel> {
        self.params().validate()?;
        if self.max_tokens == 0 {
            bail!("--max-tokens must be at least 1")
        }
        if self.model.is_none() && self.adapter.is_none() {
            bail!("give the model with --model FILE (or an --adapter that records its base)")
        }
        let adapters: Vec<(String, PathBuf)> = self.adapter.iter().map(|d| (ADAPTER.to_string(), d.clone())).collect();
        let mut lm = LanguageModel::open_with_adapters(self.model.as_deref(), &adapters, !self.no_mmap)?;
        if self.exact {
            lm.model.set_exact(true);
        }
        Ok(lm)
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub s: SamplingArgs,
    /// The prompt (read from standard input when absent and --file is not given).
    pub prompt: Option<String>,
    /// Continue the prompt as raw text instead of applying the model's chat template.
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object (text, token counts, speeds) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// JSONL file of inputs, one {"prompt": ...} or {"messages": [{"role", "content"}]} per
    /// line, generated together as one batch; prints one JSON line per input, in order.
    #[arg(long, conflicts_with = "prompt")]
    pub file: Option<PathBuf>,
}

pub fn run_generate(a: GenerateArgs) -> Result<i32> {
    if let Some(path) = &a.file {
        let inputs = read_jsonl_prompts(path, a.raw, a.s.system.as_deref())?;
        let lm = a.s.load()?;
        let requests: Vec<Request> = inputs.into_iter().map(|p| a.s.request(p)).collect();
        let out = lm.generate(&requests, |_, _| {})?;
        let stdout = std::io::stdout();
        let mut w = stdout.lock();
        for c in &out {
            writeln!(w, "{}", completion_json(c))?;
        }
        return Ok(0);
    }
    let text = match &a.prompt {
        Some(p) => p.clone(),
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("reading the prompt from standard input (end with Ctrl-D)");
            }
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read the prompt from standard input")?;
            s.trim_end_matches('\n').to_string()
        }
    };
    if text.trim().is_empty() {
        bail!("the prompt is empty")
    }
    let prompt = user_prompt(&text, a.raw, a.s.system.as_deref());
    let lm = a.s.load()?;
    let request = a.s.request(prompt);
    let stdout = std::io::stdout();
    let json_out = a.json;
    let mut out = lm.generate(std::slice::from_ref(&request), |_, piece| {
        if !json_out {
            let mut w = stdout.lock();
            let _ = w.write_all(piece.as_bytes());
            let _ = w.flush();
        }
    })?;
    let c = out.remove(0);
    if a.json {
        println!("{}", completion_json(&c));
    } else {
        println!();
        eprintln!("{}", speed_line(&c));
    }
    Ok(0)
}

fn speed_line(c: &Completion) -> String {
    format!(
        "[{} prompt tokens at {:.1} tokens/s; {} generated at {:.1} tokens/s; finish: {}{}]",
        c.prompt_tokens,
        c.prefill_tokens_per_s(),
        c.completion_tokens,
        c.decode_tokens_per_s(),
        serde_json::to_value(c.finish_reason).unwrap_or_default().as_str().unwrap_or(""),
        if c.truncated_tokens > 0 { format!("; {} oldest prompt tokens dropped", c.truncated_tokens) } else { String::new() }
    )
}

fn completion_json(c: &Completion) -> Value {
    json!({
        "text": c.text,
        "token_ids": c.token_ids,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "finish_reason": c.finish_reason,
        "truncated_tokens": c.truncated_tokens,
        "prefill_tokens_per_s": round2(c.prefill_tokens_per_s()),
        "decode_tokens_per_s": round2(c.decode_tokens_per_s()),
        "prefill_seconds": c.prefill_seconds,
        "decode_seconds": c.decode_seconds,
    })
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A user's text as raw text to continue, or as a user turn after the optional system message.
fn user_prompt(text: &str, raw: bool, system: Option<&str>) -> Prompt {
    if raw {
        return Prompt::Text(text.to_string());
    }
    let mut messages: Vec<Message> = system.map(|s| Message::new("system", s)).into_iter().collect();
    messages.push(Message::new("user", text));
    Prompt::Chat(messages)
}

/// Reads `{"prompt": "..."}` / `{"messages": [...]}` lines; errors name the file and line.
fn read_jsonl_prompts(path: &std::path::Path, raw: bool, system: Option<&str>) -> Result<Vec<Prompt>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        let line = line.with_context(|| format!("{}: not UTF-8 text", at()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| anyhow!("{}: not a JSON object: {e}", at()))?;
        let prompt = if let Some(p) = v.get("prompt") {
            let p = p.as_str().ok_or_else(|| anyhow!("{}: \"prompt\" must be a string", at()))?;
            if p.trim().is_empty() {
                bail!("{}: the prompt is empty", at())
            }
            user_prompt(p, raw, system)
        } else if let Some(m) = v.get("messages") {
            let m: Vec<Message> = serde_json::from_value(m.clone()).map_err(|e| anyhow!("{}: \"messages\" must be a list of {{\"role\", \"content\"}}: {e}", at()))?;
            if m.is_empty() {
                bail!("{}: \"messages\" is empty", at())
            }
            Prompt::Chat(m)
        } else {
            bail!("{}: expected a \"prompt\" or \"messages\" field", at())
        };
        out.push(prompt);
    }
    if out.is_empty() {
        bail!("{} has no inputs", path.display())
    }
    Ok(out)
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub s: SamplingArgs,
}

/// An interactive conversation: each line is a user turn; the history is kept (oldest turns
/// dropped when it no longer fits). `/reset` starts over, `/exit` or Ctrl-D quits.
pub fn run_chat(a: ChatArgs) -> Result<i32> {
    let lm = a.s.load()?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("chatting with {} — /reset to start over, /exit or Ctrl-D to quit", lm.name);
    }
    let mut history: Vec<Message> = Vec::new();
    if let Some(s) = &a.s.system {
        history.push(Message::new("system", s));
    }
    let system_turns = history.len();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut turn = 0u64;
    loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read standard input")?;
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.truncate(system_turns);
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", line));
        // Drop the oldest exchanges while the conversation does not fit.
        let ctx = lm.model.config().context_length;
        while history.len() > system_turns + 1 && lm.prompt_ids(&Prompt::Chat(history.clone()))?.len() + a.s.max_tokens > ctx {
            history.drain(system_turns..system_turns + 2.min(history.len() - system_turns - 1));
        }
        let mut request = a.s.request(Prompt::Chat(history.clone()));
        // A different seed each turn, still reproducible from --seed.
        request.params.seed = a.s.seed.wrapping_add(turn);
        turn += 1;
        let stdout = std::io::stdout();
        let out = lm.generate(std::slice::from_ref(&request), |_, piece| {
            let mut w = stdout.lock();
            let _ = w.write_all(piece.as_bytes());
            let _ = w.flush();
        });
        match out {
            Ok(mut c) => {
                let c = c.remove(0);
                println!();
                if interactive {
                    eprintln!("{}", speed_line(&c));
                }
                history.push(Message::new("assistant", &c.text));
            }
            Err(e) => {
                history.pop();
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(0)
}
