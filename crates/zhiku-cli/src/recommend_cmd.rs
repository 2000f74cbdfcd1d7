//! `zhiku recommend`: split interaction logs, train recommenders, score them, recommend.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;
use zhiku_recommend::data::write_interactions;
use zhiku_recommend::matrix::Csr;
use zhiku_recommend::split::{split, Protocol};
use zhiku_recommend::train::{self, TrainOptions};
use zhiku_recommend::{metrics, read_interactions, read_items, read_users, Algorithm, IdMap, InteractionColumns, Query, Recommender};

#[derive(Args, Debug)]
pub struct RecommendArgs {
    #[command(subcommand)]
    command: RecommendCommand,
}

#[derive(Subcommand, Debug)]
enum RecommendCommand {
    /// Split an interaction log into train.tsv and test.tsv: random (each user's interactions,
    /// shuffled, cut 75/25 as in Microsoft Recommenders' MovieLens table), last (each user's
    /// latest interaction held out), cold-items (a quarter of the interactions, all on items
    /// that then have none in training) or cold-users (the same with whole users).
    Split(SplitArgs),
    /// Train a recommender on an interaction log; its hyperparameters are tuned on a validation
    /// split carved from that log (never from a test file) unless given or --no-tune.
    Train(Box<TrainArgs>),
    /// Score a recommender on held-out interactions: NDCG, precision, recall, MAP, hit rate and
    /// MRR at k, catalogue coverage and recall on cold items, ranking every item each user has
    /// not seen in training.
    Eval(EvalArgs),
    /// Recommend items for a user: known to the model, described by --history, or, for a model
    /// trained with --users, by their row of that table or --feature NAME=VALUE.
    Predict(PredictArgs),
}

#[derive(Args, Debug, Clone)]
struct ColumnArgs {
    /// Column holding the user id.
    #[arg(long, default_value = "user_id")]
    user_column: String,
    /// Column holding the item id (in the interaction log and the item table).
    #[arg(long, default_value = "item_id")]
    item_column: String,
    /// Column holding a rating or weight (read when present; 1 per row without it).
    #[arg(long, default_value = "rating")]
    rating_column: String,
    /// Column holding the time (seconds since 1970; read when present).
    #[arg(long, default_value = "timestamp")]
    time_column: String,
    /// Column holding the event type (read with --events).
    #[arg(long, default_value = "event")]
    event_column: String,
    /// The event types that count as interactions, comma-separated (e.g. click,purchase); rows
    /// of other types (impressions, say) are skipped and counted. Default: every row.
    #[arg(long, value_delimiter = ',')]
    events: Option<Vec<String>>,
    /// File format when the extension does not tell: csv, tsv or jsonl.
    #[arg(long)]
    format: Option<String>,
}

impl ColumnArgs {
    fn columns(&self) -> Result<InteractionColumns> {
        let format = self.format.as_deref().map(|f| zhiku_data::Format::parse(f).with_context(|| format!("unknown --format {f:?}: expected csv, tsv or jsonl"))).transpose()?;
        let events = self.events.as_ref().map(|v| v.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect::<Vec<_>>());
        if events.as_ref().is_some_and(|v| v.is_empty()) {
            bail!("--events: give the event types that count, e.g. --events click,purchase")
        }
        Ok(InteractionColumns {
            user: self.user_column.clone(),
            item: self.item_column.clone(),
            rating: self.rating_column.clone(),
            time: self.time_column.clone(),
            event: self.event_column.clone(),
            events,
            format,
        })
    }
}

#[derive(Args, Debug)]
struct SplitArgs {
    /// The interaction log (CSV, TSV or JSONL).
    #[arg(long, value_name = "FILE")]
    interactions: PathBuf,
    /// random, last, cold-items or cold-users.
    #[arg(long, default_value = "random")]
    protocol: String,
    /// The share held out (random: of each user's interactions; cold-items and cold-users: of
    /// all interactions).
    #[arg(long, default_value_t = 0.25)]
    test_ratio: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Folder for train.tsv and test.tsv.
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
    #[command(flatten)]
    columns: ColumnArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// The training interactions (CSV, TSV or JSONL).
    #[arg(long, value_name = "FILE")]
    interactions: PathBuf,
    /// popularity, itemknn, bpr, als, ease, content (item texts) or hybrid (als plus item texts,
    /// so that items without interactions are recommended too).
    #[arg(long, default_value = "als")]
    algorithm: String,
    /// Item table (id column plus text columns): the catalogue, and the texts the content model
    /// embeds. Interactions with items missing from it are skipped and counted.
    #[arg(long, value_name = "FILE")]
    items: Option<PathBuf>,
    /// Item-table columns joined into an item's text (comma-separated; default: all but the id).
    #[arg(long, value_delimiter = ',')]
    item_text_columns: Vec<String>,
    /// User table (id column, as --user-column, plus feature columns such as age, gender or
    /// occupation): users without history get what users with the same features chose, tuned on
    /// users held out whole, instead of what is popular overall.
    #[arg(long, value_name = "FILE")]
    users: Option<PathBuf>,
    /// User-table columns used as features (comma-separated; default: all but the id). Numbers
    /// with many distinct values are binned by quantile; rare categories pool into "other".
    #[arg(long, value_delimiter = ',')]
    user_features: Vec<String>,
    /// Encoder folder for the content and hybrid models (e.g. all-MiniLM-L6-v2 or m3e-small).
    #[arg(long, value_name = "MODEL_DIR")]
    encoder: Option<PathBuf>,
    /// Where the model folder goes.
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
    /// Latent factors (bpr, als).
    #[arg(long)]
    factors: Option<usize>,
    /// L2 regularisation (bpr, als, ease).
    #[arg(long)]
    regularization: Option<f64>,
    /// Confidence scale of an interaction (als: c = alpha * value).
    #[arg(long)]
    alpha: Option<f64>,
    /// Passes over the data (bpr epochs, als iterations).
    #[arg(long)]
    iterations: Option<usize>,
    /// SGD step size (bpr).
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Neighbours kept per item (itemknn).
    #[arg(long)]
    neighbors: Option<usize>,
    /// Conjugate-gradient steps per ALS solve; 0 solves exactly (Cholesky).
    #[arg(long, default_value_t = 3)]
    cg_steps: usize,
    /// Train with the given or default hyperparameters, without a validation search.
    #[arg(long)]
    no_tune: bool,
    /// Share of the training interactions held out to tune on.
    #[arg(long, default_value_t = 0.2)]
    validation_ratio: f64,
    /// How the tuning split is carved: random (a share of each user's interactions), cold-items
    /// (whole items held out: tunes the hybrid for new items, including how far to lift items
    /// without interactions) or mixed (half each).
    #[arg(long, default_value = "random")]
    validation_protocol: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    columns: ColumnArgs,
    /// Print the training summary as JSON.
    #[arg(long)]
    json: bool,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// The model folder.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Held-out interactions (as `recommend split` writes them).
    #[arg(long, value_name = "FILE")]
    test: PathBuf,
    /// List length.
    #[arg(long, default_value_t = 10)]
    k: usize,
    #[command(flatten)]
    columns: ColumnArgs,
    /// A text ranker (`zhiku train --task ctr`) that reorders each user's --rerank-top
    /// candidates by its click probability, blended with the model's score.
    #[arg(long, value_name = "DIR", help_heading = "Reranking")]
    reranker: Option<PathBuf>,
    /// Candidates per user handed to the ranker.
    #[arg(long, default_value_t = 50, help_heading = "Reranking")]
    rerank_top: usize,
    /// Weight of the ranker in the blend of standardised scores: 1 ranks by the ranker alone,
    /// 0 keeps the model's order.
    #[arg(long, default_value_t = 0.5, help_heading = "Reranking")]
    rerank_weight: f32,
    /// The users' interactions with their times (the training log), so the ranker reads each
    /// history most recent first, as it was trained; without it, the model's training items in
    /// catalogue order.
    #[arg(long, value_name = "FILE", help_heading = "Reranking")]
    history: Option<PathBuf>,
    /// Print the metrics as JSON ("ndcg@10", "precision@10", ...).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct PredictArgs {
    /// The model folder.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// The user id (as in the training log).
    #[arg(long)]
    user: Option<String>,
    /// Item ids the user interacted with (comma-separated): for users the model was not trained
    /// on, or to add to a known user's history.
    #[arg(long, value_delimiter = ',')]
    history: Vec<String>,
    /// Item ids never to recommend (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude: Vec<String>,
    /// A user feature as NAME=VALUE (repeatable; e.g. --feature age=31 --feature gender=F), for
    /// a user without history when the model was trained with --users. Default: the user's row
    /// of that table.
    #[arg(long = "feature", value_name = "NAME=VALUE")]
    features: Vec<String>,
    /// How many items.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Item table whose columns are printed beside each item (default: the one the model was
    /// trained with, if any).
    #[arg(long, value_name = "FILE")]
    items: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: RecommendArgs) -> Result<i32> {
    match args.command {
        RecommendCommand::Split(a) => run_split(a),
        RecommendCommand::Train(a) => run_train(*a),
        RecommendCommand::Eval(a) => run_eval(a),
        RecommendCommand::Predict(a) => run_predict(a),
    }
}

fn report_read(path: &Path, report: &zhiku_recommend::data::ReadReport) {
    if let Some(s) = report.summary(path) {
        eprintln!("note: {s}");
    }
}

fn run_split(a: SplitArgs) -> Result<i32> {
    let cols = a.columns.columns()?;
    let protocol = Protocol::parse(&a.protocol)?;
    let log = read_interactions(&a.interactions, &cols, IdMap::default(), IdMap::default(), false)?;
    report_read(&a.interactions, &log.report);
    if protocol == Protocol::Last && !log.has_time {
        bail!("{}: protocol last needs a time column (--time-column, now {:?})", a.interactions.display(), cols.time);
    }
    let (train, test, summary) = split(&log.events, log.items.len(), protocol, a.test_ratio, a.seed)?;
    std::fs::create_dir_all(&a.output).with_context(|| format!("cannot create {}", a.output.display()))?;
    write_interactions(&a.output.join("train.tsv"), &log, &train, &cols)?;
    write_interactions(&a.output.join("test.tsv"), &log, &test, &cols)?;
    if a.json {
        println!("{}", serde_json::json!({"protocol": protocol, "seed": a.seed, "test_ratio": a.test_ratio, "summary": summary, "read": log.report}));
    } else {
        println!(
            "{}: {} training and {} test interactions ({} test users, {} test items; {} users kept only in training)",
            a.output.display(),
            summary.train,
            summary.test,
            summary.test_users,
            summary.test_items,
            summary.users_only_in_train
        );
    }
    Ok(0)
}

/// Progress on stderr: one line per tried setting, a bar while fitting.
struct Reporter {
    quiet: bool,
    bar: Option<ProgressBar>,
}

impl train::Progress for Reporter {
    fn tried(&mut self, setting: &str, ndcg: f64) {
        if !self.quiet {
            eprintln!("  {setting}: validation ndcg@10 {ndcg:.4}");
        }
    }
    fn fitting(&mut self, what: &str, done: usize, total: usize) {
        if self.quiet {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let b = ProgressBar::new(total as u64);
            b.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}").unwrap().progress_chars("=> "));
            b.set_message(what.to_string());
            b
        });
        bar.set_position(done as u64);
        if done >= total {
            bar.finish_and_clear();
            self.bar = None;
        }
    }
}

fn run_train(a: TrainArgs) -> Result<i32> {
    let cols = a.columns.columns()?;
    let algorithm = Algorithm::parse(&a.algorithm)?;
    let items = match &a.items {
        Some(p) => Some(read_items(p, &cols.item, &a.item_text_columns, cols.format)?),
        None => None,
    };
    if algorithm.needs_text() && (items.is_none() || a.encoder.is_none()) {
        bail!("--algorithm {} needs --items (the item texts) and --encoder (the model that embeds them)", algorithm.name());
    }
    let catalogue = items.as_ref().map(|i| i.ids.clone()).unwrap_or_default();
    let log = read_interactions(&a.interactions, &cols, IdMap::default(), catalogue, items.is_some())?;
    report_read(&a.interactions, &log.report);
    let mut opts = TrainOptions::new(algorithm);
    opts.tune = !a.no_tune;
    opts.seed = a.seed;
    opts.validation_ratio = a.validation_ratio;
    opts.validation = Some(train::Validation::parse(&a.validation_protocol)?);
    opts.encoder = a.encoder.clone();
    opts.item_texts = items.as_ref().map(|it| (0..log.items.len() as u32).map(|i| it.text(i)).collect());
    if let Some(path) = &a.users {
        opts.user_table = Some(read_users(path, &cols.user, &a.user_features, cols.format)?);
    } else if !a.user_features.is_empty() {
        bail!("--user-features needs --users (the user table)");
    }
    train::set(&mut opts.params, "als.cg_steps", a.cg_steps as f64);
    let name = algorithm.name();
    let given: [(&str, Option<f64>); 6] = [
        ("factors", a.factors.map(|v| v as f64)),
        ("regularization", a.regularization),
        ("alpha", a.alpha),
        ("iterations", a.iterations.map(|v| v as f64)),
        ("learning_rate", a.learning_rate),
        ("neighbors", a.neighbors.map(|v| v as f64)),
    ];
    for (flag, value) in given {
        let Some(v) = value else { continue };
        // The hybrid's factors are its ALS's.
        let owner = if algorithm == Algorithm::Hybrid && matches!(flag, "factors" | "regularization" | "alpha" | "iterations") { "als" } else { name };
        let key = format!("{owner}.{flag}");
        if !train::set(&mut opts.params, &key, v) {
            bail!("--{} does not apply to --algorithm {name}", flag.replace('_', "-"));
        }
        opts.fixed.insert(key);
    }
    let started = Instant::now();
    if !a.quiet && opts.tune && !train::candidates(algorithm).is_empty() {
        eprintln!("tuning {name} on {:.0}% of the training interactions held out:", a.validation_ratio * 100.0);
    }
    let mut reporter = Reporter { quiet: a.quiet || a.json, bar: None };
    let mut model = train::train(&log, &opts, &mut reporter)?;
    model.item_table = items;
    let seconds = started.elapsed().as_secs_f64();
    model.save(&a.output)?;
    let chosen = train::setting(algorithm, &model.config.params);
    if a.json {
        println!(
            "{}",
            serde_json::json!({"output": a.output, "algorithm": name, "setting": chosen, "params": model.config.params, "users": model.users.len(),
                "items": model.n_items(), "interactions": model.config.interactions, "seconds": seconds, "training": model.config.training})
        );
    } else {
        println!(
            "{}: {chosen}; {} users, {} items, {} interactions; {seconds:.1} s",
            a.output.display(),
            model.users.len(),
            model.n_items(),
            model.config.interactions
        );
    }
    Ok(0)
}

fn run_eval(a: EvalArgs) -> Result<i32> {
    if a.k == 0 {
        bail!("--k must be at least 1");
    }
    let cols = a.columns.columns()?;
    let model = Recommender::load(&a.model)?;
    let test = read_interactions(&a.test, &cols, model.users.clone(), model.items.clone(), false)?;
    report_read(&a.test, &test.report);
    let matrix = Csr::from_events(test.users.len(), test.items.len(), &test.events);
    let r = match &a.reranker {
        None => metrics::evaluate(&model, &matrix, &test.users, a.k),
        Some(dir) => {
            if !(0.0..=1.0).contains(&a.rerank_weight) {
                bail!("--rerank-weight must be between 0 and 1")
            }
            let lists = metrics::candidate_lists(&model, &matrix, &test.users, a.rerank_top.max(a.k));
            let lists = rerank_lists(&model, lists, dir, &a, &cols)?;
            metrics::score_lists(&model, &matrix, &lists, a.k)
        }
    };
    if a.json {
        let mut v = r.to_json();
        v["algorithm"] = serde_json::json!(model.config.algorithm.name());
        v["model"] = serde_json::json!(a.model);
        if let Some(dir) = &a.reranker {
            v["reranker"] = serde_json::json!({"model": dir, "top": a.rerank_top, "weight": a.rerank_weight});
        }
        println!("{v}");
    } else {
        let k = a.k;
        println!("{} on {} ({} users):", model.config.algorithm.name(), a.test.display(), r.users);
        println!("  ndcg@{k}      {:.4}", r.ndcg);
        println!("  precision@{k} {:.4}", r.precision);
        println!("  recall@{k}    {:.4}", r.recall);
        println!("  map@{k}       {:.4}", r.map);
        println!("  hr@{k}        {:.4}", r.hit_rate);
        println!("  mrr@{k}       {:.4}", r.mrr);
        println!("  coverage     {:.4}", r.coverage);
        if r.cold_item_interactions > 0 {
            println!("  cold items   {} test interactions, recall@{k} {:.4}", r.cold_item_interactions, r.cold_item_recall);
        }
        if r.users_without_training > 0 {
            let by = if model.segments.as_ref().is_some_and(|s| s.weight > 0.0) { "their user features" } else { "popularity" };
            println!("  {} test users had no training interactions (ranked by {by})", r.users_without_training);
        }
    }
    Ok(0)
}

/// Reorders each user's candidates with the text ranker in `dir` (see [`zhiku_recommend::ctr`]).
fn rerank_lists(model: &Recommender, lists: metrics::RankedLists, dir: &Path, a: &EvalArgs, cols: &zhiku_recommend::InteractionColumns) -> Result<metrics::RankedLists> {
    use zhiku_recommend::ctr;
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("ctr.json")).with_context(|| format!("{} is not a text ranker (no ctr.json): train one with `zhiku train --task ctr`", dir.display()))?)
        .with_context(|| format!("{}: ctr.json is not valid JSON", dir.display()))?;
    let options: ctr::CtrOptions = serde_json::from_value(meta["options"].clone()).with_context(|| format!("{}: ctr.json has no valid options", dir.display()))?;
    let texts = read_items(&dir.join("ctr-items.jsonl"), "item_id", &["text".to_string()], None)?;
    // The model's item index to the ranker's table.
    let text_of: Vec<Option<u32>> = (0..model.n_items() as u32).map(|i| texts.ids.get(model.items.id(i))).collect();
    let mut histories: Vec<Vec<u32>> = (0..model.users.len()).map(|u| model.seen.row(u).0.to_vec()).collect();
    if let Some(path) = &a.history {
        let log = read_interactions(path, cols, model.users.clone(), model.items.clone(), false)?;
        for events in log.by_user() {
            if let Some(h) = histories.get_mut(events[0].user as usize) {
                *h = ctr::recent_first(events);
            }
        }
    }
    let ranker = zhiku_train::predict::Predictor::open(dir, &candle_core::Device::Cpu)?;
    let Some(click) = ranker.labels().iter().position(|l| l == "click") else { bail!("{}: the ranker has no \"click\" label", dir.display()) };
    let pairs: usize = lists.iter().map(|l| l.1.len()).sum();
    let bar = (!a.json).then(|| {
        let b = ProgressBar::new(pairs as u64);
        b.set_style(ProgressStyle::with_template("reranking [{bar:30}] {pos}/{len} pairs {elapsed}, {eta} left").unwrap().progress_chars("=> "));
        b
    });
    let mut out = Vec::with_capacity(lists.len());
    for (u, cands) in lists {
        let known: Vec<u32> = histories.get(u).map(|h| h.iter().filter_map(|&i| text_of.get(i as usize).copied().flatten()).collect()).unwrap_or_default();
        let history = ctr::history_text(&texts, &known, options.history);
        let candidates: Vec<String> = cands.iter().map(|&(i, _)| text_of[i as usize].map(|t| texts.text(t)).unwrap_or_default()).collect();
        let first: Vec<&str> = vec![history.as_str(); candidates.len()];
        let second: Vec<&str> = candidates.iter().map(String::as_str).collect();
        let p: Vec<f32> = ranker.probabilities(&first, Some(&second))?.into_iter().map(|row| row[click]).collect();
        out.push((u, ctr::rerank(&cands, &p, a.rerank_weight)));
        if let Some(b) = &bar {
            b.inc(cands.len() as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(out)
}

fn run_predict(a: PredictArgs) -> Result<i32> {
    let model = Recommender::load(&a.model)?;
    let lookup = |ids: &[String], what: &str| -> Result<Vec<u32>> {
        ids.iter().map(|s| model.items.get(s).with_context(|| format!("{what} item {s:?} is not in the model's catalogue"))).collect()
    };
    let mut history = lookup(&a.history, "--history")?;
    let exclude = lookup(&a.exclude, "--exclude")?;
    let codes = if a.features.is_empty() {
        None
    } else {
        let Some(segments) = &model.segments else { bail!("--feature: this model was trained without user features (--users)") };
        let pairs: Vec<(String, String)> = a
            .features
            .iter()
            .map(|f| f.split_once('=').map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).with_context(|| format!("--feature {f:?}: expected NAME=VALUE")))
            .collect::<Result<_>>()?;
        Some(segments.encode(&pairs).context("--feature")?)
    };
    let mut q = a.user.as_deref().map_or_else(Query::default, |u| model.query_for(u));
    if codes.is_some() {
        q.features = codes.as_deref();
    }
    if !history.is_empty() {
        history.extend_from_slice(q.history);
        q.user = None;
        q.history = &history;
    }
    let recs = model.recommend(q, a.k, &exclude, &mut Vec::new());
    let why = model.fallback(q);
    let items = match &a.items {
        Some(p) => Some(read_items(p, "item_id", &[], None)?),
        None => None,
    };
    // The item's text from --items, else from the table the model was trained with.
    let describe = |i: u32| -> String {
        let id = model.items.id(i);
        items.as_ref().or(model.item_table.as_ref()).and_then(|t| t.ids.get(id).map(|k| t.text(k))).unwrap_or_default()
    };
    if a.json {
        let list: Vec<_> = recs.iter().map(|&(i, s)| serde_json::json!({"item": model.items.id(i), "score": s, "text": describe(i)})).collect();
        println!("{}", serde_json::json!({"user": a.user, "fallback": why, "items": list}));
    } else {
        if let Some(w) = &why {
            eprintln!("note: {w}");
        }
        for (rank, &(i, s)) in recs.iter().enumerate() {
            println!("{:>3}. {}\t{s:.4}\t{}", rank + 1, model.items.id(i), describe(i));
        }
    }
    Ok(0)
}
