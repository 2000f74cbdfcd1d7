//! Retrieval training: a bi-encoder fine-tuned on (query, positive passage) pairs with in-batch
//! negatives, sentence-transformers' MultipleNegativesRankingLoss: each query's positive must
//! outscore every other passage of the batch (the other queries' positives and any hard
//! negatives) under cosine similarity times a scale. Hard negatives can be mined with BM25.
//! Passages equal to a query's own positive are masked out of its negatives (repeated answers
//! are common in FAQ data; ST avoids them with a no-duplicates batch sampler instead).
//!
//! The output is a sentence-transformers folder (`modules.json`, `1_Pooling/`, the encoder in
//! Hugging Face layout), which `SentenceTransformer(DIR)` loads and zhiku uses as an encoder.
//!
//! Evaluation ranks in memory: a pairs file ranks every distinct passage of the file for each
//! query (recall@1/5/10, MRR; a hit is any passage equal to the query's own), a grouped file
//! (`{"context" or "query", "response", "label"}` rows, consecutive rows of one context forming
//! a group, as in response selection) ranks each group's candidates (R@1, R@2, R@5, MRR).

use crate::loss::cross_entropy_sum;
use crate::sharded::sum_grads;
use crate::train_loop::{DevScores, FinalScores, TrainTask};
use crate::state::TrainConfig;
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var, D};
use jieba_rs::Jieba;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use zhiku_models::bert::{cls_pool, mean_pool, ENCODER_PREFIX};
use zhiku_models::{shard, BertModel, DropoutRng, EmbeddingPooling, ModelFolder, Params, TextTokenizer, TokenizedText, WeightSource};

#[derive(Debug, Clone)]
pub struct Pair {
    pub query: String,
    pub positive: String,
    pub negatives: Vec<String>,
}

/// One query of a grouped file and its candidates, with which are right.
#[derive(Debug, Clone)]
pub struct Group {
    pub query: String,
    pub candidates: Vec<String>,
    pub relevant: Vec<bool>,
}

#[derive(Debug, Clone)]
pub enum EvalSet {
    Pairs(Vec<Pair>),
    Groups(Vec<Group>),
}

impl EvalSet {
    pub fn len(&self) -> usize {
        match self {
            Self::Pairs(p) => p.len(),
            Self::Groups(g) => g.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn first_str(row: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| row.get(*k).and_then(Value::as_str).map(str::to_string))
}

/// A query from a row: `query`, `question` or `anchor`, or the turns of `context` (the last
/// ones, up to `QUERY_CHARS` characters: the end of a conversation matters most).
fn query_of(row: &Map<String, Value>) -> Option<String> {
    if let Some(q) = first_str(row, &["query", "question", "anchor"]) {
        return Some(q);
    }
    const QUERY_CHARS: usize = 256;
    let turns: Vec<&str> = match row.get("context")? {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    let mut kept: Vec<&str> = Vec::new();
    let mut chars = 0;
    for t in turns.iter().rev() {
        chars += t.chars().count();
        if !kept.is_empty() && chars > QUERY_CHARS {
            break;
        }
        kept.push(t);
    }
    kept.reverse();
    Some(kept.join(" "))
}

const POSITIVE_KEYS: [&str; 5] = ["positive", "answer", "passage", "response", "document"];

/// Reads a JSONL file of pairs (`query`/`question`/`anchor`, `positive`/`answer`/`passage`,
/// optional `negative` or `negatives`) or of labelled candidates (`context`/`query`,
/// `response`, `label`). Errors name the file and line.
pub fn read_eval_set(path: &Path) -> Result<EvalSet> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut pairs = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    let mut labelled = None;
    for (i, line) in text.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        if line.trim().is_empty() {
            continue;
        }
        let row: Map<String, Value> = serde_json::from_str(line).with_context(|| format!("{}: invalid JSON", at()))?;
        let Some(query) = query_of(&row) else { bail!("{}: no query (expected \"query\", \"question\", \"anchor\" or \"context\")", at()) };
        let Some(passage) = first_str(&row, &POSITIVE_KEYS) else { bail!("{}: no passage (expected \"positive\", \"answer\", \"passage\" or \"response\")", at()) };
        if query.trim().is_empty() || passage.trim().is_empty() {
            bail!("{}: empty query or passage", at())
        }
        let label = row.get("label").map(|l| l.as_i64().or_else(|| l.as_str().and_then(|s| s.parse().ok())).ok_or_else(|| anyhow::anyhow!("{}: label must be 0 or 1", at()))).transpose()?;
        match (labelled, label.is_some()) {
            (None, l) => labelled = Some(l),
            (Some(a), b) if a != b => bail!("{}: some rows have a \"label\" and some do not", at()),
            _ => {}
        }
        if let Some(label) = label {
            match groups.last_mut() {
                Some(g) if g.query == query => {
                    g.candidates.push(passage);
                    g.relevant.push(label > 0);
                }
                _ => groups.push(Group { query, candidates: vec![passage], relevant: vec![label > 0] }),
            }
        } else {
            let negatives = match row.get("negatives").or_else(|| row.get("negative")) {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(a)) => a.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(|| anyhow::anyhow!("{}: negatives must be strings", at()))).collect::<Result<_>>()?,
                Some(_) => bail!("{}: negatives must be a string or a list of strings", at()),
            };
            pairs.push(Pair { query, positive: passage, negatives });
        }
    }
    if labelled == Some(true) {
        if let Some(g) = groups.iter().find(|g| !g.relevant.contains(&true)) {
            bail!("{}: the group of {:?} has no candidate labelled 1", path.display(), g.query.chars().take(40).collect::<String>())
        }
        Ok(EvalSet::Groups(groups))
    } else {
        if pairs.is_empty() {
            bail!("{}: no pairs", path.display())
        }
        Ok(EvalSet::Pairs(pairs))
    }
}

/// Reads training pairs (a grouped file gives one pair per right candidate, its wrong ones as
/// negatives).
pub fn read_pairs(path: &Path) -> Result<Vec<Pair>> {
    Ok(match read_eval_set(path)? {
        EvalSet::Pairs(p) => p,
        EvalSet::Groups(groups) => groups
            .into_iter()
            .flat_map(|g| {
                let negatives: Vec<String> = g.candidates.iter().zip(&g.relevant).filter(|x| !*x.1).map(|x| x.0.clone()).collect();
                g.candidates.into_iter().zip(g.relevant).filter(|x| x.1).map(move |(p, _)| Pair { query: g.query.clone(), positive: p, negatives: negatives.clone() }).collect::<Vec<_>>()
            })
            .collect(),
    })
}

fn jieba() -> &'static Jieba {
    static J: OnceLock<Jieba> = OnceLock::new();
    J.get_or_init(Jieba::new)
}

/// Terms for BM25: jieba's search-mode words (Chinese), lower-cased words (English).
pub fn bm25_terms(text: &str) -> Vec<String> {
    jieba().cut_for_search(text, true).into_iter().filter(|w| w.chars().any(char::is_alphanumeric)).map(str::to_lowercase).collect()
}

/// An in-memory BM25 index (k1 1.2, b 0.75, Lucene's idf) over a list of passages.
pub struct Bm25 {
    postings: HashMap<String, Vec<(u32, f32)>>,
    lengths: Vec<f32>,
    average: f32,
}

impl Bm25 {
    pub fn new(passages: &[&str]) -> Self {
        let mut postings: HashMap<String, Vec<(u32, f32)>> = HashMap::new();
        let mut lengths = Vec::with_capacity(passages.len());
        for (i, p) in passages.iter().enumerate() {
            let terms = bm25_terms(p);
            lengths.push(terms.len() as f32);
            let mut counts: HashMap<String, f32> = HashMap::new();
            for t in terms {
                *counts.entry(t).or_default() += 1.0;
            }
            for (t, c) in counts {
                postings.entry(t).or_default().push((i as u32, c));
            }
        }
        let average = lengths.iter().sum::<f32>() / lengths.len().max(1) as f32;
        Self { postings, lengths, average: average.max(1e-6) }
    }

    /// A score for every passage (0 where no term matches).
    pub fn scores(&self, query: &str) -> Vec<f32> {
        let (k1, b) = (1.2f32, 0.75f32);
        let n = self.lengths.len() as f32;
        let mut out = vec![0f32; self.lengths.len()];
        let mut terms = bm25_terms(query);
        terms.sort();
        terms.dedup();
        for t in terms {
            let Some(list) = self.postings.get(&t) else { continue };
            let df = list.len() as f32;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for &(i, tf) in list {
                let norm = k1 * (1.0 - b + b * self.lengths[i as usize] / self.average);
                out[i as usize] += idf * tf * (k1 + 1.0) / (tf + norm);
            }
        }
        out
    }
}

/// Adds `count` BM25 hard negatives to each pair: the best-scoring passages among all the
/// pairs' positives that differ from its own; where BM25 finds fewer (no shared term), random
/// other passages (seeded) make up the number, so every pair has the same count.
pub fn mine_hard_negatives(pairs: &mut [Pair], count: usize, seed: u64, progress: &mut dyn FnMut(usize, usize)) {
    if count == 0 {
        return;
    }
    let mut corpus: Vec<&str> = pairs.iter().map(|p| p.positive.as_str()).collect();
    corpus.sort_unstable();
    corpus.dedup();
    let corpus: Vec<String> = corpus.into_iter().map(str::to_string).collect();
    let refs: Vec<&str> = corpus.iter().map(String::as_str).collect();
    let index = Bm25::new(&refs);
    let total = pairs.len();
    for (i, p) in pairs.iter_mut().enumerate() {
        let scores = index.scores(&p.query);
        let mut order: Vec<usize> = (0..corpus.len()).filter(|&j| scores[j] > 0.0).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let mut chosen: Vec<usize> = order.into_iter().filter(|&j| corpus[j] != p.positive).take(count).collect();
        if chosen.len() < count && corpus.len() > count {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            while chosen.len() < count {
                let j = rand::Rng::random_range(&mut rng, 0..corpus.len());
                if corpus[j] != p.positive && !chosen.contains(&j) {
                    chosen.push(j);
                }
            }
        }
        p.negatives.extend(chosen.into_iter().map(|j| corpus[j].clone()));
        if i % 256 == 0 || i + 1 == total {
            progress(i + 1, total);
        }
    }
}

/// Labelled pairs for a cross-encoder (a reranker): each query with its positive (label "1")
/// and each of its negatives (label "0"), as JSONL rows `{"text", "pair", "label"}`.
pub fn reranker_rows(pairs: &[Pair]) -> String {
    let mut out = String::new();
    for p in pairs {
        out.push_str(&json!({"text": p.query, "pair": p.positive, "label": "1"}).to_string());
        out.push('\n');
        for n in &p.negatives {
            out.push_str(&json!({"text": p.query, "pair": n, "label": "0"}).to_string());
            out.push('\n');
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct RetrievalOptions {
    /// Scale of the cosine similarities in the loss (sentence-transformers' default 20).
    pub scale: f64,
    /// BM25 hard negatives mined per pair (0: in-batch negatives only).
    pub hard_negatives: usize,
    /// Share of the training pairs held out as dev when no dev file is given.
    pub dev_fraction: f64,
    pub split_seed: u64,
}

impl Default for RetrievalOptions {
    fn default() -> Self {
        Self { scale: 20.0, hard_negatives: 0, dev_fraction: 0.1, split_seed: 42 }
    }
}

/// The training data of a retrieval task.
pub struct RetrievalData {
    pub train_path: PathBuf,
    pub train: Vec<Pair>,
    pub dev: EvalSet,
    pub test: Option<EvalSet>,
    /// Passages ranked beside the test pairs' own (`--corpus`).
    pub corpus: Vec<String>,
    pub made_dev: bool,
}

impl RetrievalData {
    /// Reads the files; holds out a seeded share of the training pairs as dev when no dev file is
    /// given (whole groups of equal queries go to one side).
    pub fn load(train: &Path, dev: Option<&Path>, test: Option<&Path>, corpus: Option<&Path>, options: &RetrievalOptions) -> Result<Self> {
        let mut pairs = read_pairs(train)?;
        let test = test.map(read_eval_set).transpose()?;
        let corpus = corpus.map(read_corpus).transpose()?.unwrap_or_default();
        let (train_pairs, dev, made_dev) = match dev {
            Some(d) => (pairs, read_eval_set(d)?, false),
            None => {
                pairs.shuffle(&mut ChaCha8Rng::seed_from_u64(options.split_seed));
                let held = ((pairs.len() as f64 * options.dev_fraction).round() as usize).max(1);
                if pairs.len() < held + 2 {
                    bail!("{}: too few pairs ({}) to hold out a dev set; pass --dev", train.display(), pairs.len())
                }
                let dev: Vec<Pair> = pairs.drain(..held).collect();
                (pairs, EvalSet::Pairs(dev), true)
            }
        };
        Ok(Self { train_path: train.to_path_buf(), train: train_pairs, dev, test, corpus, made_dev })
    }
}

/// Retrieval scores of a ranking: recall@k and MRR for pairs, R@k and MRR for groups.
pub fn score_rankings(ranks: &[usize], ks: &[usize], prefix: &str) -> Value {
    let n = ranks.len().max(1) as f64;
    let mut m = Map::new();
    for &k in ks {
        m.insert(format!("{prefix}@{k}"), json!(ranks.iter().filter(|&&r| r < k).count() as f64 / n));
    }
    m.insert("mrr".into(), json!(ranks.iter().map(|&r| 1.0 / (r as f64 + 1.0)).sum::<f64>() / n));
    m.insert("queries".into(), json!(ranks.len()));
    Value::Object(m)
}

/// How a ranking is made: BM25, the encoder's cosine, or both fused by reciprocal rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RankMode {
    Bm25,
    Dense,
    /// Dense weight w: score = w/(60 + dense rank) + (1-w)/(60 + BM25 rank).
    Hybrid(f64),
}

/// Rank (from 0) of the best relevant candidate under `scores` (ties broken against it).
fn rank_of_first_relevant(scores: &[f32], relevant: &[bool]) -> usize {
    let best = scores.iter().zip(relevant).filter(|x| *x.1).map(|x| *x.0).fold(f32::NEG_INFINITY, f32::max);
    scores.iter().zip(relevant).filter(|(s, r)| !**r && **s >= best).count()
}

fn ranks_from_scores(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut rank = vec![0; scores.len()];
    for (r, i) in order.into_iter().enumerate() {
        rank[i] = r;
    }
    rank
}

fn fuse(dense: &[f32], bm25: &[f32], w: f64) -> Vec<f32> {
    let (rd, rb) = (ranks_from_scores(dense), ranks_from_scores(bm25));
    (0..dense.len()).map(|i| (w / (61.0 + rd[i] as f64) + (1.0 - w) / (61.0 + rb[i] as f64)) as f32).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Texts to unit vectors.
pub type Embedder<'a> = dyn FnMut(&[&str]) -> Result<Vec<Vec<f32>>> + 'a;
/// A query and passages to each passage's relevance.
pub type PairScorer<'a> = dyn FnMut(&str, &[&str]) -> Result<Vec<f32>> + 'a;

/// Passages to rank beside a pairs file's own (`--corpus`): each JSONL row's `text`,
/// `passage`, `positive`, `answer`, `response` or `document`.
pub fn read_corpus(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Map<String, Value> = serde_json::from_str(line).with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))?;
        let Some(p) = first_str(&row, &["text", "passage", "positive", "answer", "response", "document"]) else {
            bail!("{}:{}: no passage (expected \"text\", \"passage\", \"answer\" or \"response\")", path.display(), i + 1)
        };
        out.push(p);
    }
    Ok(out)
}

/// Scores an evaluation set. A pairs file ranks its distinct positives plus `corpus` for each
/// query; a grouped file ranks each group's candidates. `embed` turns texts into unit vectors
/// (needed unless BM25).
pub fn evaluate_set(set: &EvalSet, corpus: &[String], mode: RankMode, embed: &mut Embedder) -> Result<Value> {
    evaluate_reranked(set, corpus, mode, embed, None)
}

/// A second stage: the relevance of each passage to a query (a cross-encoder's probability),
/// applied to the first stage's best `top` candidates.
pub struct Reranker<'a> {
    pub top: usize,
    pub score: &'a mut PairScorer<'a>,
}

/// Moves the first stage's best `top` candidates to the front, in the reranker's order.
fn rerank(scores: Vec<f32>, query: &str, candidates: &[&str], reranker: &mut Reranker) -> Result<Vec<f32>> {
    let rank = ranks_from_scores(&scores);
    let top: Vec<usize> = (0..scores.len()).filter(|&i| rank[i] < reranker.top).collect();
    let texts: Vec<&str> = top.iter().map(|&i| candidates[i]).collect();
    let second = (reranker.score)(query, &texts)?;
    // First-stage order below the reranked head: a score of minus the rank.
    let mut out: Vec<f32> = rank.iter().map(|&r| -(r as f32)).collect();
    for (&i, p) in top.iter().zip(second) {
        out[i] = 1e6 + p;
    }
    Ok(out)
}

/// [`evaluate_set`] with an optional second stage.
pub fn evaluate_reranked(set: &EvalSet, corpus: &[String], mode: RankMode, embed: &mut Embedder, mut reranker: Option<Reranker>) -> Result<Value> {
    let dense_needed = mode != RankMode::Bm25;
    match set {
        EvalSet::Pairs(pairs) => {
            let mut corpus: Vec<&str> = pairs.iter().map(|p| p.positive.as_str()).chain(corpus.iter().map(String::as_str)).collect();
            corpus.sort_unstable();
            corpus.dedup();
            let index_of: HashMap<&str, usize> = corpus.iter().enumerate().map(|(i, p)| (*p, i)).collect();
            let queries: Vec<&str> = pairs.iter().map(|p| p.query.as_str()).collect();
            let (qv, cv) = if dense_needed { (embed(&queries)?, embed(&corpus)?) } else { (Vec::new(), Vec::new()) };
            let bm25 = (mode != RankMode::Dense).then(|| Bm25::new(&corpus));
            let mut ranks = Vec::with_capacity(pairs.len());
            for (qi, p) in pairs.iter().enumerate() {
                let dense: Vec<f32> = if dense_needed { cv.iter().map(|c| dot(&qv[qi], c)).collect() } else { Vec::new() };
                let scores = match (mode, &bm25) {
                    (RankMode::Dense, _) => dense,
                    (RankMode::Bm25, Some(b)) => b.scores(&p.query),
                    (RankMode::Hybrid(w), Some(b)) => fuse(&dense, &b.scores(&p.query), w),
                    _ => unreachable!("an index for BM25 modes"),
                };
                let scores = match reranker.as_mut() {
                    Some(r) => rerank(scores, &p.query, &corpus, r)?,
                    None => scores,
                };
                let mut relevant = vec![false; corpus.len()];
                relevant[index_of[p.positive.as_str()]] = true;
                ranks.push(rank_of_first_relevant(&scores, &relevant));
            }
            let mut v = score_rankings(&ranks, &[1, 5, 10], "recall");
            v["candidates"] = json!(corpus.len());
            Ok(v)
        }
        EvalSet::Groups(groups) => {
            let mut pool: Vec<&str> = groups.iter().flat_map(|g| g.candidates.iter().map(String::as_str)).collect();
            pool.sort_unstable();
            pool.dedup();
            // IDF over every candidate of the file; BM25 scores then compared within a group.
            let bm25 = (mode != RankMode::Dense).then(|| Bm25::new(&pool));
            let pool_index: HashMap<&str, usize> = pool.iter().enumerate().map(|(i, p)| (*p, i)).collect();
            let (qv, pv) = if dense_needed {
                let queries: Vec<&str> = groups.iter().map(|g| g.query.as_str()).collect();
                (embed(&queries)?, embed(&pool)?)
            } else {
                (Vec::new(), Vec::new())
            };
            let mut ranks = Vec::with_capacity(groups.len());
            let mut size = 0;
            for (gi, g) in groups.iter().enumerate() {
                size = size.max(g.candidates.len());
                let ids: Vec<usize> = g.candidates.iter().map(|c| pool_index[c.as_str()]).collect();
                let dense: Vec<f32> = if dense_needed { ids.iter().map(|&i| dot(&qv[gi], &pv[i])).collect() } else { Vec::new() };
                let lexical = bm25.as_ref().map(|b| {
                    let all = b.scores(&g.query);
                    ids.iter().map(|&i| all[i]).collect::<Vec<f32>>()
                });
                let scores = match (mode, lexical) {
                    (RankMode::Dense, _) => dense,
                    (RankMode::Bm25, Some(l)) => l,
                    (RankMode::Hybrid(w), Some(l)) => fuse(&dense, &l, w),
                    _ => unreachable!("an index for BM25 modes"),
                };
                let scores = match reranker.as_mut() {
                    Some(r) => rerank(scores, &g.query, &g.candidates.iter().map(String::as_str).collect::<Vec<_>>(), r)?,
                    None => scores,
                };
                ranks.push(rank_of_first_relevant(&scores, &g.relevant));
            }
            let mut v = score_rankings(&ranks, &[1, 2, 5], "r");
            v["candidates"] = json!(size);
            Ok(v)
        }
    }
}

/// A trainable sentence encoder: BERT weights and the folder's pooling.
pub struct BiEncoder {
    pub encoder: BertModel,
    pub params: Params,
    /// Weights of the base the encoder does not use (a pooler), kept for the saved folder.
    pub fixed: HashMap<String, Tensor>,
    pub pooling: EmbeddingPooling,
    pub tokenizer: TextTokenizer,
    device: Device,
}

impl BiEncoder {
    pub fn from_folder(folder: &ModelFolder, max_length: usize, seed: u64, device: &Device) -> Result<Self> {
        let weights = folder.load_weights(device)?;
        let mut ws = WeightSource::new(weights.clone(), seed, device, DType::F32);
        let encoder = BertModel::load(&mut ws, &folder.config, ENCODER_PREFIX, false)?;
        if !ws.initialised.is_empty() {
            bail!("{}: the weights lack {} (and {} more)", folder.dir.display(), ws.initialised[0], ws.initialised.len() - 1)
        }
        let params = ws.params;
        let fixed = weights.into_iter().filter(|(k, _)| params.get(k).is_none()).collect();
        let pooling = zhiku_models::text_model::folder_pooling(&folder.dir);
        Ok(Self { encoder, params, fixed, pooling, tokenizer: folder.tokenizer(max_length)?, device: device.clone() })
    }

    /// Pooled sentence vectors `[n, hidden]` of tokenised texts.
    pub fn forward(&self, items: &[&TokenizedText], rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        let batch = self.tokenizer.pad_batch(items, &self.device)?;
        let hidden = self.encoder.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, rng)?;
        Ok(match self.pooling {
            EmbeddingPooling::Mean => mean_pool(&hidden, &batch.attention_mask)?,
            EmbeddingPooling::Cls => cls_pool(&hidden)?,
        })
    }

    /// Unit sentence vectors of texts, in length-sorted batches, without a graph.
    pub fn embed_texts(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let items = self.tokenizer.encode_many(texts, None)?;
        zhiku_models::text_model::in_length_order(&items, batch_size, |batch| {
            let mut rows: Vec<Vec<f32>> = self.forward(batch, None)?.detach().to_vec2()?;
            rows.iter_mut().for_each(|r| zhiku_models::text_model::normalize_l2(r));
            Ok(rows)
        })
    }

    /// Writes a sentence-transformers folder: the encoder as `BertModel` (`model.safetensors`,
    /// `config.json`), the base's tokenizer files, `modules.json`, `1_Pooling/config.json`
    /// and `sentence_bert_config.json`. Files are written then renamed.
    pub fn save(&self, dir: &Path, base: &ModelFolder) -> Result<()> {
        use zhiku_models::classifier::write_atomic;
        std::fs::create_dir_all(dir.join("1_Pooling")).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut tensors = self.fixed.clone();
        tensors.extend(self.params.tensors());
        let tmp = dir.join(".model.safetensors.tmp");
        candle_core::safetensors::save(&tensors, &tmp)?;
        std::fs::rename(&tmp, dir.join("model.safetensors"))?;
        for stale in ["pytorch_model.bin", "model.bin"] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let mut config = base.raw_config().clone();
        config.insert("architectures".into(), json!(["BertModel"]));
        write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
        for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"] {
            let from = base.dir.join(name);
            if from.is_file() && base.dir != dir {
                write_atomic(&dir.join(name), &std::fs::read(&from)?)?;
            }
        }
        if !dir.join("tokenizer.json").is_file() {
            self.tokenizer.save(dir)?;
        }
        let hidden = base.config.hidden_size;
        let (mean, cls) = (self.pooling == EmbeddingPooling::Mean, self.pooling == EmbeddingPooling::Cls);
        let pooling = json!({
            "word_embedding_dimension": hidden, "pooling_mode_cls_token": cls, "pooling_mode_mean_tokens": mean,
            "pooling_mode_max_tokens": false, "pooling_mode_mean_sqrt_len_tokens": false,
        });
        write_atomic(&dir.join("1_Pooling/config.json"), serde_json::to_string_pretty(&pooling)?.as_bytes())?;
        let modules = json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]);
        write_atomic(&dir.join("modules.json"), serde_json::to_string_pretty(&modules)?.as_bytes())?;
        let st = json!({"max_seq_length": self.tokenizer.max_length(), "do_lower_case": false});
        write_atomic(&dir.join("sentence_bert_config.json"), serde_json::to_string_pretty(&st)?.as_bytes())?;
        let about = json!({"similarity_fn_name": "cosine", "prompts": {}, "default_prompt_name": null, "trained_with": "zhiku train --task retrieval"});
        write_atomic(&dir.join("config_sentence_transformers.json"), serde_json::to_string_pretty(&about)?.as_bytes())?;
        Ok(())
    }
}

/// Tokenised training pairs: a query, its positive, its negatives (indices into `passages`).
struct EncodedPairs {
    queries: Vec<TokenizedText>,
    passages: Vec<TokenizedText>,
    positive: Vec<usize>,
    negatives: Vec<Vec<usize>>,
}

/// The retrieval task on the shared training loop.
pub struct RetrievalTask<'a> {
    folder: &'a ModelFolder,
    data: &'a RetrievalData,
    config: &'a TrainConfig,
    options: RetrievalOptions,
    model: BiEncoder,
    train: EncodedPairs,
}

impl<'a> RetrievalTask<'a> {
    pub fn new(folder: &'a ModelFolder, data: &'a RetrievalData, config: &'a TrainConfig, options: RetrievalOptions, device: &Device) -> Result<Self> {
        if !(options.scale > 0.0 && options.scale.is_finite()) {
            bail!("--scale must be a positive number")
        }
        let mut model = BiEncoder::from_folder(folder, config.max_length, config.seed, device)?;
        model.encoder.set_compute_dtype(config.precision.compute_dtype());
        let mut passages: Vec<&str> = data.train.iter().flat_map(|p| std::iter::once(p.positive.as_str()).chain(p.negatives.iter().map(String::as_str))).collect();
        passages.sort_unstable();
        passages.dedup();
        let index: HashMap<&str, usize> = passages.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let queries: Vec<&str> = data.train.iter().map(|p| p.query.as_str()).collect();
        let train = EncodedPairs {
            queries: model.tokenizer.encode_many(&queries, None)?,
            passages: model.tokenizer.encode_many(&passages, None)?,
            positive: data.train.iter().map(|p| index[p.positive.as_str()]).collect(),
            negatives: data.train.iter().map(|p| p.negatives.iter().map(|n| index[n.as_str()]).collect()).collect(),
        };
        Ok(Self { folder, data, config, options, model, train })
    }

    /// The passages of a micro-batch (pairs `idx`): each pair's positive, then every hard
    /// negative, each once; and the column of each pair's positive among them.
    fn columns(&self, idx: &[usize]) -> (Vec<usize>, Vec<u32>) {
        let t = &self.train;
        let mut columns: Vec<usize> = Vec::new();
        let mut column_of: HashMap<usize, usize> = HashMap::new();
        let mut add = |p: usize, columns: &mut Vec<usize>| {
            *column_of.entry(p).or_insert_with(|| {
                columns.push(p);
                columns.len() - 1
            })
        };
        let targets: Vec<u32> = idx.iter().map(|&i| add(t.positive[i], &mut columns) as u32).collect();
        for &i in idx {
            for &n in &t.negatives[i] {
                add(n, &mut columns);
            }
        }
        // Columns are distinct passages, so a passage equal to a query's own positive is only
        // ever its target column, never one of its negatives.
        (columns, targets)
    }

    /// The summed MNRL loss of query and passage vectors `[n, h]`, `[m, h]`.
    fn loss_of(&self, q: &Tensor, p: &Tensor, targets: &[u32]) -> Result<Tensor> {
        let unit = |x: &Tensor| -> Result<Tensor> { Ok(x.broadcast_div(&(x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + 1e-12)?)?) };
        let scores = (unit(q)?.matmul(&unit(p)?.t()?)? * self.options.scale)?;
        Ok(cross_entropy_sum(&scores, targets, None, 0.0)?.0)
    }

    /// The direct form: one graph through both encoders and the loss (for checking the cached form).
    pub fn direct_loss(&self, idx: &[usize], step: u64) -> Result<Tensor> {
        let (columns, targets) = self.columns(idx);
        let q: Vec<&TokenizedText> = idx.iter().map(|&i| &self.train.queries[i]).collect();
        let p: Vec<&TokenizedText> = columns.iter().map(|&c| &self.train.passages[c]).collect();
        let qv = self.model.forward(&q, Some(&mut self.dropout(step, 0, 0)))?.to_dtype(DType::F32)?;
        let pv = self.model.forward(&p, Some(&mut self.dropout(step, 0, 1)))?.to_dtype(DType::F32)?;
        self.loss_of(&qv, &pv, &targets)
    }

    /// Dropout masks of a micro-batch's queries (side 0) or passages (side 1), indexed by row.
    fn dropout(&self, step: u64, micro: u64, side: u64) -> DropoutRng {
        DropoutRng::for_step(self.config.seed, step, micro | (side << 32))
    }

    /// Loss and gradients of one micro-batch, data-parallel although the loss couples every
    /// row of the batch: (1) each shard of queries and of passages runs forward on a core of
    /// its own, (2) the loss and its gradient with respect to the vectors are taken on detached
    /// copies of the vectors alone, (3) each shard runs its backward pass from its rows of those
    /// gradients, again on its own core. The split is GradCache's (Gao et al. 2021, as in
    /// sentence-transformers' CachedMultipleNegativesRankingLoss), here without its second
    /// forward pass: the shards keep their graphs between (1) and (3). The gradients equal the
    /// direct form's (tested).
    fn cached_step(&self, idx: &[usize], step: u64, micro: u64, factor: f64) -> Result<(f64, GradStore)> {
        let (columns, targets) = self.columns(idx);
        let sides: [Vec<&TokenizedText>; 2] = [idx.iter().map(|&i| &self.train.queries[i]).collect(), columns.iter().map(|&c| &self.train.passages[c]).collect()];
        let device = &self.model.device;
        let mut vectors = Vec::with_capacity(2);
        let mut graphs = Vec::with_capacity(2);
        for (side, items) in sides.iter().enumerate() {
            let ranges = shard::split_rows(items.len(), shard::shard_count(items.len(), device));
            let parts = shard::run(ranges.len(), |s| {
                let r = ranges[s].clone();
                let mut rng = self.dropout(step, micro, side as u64).for_rows(r.start);
                Ok(self.model.forward(&items[r], Some(&mut rng))?.to_dtype(DType::F32)?)
            })?;
            let detached: Vec<Tensor> = parts.iter().map(Tensor::detach).collect();
            vectors.push(Var::from_tensor(&Tensor::cat(&detached, 0)?)?);
            graphs.push((ranges, parts));
        }
        let loss = (self.loss_of(vectors[0].as_tensor(), vectors[1].as_tensor(), &targets)? * factor)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let vector_grads = loss.backward()?;
        let mut acc: Option<GradStore> = None;
        for (side, (ranges, parts)) in graphs.iter().enumerate() {
            let Some(grad) = vector_grads.get(&vectors[side]) else { continue };
            let shard_grads = shard::run(ranges.len(), |s| {
                let r = &ranges[s];
                Ok((&parts[s] * grad.narrow(0, r.start, r.len())?)?.sum_all()?.backward()?)
            })?;
            for grads in shard_grads {
                sum_grads(&mut acc, grads, &self.model.params)?;
            }
        }
        Ok((value, acc.expect("a batch has queries")))
    }
}

impl TrainTask for RetrievalTask<'_> {
    fn fingerprint(&self) -> String {
        format!(
            "task=retrieval model={} train={}:{} dev={} scale={} hard_negatives={}",
            self.folder.dir.display(),
            self.data.train_path.display(),
            self.data.train.len(),
            self.data.dev.len(),
            self.options.scale,
            self.options.hard_negatives
        )
    }

    fn params(&self) -> &Params {
        &self.model.params
    }

    fn total_params(&self) -> usize {
        self.model.params.num_elements() + self.model.fixed.values().map(|t| t.elem_count()).sum::<usize>()
    }

    fn train_len(&self) -> usize {
        self.train.queries.len()
    }

    fn dev_len(&self) -> usize {
        self.data.dev.len()
    }

    fn metrics(&self) -> Vec<(&'static str, bool)> {
        match self.data.dev {
            EvalSet::Pairs(_) => vec![("mrr", true), ("recall@1", true), ("recall@5", true), ("recall@10", true)],
            EvalSet::Groups(_) => vec![("mrr", true), ("r@1", true), ("r@2", true), ("r@5", true)],
        }
    }

    fn accumulate(&self, group: &[&[usize]], step: u64, loss_scale: f64) -> Result<(f64, GradStore)> {
        let total: usize = group.iter().map(|g| g.len()).sum();
        let mut loss_total = 0.0;
        let mut acc: Option<GradStore> = None;
        for (m, idx) in group.iter().enumerate() {
            let (loss, grads) = self.cached_step(idx, step, m as u64, loss_scale / total as f64)?;
            loss_total += loss;
            sum_grads(&mut acc, grads, &self.model.params)?;
        }
        Ok((loss_total, acc.expect("a step has at least one micro-batch")))
    }

    fn evaluate(&mut self) -> Result<DevScores> {
        let bs = self.config.eval_batch_size;
        let model = &self.model;
        let metrics = evaluate_set(&self.data.dev, &[], RankMode::Dense, &mut |texts| model.embed_texts(texts, bs))?;
        // The loop reports a dev loss; for ranking, 1 - MRR stands in (lower is better).
        let loss = 1.0 - metrics["mrr"].as_f64().unwrap_or(0.0);
        Ok(DevScores { loss, metrics })
    }

    fn save(&mut self, dir: &Path) -> Result<()> {
        self.model.save(dir, self.folder)
    }

    /// Writes the pairs trained on (with their mined negatives) and the held-out dev pairs
    /// under `splits/`, so another tool can train on exactly the same data.
    fn prepare_output(&self, output: &Path) -> Result<()> {
        let dir = output.join("splits");
        std::fs::create_dir_all(&dir)?;
        let write = |name: &str, pairs: &[Pair]| -> Result<()> {
            let mut text = String::new();
            for p in pairs {
                let row = if p.negatives.is_empty() { json!({"query": p.query, "positive": p.positive}) } else { json!({"query": p.query, "positive": p.positive, "negatives": p.negatives}) };
                text.push_str(&row.to_string());
                text.push('\n');
            }
            zhiku_models::classifier::write_atomic(&dir.join(name), text.as_bytes())
        };
        write("train.jsonl", &self.data.train)?;
        match (&self.data.dev, self.data.made_dev) {
            (EvalSet::Pairs(dev), true) => write("dev.jsonl", dev),
            _ => Ok(()),
        }
    }

    fn final_scores(&self, output: &Path) -> Result<FinalScores> {
        let folder = ModelFolder::open(output)?;
        let best = BiEncoder::from_folder(&folder, self.config.max_length, 0, &self.model.device)?;
        let bs = self.config.eval_batch_size;
        let mut embed = |texts: &[&str]| best.embed_texts(texts, bs);
        let dev = evaluate_set(&self.data.dev, &[], RankMode::Dense, &mut embed)?;
        let test = self.data.test.as_ref().map(|t| evaluate_set(t, &self.data.corpus, RankMode::Dense, &mut embed)).transpose()?;
        let negatives: usize = self.data.train.iter().map(|p| p.negatives.len()).sum();
        let extra = json!({
            "task": "retrieval", "loss": "multiple_negatives_ranking", "scale": self.options.scale,
            "train_pairs": self.data.train.len(), "hard_negatives": negatives, "dev_examples": self.data.dev.len(),
            "test_examples": self.data.test.as_ref().map(EvalSet::len),
        });
        let Value::Object(extra) = extra else { unreachable!("an object") };
        Ok(FinalScores { dev, test, extra })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bm25_ranks_the_passage_sharing_rare_terms_first() {
        let passages = ["七天无理由退货", "发货时间是48小时内", "支持货到付款"];
        let index = Bm25::new(&passages);
        let s = index.scores("什么时候发货");
        assert_eq!(ranks_from_scores(&s)[1], 0, "{s:?}");
        assert_eq!(s[0], 0.0);
    }

    #[test]
    fn ranks_and_scores() {
        assert_eq!(rank_of_first_relevant(&[0.1, 0.9, 0.5], &[false, false, true]), 1);
        assert_eq!(rank_of_first_relevant(&[0.5, 0.5], &[false, true]), 1, "ties count against");
        let v = score_rankings(&[0, 1, 9, 20], &[1, 5, 10], "recall");
        assert_eq!(v["recall@1"], 0.25);
        assert_eq!(v["recall@10"], 0.75);
        assert!((v["mrr"].as_f64().unwrap() - (1.0 + 0.5 + 0.1 + 1.0 / 21.0) / 4.0).abs() < 1e-12);
    }

    #[test]
    fn grouped_files_read_as_groups_and_train_as_pairs_with_negatives() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rs.jsonl");
        std::fs::write(&p, concat!(
            "{\"label\": 1, \"context\": [\"你好\", \"什么时候发货\"], \"response\": \"今天发\"}\n",
            "{\"label\": 0, \"context\": [\"你好\", \"什么时候发货\"], \"response\": \"不客气\"}\n",
            "{\"label\": 0, \"context\": [\"退货\"], \"response\": \"好的\"}\n",
            "{\"label\": 1, \"context\": [\"退货\"], \"response\": \"七天内可以\"}\n",
        )).unwrap();
        let EvalSet::Groups(g) = read_eval_set(&p).unwrap() else { panic!("groups") };
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].query.as_str(), g[0].relevant.clone()), ("你好 什么时候发货", vec![true, false]));
        let pairs = read_pairs(&p).unwrap();
        assert_eq!((pairs[1].positive.as_str(), pairs[1].negatives.clone()), ("七天内可以", vec!["好的".to_string()]));
        std::fs::write(&p, "{\"query\": \"q\", \"positive\": \"p\"}\n{\"query\": \"q2\"}\n").unwrap();
        let e = format!("{:#}", read_eval_set(&p).unwrap_err());
        assert!(e.contains("rs.jsonl:2") && e.contains("no passage"), "{e}");
    }

    #[test]
    fn hard_negatives_are_similar_passages_other_than_ones_own() {
        let mut pairs = vec![
            Pair { query: "什么时候发货".into(), positive: "今天下午发货".into(), negatives: vec![] },
            Pair { query: "发货用什么快递".into(), positive: "我们发货用韵达快递".into(), negatives: vec![] },
            Pair { query: "可以退货吗".into(), positive: "七天无理由退货".into(), negatives: vec![] },
        ];
        mine_hard_negatives(&mut pairs, 1, 7, &mut |_, _| {});
        assert_eq!(pairs[0].negatives, vec!["我们发货用韵达快递".to_string()], "shares 发货's terms");
        assert!(pairs.iter().all(|p| !p.negatives.contains(&p.positive) && p.negatives.len() == 1), "{pairs:?}");
    }
}
