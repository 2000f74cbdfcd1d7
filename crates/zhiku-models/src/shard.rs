//! Data parallelism across CPU cores. A batch is cut into one shard of rows per core, and each
//! shard runs the whole model (and, in training, its backward pass) on a thread of its own with
//! single-threaded kernels.
//!
//! Why: splitting every matrix product across the cores costs each product a barrier and 20-25%
//! of the cores' throughput on this class of machine, and the element-wise work between products
//! is small enough that splitting it does not pay at all; whole shards keep every core busy with
//! no synchronisation until the shards' results are combined. Rows never interact inside an
//! encoder, so a shard's outputs are exactly the rows of the whole batch's outputs, and dropout
//! masks are indexed by row ([`crate::DropoutRng::for_rows`]) so training draws the same masks
//! however the batch is cut.

use crate::tokenizer::EncodedBatch;
use anyhow::Result;
use std::ops::Range;
use std::sync::OnceLock;

/// One single-threaded pool per core of the global pool (at least two, so that sharding can be
/// tested anywhere). A shard runs inside one of them, so `rayon::current_num_threads()` is 1
/// there and every kernel runs without splitting its work.
fn pools() -> &'static [rayon::ThreadPool] {
    static POOLS: OnceLock<Vec<rayon::ThreadPool>> = OnceLock::new();
    POOLS.get_or_init(|| {
        (0..rayon::current_num_threads().max(2))
            .map(|i| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| format!("zhiku-shard-{i}"))
                    .start_handler(|_| crate::float_env::flush_denormals_on_this_thread())
                    .build()
                    .expect("cannot start a shard thread")
            })
            .collect()
    })
}

/// How many shards a batch of `rows` rows on `device` is cut into: one per core of the current
/// pool, at most one per row; 1 (no sharding) on GPUs, inside a shard, or when the environment
/// sets `ZHIKU_SHARDS=1`.
pub fn shard_count(rows: usize, device: &candle_core::Device) -> usize {
    if !device.is_cpu() {
        return 1;
    }
    static LIMIT: OnceLock<Option<usize>> = OnceLock::new();
    let limit = LIMIT.get_or_init(|| std::env::var("ZHIKU_SHARDS").ok().and_then(|v| v.parse::<usize>().ok()));
    let cores = rayon::current_num_threads();
    limit.unwrap_or(cores).min(cores).min(pools().len()).min(rows).max(1)
}

/// `rows` cut into `n` contiguous ranges whose lengths differ by at most one.
pub fn split_rows(rows: usize, n: usize) -> Vec<Range<usize>> {
    let n = n.clamp(1, rows.max(1));
    let (base, extra) = (rows / n, rows % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// Runs `f(0)`, …, `f(n - 1)` concurrently, each on its own single-threaded pool, and returns
/// their results in order (the first error if any failed). `n == 1` runs `f(0)` right here;
/// more shards than shard threads run in turns.
pub fn run<T: Send>(n: usize, f: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    if n <= 1 {
        return Ok(vec![f(0)?]);
    }
    let pools = pools();
    let mut out = Vec::with_capacity(n);
    for first in (0..n).step_by(pools.len()) {
        out.extend(run_turn(&pools[..pools.len().min(n - first)], first, &f)?);
    }
    Ok(out)
}

/// Shards `first..first + pools.len()`, one per pool, concurrently.
fn run_turn<T: Send>(pools: &[rayon::ThreadPool], first: usize, f: &(impl Fn(usize) -> Result<T> + Sync)) -> Result<Vec<T>> {
    std::thread::scope(|scope| {
        // The calling thread only waits; each shard's work happens on its pool's thread.
        let handles: Vec<_> = pools.iter().enumerate().map(|(i, pool)| scope.spawn(move || pool.install(|| f(first + i)))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    })
}

impl EncodedBatch {
    /// The rows `range` of this batch (same padded length).
    pub fn rows(&self, range: Range<usize>) -> Result<EncodedBatch> {
        let (start, len) = (range.start, range.len());
        Ok(EncodedBatch {
            input_ids: self.input_ids.narrow(0, start, len)?,
            token_type_ids: self.token_type_ids.narrow(0, start, len)?,
            attention_mask: self.attention_mask.narrow(0, start, len)?,
            lengths: self.lengths[range].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rows_covers_every_row_once() {
        for rows in 1..20 {
            for n in 1..5 {
                let parts = split_rows(rows, n);
                assert_eq!(parts.len(), n.min(rows));
                assert_eq!(parts.first().unwrap().start, 0);
                assert_eq!(parts.last().unwrap().end, rows);
                assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
                let lens: Vec<usize> = parts.iter().map(|r| r.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
    }

    #[test]
    fn run_returns_results_in_order_and_errors() {
        let n = pools().len() + 1; // one more than the threads: the last runs in a second turn
        let got = run(n, |i| Ok(i * 10)).unwrap();
        assert_eq!(got, (0..n).map(|i| i * 10).collect::<Vec<_>>());
        // Inside a shard the kernels see one thread.
        let threads = run(n, |_| Ok(rayon::current_num_threads())).unwrap();
        assert!(threads.iter().all(|&t| t == 1));
        assert!(run(n, |i| if i + 1 == n { anyhow::bail!("shard {i} failed") } else { Ok(i) }).is_err());
    }
}
