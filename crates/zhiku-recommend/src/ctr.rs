//! The text ranker's data and blend. `zhiku train --task ctr` fine-tunes an encoder as a
//! sentence-pair classifier on (the user's history as text, a candidate item's text) → click or
//! skip; [`pairs`] builds those examples from an interaction log and an item table, and
//! [`rerank`] reorders a recommender's top candidates by the ranker's click probabilities.
//!
//! Examples, per user with at least two interactions: `per_user` positives drawn at random from
//! the user's items, each with the user's other items as history (most recent first, up to
//! `history`), and `negatives` items per positive that the user never touched: drawn from the
//! user's candidates when a candidate generator gives them (the items a recommender ranks high
//! for the user, which is what the ranker will have to reorder: hard negatives), else by
//! popularity (so that the ranker must learn taste, not popularity). A random `dev_fraction` of
//! the users is held out for the trainer's dev loss.

use crate::data::{Event, Interactions, Table};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CtrOptions {
    /// Items of the history shown to the ranker, most recent first.
    pub history: usize,
    /// Unclicked items per clicked one.
    pub negatives: usize,
    /// Clicked items drawn per user.
    pub per_user: usize,
    pub dev_fraction: f64,
    pub seed: u64,
}

impl Default for CtrOptions {
    fn default() -> Self {
        Self { history: 10, negatives: 3, per_user: 5, dev_fraction: 0.1, seed: 42 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CtrExample {
    pub user: u32,
    pub history: String,
    pub candidate: String,
    pub click: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CtrData {
    #[serde(skip)]
    pub train: Vec<CtrExample>,
    #[serde(skip)]
    pub dev: Vec<CtrExample>,
    pub train_examples: usize,
    pub dev_examples: usize,
    pub users: usize,
    /// Users with fewer than two interactions: no history to learn from.
    pub users_skipped: usize,
}

/// The text the ranker reads for a history: the items' texts, most recent first, joined by " | ".
pub fn history_text(items: &Table, history: &[u32], max: usize) -> String {
    history.iter().take(max).map(|&i| items.text(i)).filter(|t| !t.is_empty()).collect::<Vec<_>>().join(" | ")
}

/// A user's items, most recent first (ties by item index, for a fixed order).
pub fn recent_first(events: &[Event]) -> Vec<u32> {
    let mut e: Vec<&Event> = events.iter().collect();
    e.sort_by(|a, b| b.time.cmp(&a.time).then(a.item.cmp(&b.item)));
    e.into_iter().map(|e| e.item).collect()
}

/// Builds the training and dev examples. `log`'s item indices must be `items`' (read the log
/// with the item table's ids).
/// `candidates`, when given, lists a user's candidate items (indices of `items`) for hard
/// negatives; users it gives too few for get popularity-drawn ones for the rest.
pub fn pairs(log: &Interactions, items: &Table, o: &CtrOptions, candidates: Option<&dyn Fn(u32) -> Vec<u32>>) -> CtrData {
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let n_items = items.ids.len();
    let mut counts = vec![0u64; n_items];
    for e in &log.events {
        counts[e.item as usize] += 1;
    }
    let cumulative: Vec<u64> = counts.iter().scan(0u64, |acc, &c| {
        *acc += c;
        Some(*acc)
    }).collect();
    let total = cumulative.last().copied().unwrap_or(0);
    let by_user: Vec<&[Event]> = log.by_user().collect();
    let mut order: Vec<usize> = (0..by_user.len()).collect();
    order.shuffle(&mut rng);
    let n_dev = ((by_user.len() as f64) * o.dev_fraction).round() as usize;
    let mut dev_user = vec![false; by_user.len()];
    for &u in &order[..n_dev.min(order.len())] {
        dev_user[u] = true;
    }
    let mut data = CtrData { users: by_user.len(), ..Default::default() };
    for (slot, events) in by_user.iter().enumerate() {
        if events.len() < 2 || total == 0 {
            data.users_skipped += 1;
            continue;
        }
        let recent = recent_first(events);
        let mut chosen: Vec<usize> = (0..recent.len()).collect();
        chosen.shuffle(&mut rng);
        let user = events[0].user;
        let hard: Vec<u32> = candidates.map(|c| c(user)).unwrap_or_default().into_iter().filter(|&i| !events.iter().any(|e| e.item == i)).collect();
        let out = if dev_user[slot] { &mut data.dev } else { &mut data.train };
        for &p in chosen.iter().take(o.per_user) {
            let history: Vec<u32> = recent.iter().enumerate().filter(|&(j, _)| j != p).map(|(_, &i)| i).collect();
            let history = history_text(items, &history, o.history);
            out.push(CtrExample { user, history: history.clone(), candidate: items.text(recent[p]), click: true });
            let mut drawn = 0;
            for &item in hard.choose_multiple(&mut rng, o.negatives) {
                out.push(CtrExample { user, history: history.clone(), candidate: items.text(item), click: false });
                drawn += 1;
            }
            // Rejection sampling by popularity; bounded, for users who touched nearly everything.
            for _ in 0..o.negatives * 50 {
                if drawn == o.negatives {
                    break;
                }
                let r = rng.random_range(0..total);
                let item = cumulative.partition_point(|&c| c <= r) as u32;
                if events.iter().any(|e| e.item == item) {
                    continue;
                }
                out.push(CtrExample { user, history: history.clone(), candidate: items.text(item), click: false });
                drawn += 1;
            }
        }
    }
    data.train_examples = data.train.len();
    data.dev_examples = data.dev.len();
    data
}

/// The item texts as the ranker reads them, as JSONL rows `{"item_id", "text"}` (exact, whatever
/// the text holds), for reading back with `read_items(path, "item_id", ["text"])`.
pub fn item_texts_jsonl(items: &Table) -> String {
    let mut s = String::new();
    for (i, id) in items.ids.ids().iter().enumerate() {
        s.push_str(&serde_json::json!({"item_id": id, "text": items.text(i as u32)}).to_string());
        s.push('\n');
    }
    s
}

/// Examples as JSONL rows for the classification reader: `{"text": history, "pair": candidate,
/// "label": "click" | "skip"}`.
pub fn jsonl(examples: &[CtrExample]) -> String {
    let mut s = String::new();
    for e in examples {
        let label = if e.click { "click" } else { "skip" };
        s.push_str(&serde_json::json!({"text": e.history, "pair": e.candidate, "label": label}).to_string());
        s.push('\n');
    }
    s
}

/// Candidates (best first, with the recommender's scores) reordered by
/// (1 − weight)·z(score) + weight·z(logit p), z standardising within the list: weight 1 ranks by
/// the text ranker alone, 0 keeps the recommender's order.
pub fn rerank(candidates: &[(u32, f32)], click_probability: &[f32], weight: f32) -> Vec<(u32, f32)> {
    assert_eq!(candidates.len(), click_probability.len());
    let z = |v: Vec<f32>| -> Vec<f32> {
        let n = v.len().max(1) as f32;
        let mean = v.iter().sum::<f32>() / n;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
        v.iter().map(|x| if sd > 1e-12 { (x - mean) / sd } else { 0.0 }).collect()
    };
    let base = z(candidates.iter().map(|c| c.1).collect());
    let logit = z(click_probability.iter().map(|&p| {
        let p = p.clamp(1e-6, 1.0 - 1e-6);
        (p / (1.0 - p)).ln()
    }).collect());
    let mut out: Vec<(u32, f32)> = candidates.iter().zip(base.iter().zip(&logit)).map(|(c, (b, l))| (c.0, (1.0 - weight) * b + weight * l)).collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::IdMap;

    fn items(n: usize) -> Table {
        Table { ids: IdMap::from_ids((0..n).map(|i| format!("i{i}")).collect()), columns: vec!["title".into()], values: (0..n).map(|i| vec![format!("title {i}")]).collect() }
    }

    fn log(events: Vec<(u32, u32, i64)>, users: usize, n_items: usize) -> Interactions {
        let mut events: Vec<Event> = events.into_iter().map(|(user, item, time)| Event { user, item, value: 1.0, time }).collect();
        events.sort_by_key(|e| (e.user, e.item));
        Interactions {
            users: IdMap::from_ids((0..users).map(|i| format!("u{i}")).collect()),
            items: IdMap::from_ids((0..n_items).map(|i| format!("i{i}")).collect()),
            events,
            has_rating: false,
            has_time: true,
            report: Default::default(),
        }
    }

    #[test]
    fn examples_hold_history_positive_and_unseen_negatives() {
        let items = items(20);
        // User 0: items 0, 1, 2 at times 3, 1, 2. User 1: one item only (skipped). User 2: 5..10.
        let mut ev = vec![(0, 0, 3), (0, 1, 1), (0, 2, 2), (1, 4, 1)];
        ev.extend((5..10).map(|i| (2, i, i as i64)));
        ev.extend((0..20).map(|i| (3, i, 0))); // a user who saw everything: no negatives possible
        let data = pairs(&log(ev, 4, 20), &items, &CtrOptions { history: 2, negatives: 2, per_user: 2, dev_fraction: 0.0, seed: 7 }, None);
        assert_eq!((data.users, data.users_skipped, data.dev_examples), (4, 1, 0));
        for e in &data.train {
            match e.user {
                0 => {
                    let seen = ["title 0", "title 1", "title 2"];
                    assert_eq!(seen.contains(&e.candidate.as_str()), e.click, "{e:?}");
                    // History: the two other items, most recent first.
                    let parts: Vec<&str> = e.history.split(" | ").collect();
                    assert_eq!(parts.len(), 2);
                    assert!(!parts.contains(&e.candidate.as_str()) || !e.click);
                }
                2 => assert_eq!((5..10).any(|i| e.candidate == format!("title {i}")), e.click),
                3 => assert!(e.click, "user 3 touched every item, so no negative exists"),
                _ => panic!("user {} has one interaction and must be skipped", e.user),
            }
        }
        let u0: Vec<_> = data.train.iter().filter(|e| e.user == 0).collect();
        assert_eq!(u0.iter().filter(|e| e.click).count(), 2);
        assert_eq!(u0.iter().filter(|e| !e.click).count(), 4);
        let first = u0.iter().find(|e| e.click && e.candidate == "title 1");
        if let Some(e) = first {
            assert_eq!(e.history, "title 0 | title 2", "most recent first");
        }
        // Same seed, same examples; the dev share holds whole users.
        let again = pairs(&log(vec![(0, 0, 3), (0, 1, 1), (0, 2, 2), (1, 4, 1)], 2, 20), &items, &CtrOptions::default(), None);
        assert_eq!(again, pairs(&log(vec![(0, 0, 3), (0, 1, 1), (0, 2, 2), (1, 4, 1)], 2, 20), &items, &CtrOptions::default(), None));
        let split = pairs(&log((0..40).flat_map(|u| [(u, 0, 1), (u, 1 + u % 5, 2)]).collect(), 40, 20), &items, &CtrOptions { dev_fraction: 0.25, ..Default::default() }, None);
        let dev_users: std::collections::HashSet<u32> = split.dev.iter().map(|e| e.user).collect();
        assert_eq!(dev_users.len(), 10);
        assert!(split.train.iter().all(|e| !dev_users.contains(&e.user)));
    }

    #[test]
    fn hard_negatives_come_from_the_candidates() {
        let items = items(20);
        let ev: Vec<(u32, u32, i64)> = (0..4).map(|i| (0, i, i as i64)).chain((10..14).map(|i| (1, i, 0))).collect();
        // The generator proposes two of the user's own items (never negatives) and items 7, 8.
        let cands = |_u: u32| vec![0, 1, 7, 8];
        let data = pairs(&log(ev, 2, 20), &items, &CtrOptions { negatives: 2, per_user: 2, dev_fraction: 0.0, ..Default::default() }, Some(&cands));
        let skips: Vec<&str> = data.train.iter().filter(|e| !e.click && e.user == 0).map(|e| e.candidate.as_str()).collect();
        assert_eq!(skips.len(), 4);
        assert!(skips.iter().all(|s| *s == "title 7" || *s == "title 8"), "{skips:?}");
        // User 1's own items include none of 7, 8: same; a generator with one usable item leaves
        // the rest to popularity.
        let one = |_u: u32| vec![7];
        let data = pairs(&log(vec![(0, 0, 1), (0, 1, 2), (1, 2, 1), (1, 3, 1)], 2, 20), &items, &CtrOptions { negatives: 2, per_user: 1, dev_fraction: 0.0, ..Default::default() }, Some(&one));
        assert_eq!(data.train.iter().filter(|e| !e.click && e.user == 0 && e.candidate == "title 7").count(), 1);
        assert_eq!(data.train.iter().filter(|e| !e.click && e.user == 0).count(), 2);
    }

    #[test]
    fn item_texts_read_back_exactly() {
        let mut t = items(2);
        t.values[1] = vec!["He said \"hi\"\tthen, | left".into()];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ctr-items.jsonl");
        std::fs::write(&p, item_texts_jsonl(&t)).unwrap();
        let back = crate::data::read_items(&p, "item_id", &["text".to_string()], None).unwrap();
        assert_eq!(back.ids.ids(), t.ids.ids());
        assert_eq!((back.text(0), back.text(1)), (t.text(0), t.text(1)));
    }

    #[test]
    fn rerank_blends_standardised_scores() {
        let cands = [(7, 3.0), (8, 2.0), (9, 1.0)];
        let p = [0.1, 0.5, 0.9];
        assert_eq!(rerank(&cands, &p, 0.0).iter().map(|c| c.0).collect::<Vec<_>>(), vec![7, 8, 9]);
        assert_eq!(rerank(&cands, &p, 1.0).iter().map(|c| c.0).collect::<Vec<_>>(), vec![9, 8, 7]);
        // Equal weights: the middle item, fair on both counts, beats one strong on one only.
        let half = rerank(&cands, &[0.2, 0.5, 0.6], 0.5);
        assert_eq!(half.iter().map(|c| c.0).collect::<Vec<_>>(), vec![8, 7, 9], "{half:?}");
        let row: serde_json::Value = serde_json::from_str(jsonl(&[CtrExample { user: 0, history: "a".into(), candidate: "b".into(), click: true }]).trim()).unwrap();
        assert_eq!(row, serde_json::json!({"text": "a", "pair": "b", "label": "click"}));
    }
}
