//! Dynamic batching: one worker thread per model drains a bounded queue of requests, packs the
//! texts of several requests into forward passes under a token budget, and answers each request
//! on its own channel. A full queue is refused at once (the caller answers 503) rather than
//! letting latency grow without bound.

use crate::metrics::Metrics;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use zhiku_models::{TextModel, TokenizedText};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Class probabilities per text.
    Classify,
    /// Sentence vectors per text.
    Embed { normalize: bool },
}

pub type Reply = Result<Vec<Vec<f32>>, String>;

pub struct Job {
    pub op: Op,
    pub items: Vec<TokenizedText>,
    pub reply: oneshot::Sender<Reply>,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most padded tokens (texts × longest text) in one forward pass.
    pub max_batch_tokens: usize,
    /// How long the worker waits for more requests to fill a batch.
    pub max_wait: Duration,
    /// Requests waiting at most; more are refused.
    pub queue_size: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_batch_tokens: 2048, max_wait: Duration::from_millis(1), queue_size: 256 }
    }
}

/// The queue in front of one model's worker; dropping it lets the worker finish what is queued
/// and exit.
pub struct Batcher {
    tx: Sender<Job>,
}

pub enum Submit {
    Queued(oneshot::Receiver<Reply>),
    Full,
}

impl Batcher {
    pub fn start(name: String, model: Arc<TextModel>, config: BatchConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = bounded::<Job>(config.queue_size.max(1));
        std::thread::Builder::new()
            .name(format!("zhiku-batch-{name}"))
            .spawn(move || {
                zhiku_models::float_env::flush_denormals_on_this_thread();
                worker(&name, &model, &rx, config, &metrics)
            })
            .expect("spawning a thread");
        Self { tx }
    }

    pub fn submit(&self, op: Op, items: Vec<TokenizedText>) -> Submit {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job { op, items, reply }) {
            Ok(()) => Submit::Queued(rx),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Submit::Full,
        }
    }

    /// Requests waiting in the queue now.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }
}

fn cost(job: &Job) -> usize {
    job.items.iter().map(|i| i.ids.len()).sum()
}

fn worker(name: &str, model: &TextModel, rx: &Receiver<Job>, config: BatchConfig, metrics: &Metrics) {
    // Whether requests have been overlapping: only then is waiting for company worth it. A lone
    // client (one request at a time) would otherwise pay max_wait on every request for nothing.
    let mut busy = false;
    while let Ok(first) = rx.recv() {
        let mut tokens = cost(&first);
        let mut jobs = vec![first];
        let deadline = Instant::now() + if busy { config.max_wait } else { Duration::ZERO };
        while tokens < config.max_batch_tokens {
            // Take whatever is already queued; wait (up to max_wait) only for the rest.
            let next = match rx.try_recv() {
                Ok(j) => Ok(j),
                Err(_) => rx.recv_deadline(deadline),
            };
            match next {
                Ok(j) => {
                    tokens += cost(&j);
                    jobs.push(j);
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        busy = jobs.len() > 1 || !rx.is_empty();
        run_jobs(name, model, jobs, config, metrics);
    }
}

/// Runs every text of `jobs` (grouped by operation, sorted by length, cut into forward passes
/// under the token budget) and answers each job.
fn run_jobs(name: &str, model: &TextModel, jobs: Vec<Job>, config: BatchConfig, metrics: &Metrics) {
    let mut results: Vec<Vec<Option<Vec<f32>>>> = jobs.iter().map(|j| vec![None; j.items.len()]).collect();
    let mut failures: Vec<Option<String>> = vec![None; jobs.len()];
    for op_kind in [Op::Classify, Op::Embed { normalize: false }] {
        let same = |op: Op| matches!((op, op_kind), (Op::Classify, Op::Classify) | (Op::Embed { .. }, Op::Embed { .. }));
        let mut refs: Vec<(usize, usize)> = jobs
            .iter()
            .enumerate()
            .filter(|(_, j)| same(j.op))
            .flat_map(|(ji, j)| (0..j.items.len()).map(move |ii| (ji, ii)))
            .collect();
        refs.sort_by_key(|&(ji, ii)| jobs[ji].items[ii].ids.len());
        let mut start = 0;
        while start < refs.len() {
            // Longest-last order: the padded size of [start, end) is (end - start) × len(end - 1).
            let mut end = start + 1;
            while end < refs.len() && (end + 1 - start) * jobs[refs[end].0].items[refs[end].1].ids.len() <= config.max_batch_tokens {
                end += 1;
            }
            let chunk = &refs[start..end];
            let items: Vec<&TokenizedText> = chunk.iter().map(|&(ji, ii)| &jobs[ji].items[ii]).collect();
            let padded = items.len() * items.last().map_or(0, |i| i.ids.len());
            metrics.observe_batch(name, items.len(), padded);
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match op_kind {
                Op::Classify => model.classify(&items),
                Op::Embed { .. } => model.embed(&items, false),
            }));
            match out {
                Ok(Ok(rows)) => {
                    for (&(ji, ii), row) in chunk.iter().zip(rows) {
                        results[ji][ii] = Some(row);
                    }
                }
                Ok(Err(e)) => chunk.iter().for_each(|&(ji, _)| failures[ji] = Some(format!("{e:#}"))),
                Err(_) => chunk.iter().for_each(|&(ji, _)| failures[ji] = Some("the model failed on this input".into())),
            }
            start = end;
        }
    }
    for ((job, rows), failure) in jobs.into_iter().zip(results).zip(failures) {
        let reply = match failure {
            Some(e) => Err(e),
            None => {
                let mut rows: Vec<Vec<f32>> = rows.into_iter().map(|r| r.unwrap_or_default()).collect();
                if let Op::Embed { normalize: true } = job.op {
                    rows.iter_mut().for_each(|r| zhiku_models::text_model::normalize_l2(r));
                }
                Ok(rows)
            }
        };
        // The client may have gone away; nothing to do then.
        let _ = job.reply.send(reply);
    }
}
