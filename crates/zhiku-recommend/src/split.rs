//! Train/test splits of an interaction log, seeded:
//! - `random`: each user's interactions shuffled and cut at `round(n * (1 - test_ratio))`, the
//!   protocol of the Microsoft Recommenders MovieLens table (`python_stratified_split`, which
//!   rounds half to even as Python does); a user with one interaction stays in training;
//! - `last`: each user's latest interaction by time goes to test (leave-last-out), users with
//!   a single interaction stay in training;
//! - `cold-items`: items drawn at random until their interactions reach `test_ratio` of the log;
//!   all of their interactions go to test, so no test item has a training interaction;
//! - `cold-users`: the same with users: no test user has a training interaction (what a
//!   fallback from user features is measured on).

use crate::data::Event;
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Random,
    Last,
    ColdItems,
    ColdUsers,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "random" => Protocol::Random,
            "last" => Protocol::Last,
            "cold-items" => Protocol::ColdItems,
            "cold-users" => Protocol::ColdUsers,
            _ => bail!("unknown protocol {s:?}: expected random, last, cold-items or cold-users"),
        })
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SplitSummary {
    pub train: usize,
    pub test: usize,
    pub test_users: usize,
    pub test_items: usize,
    /// Users whose every interaction stayed in training (too few to hold one out).
    pub users_only_in_train: usize,
}

/// Round half to even, as Python's `round`.
fn round_half_even(x: f64) -> usize {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r as i64 % 2 != 0 {
        (r - 1.0) as usize
    } else {
        r as usize
    }
}

/// Splits `events` (sorted by user, as `read_interactions` leaves them) into (train, test).
pub fn split(events: &[Event], n_items: usize, protocol: Protocol, test_ratio: f64, seed: u64) -> Result<(Vec<Event>, Vec<Event>, SplitSummary)> {
    if !(0.0 < test_ratio && test_ratio < 1.0) {
        bail!("--test-ratio must lie between 0 and 1, got {test_ratio}");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    let mut only_train = 0;
    match protocol {
        Protocol::Random | Protocol::Last => {
            for group in events.chunk_by(|a, b| a.user == b.user) {
                let mut g = group.to_vec();
                if protocol == Protocol::Random {
                    g.shuffle(&mut rng);
                } else {
                    g.sort_by_key(|e| e.time); // stable: ties keep item order
                }
                let cut = match protocol {
                    Protocol::Random => round_half_even(g.len() as f64 * (1.0 - test_ratio)),
                    _ => g.len().saturating_sub(1).max(1),
                };
                if cut >= g.len() {
                    only_train += 1;
                }
                train.extend_from_slice(&g[..cut.min(g.len())]);
                test.extend_from_slice(&g[cut.min(g.len())..]);
            }
        }
        Protocol::ColdItems => {
            let cold = cold_keys(events, |e| e.item, n_items, test_ratio, &mut rng);
            (train, test) = events.iter().partition(|e: &&Event| !cold[e.item as usize]);
            let test_users: std::collections::BTreeSet<u32> = test.iter().map(|e| e.user).collect();
            only_train = events.chunk_by(|a, b| a.user == b.user).count() - test_users.len();
        }
        Protocol::ColdUsers => {
            let n_users = events.iter().map(|e| e.user as usize + 1).max().unwrap_or(0);
            let cold = cold_keys(events, |e| e.user, n_users, test_ratio, &mut rng);
            (train, test) = events.iter().partition(|e: &&Event| !cold[e.user as usize]);
            only_train = events.chunk_by(|a, b| a.user == b.user).count() - cold.iter().filter(|&&c| c).count();
        }
    }
    if test.is_empty() {
        bail!("the split left no test interactions: too few interactions per user for protocol {protocol:?}");
    }
    let summary = SplitSummary {
        train: train.len(),
        test: test.len(),
        test_users: test.iter().map(|e| e.user).collect::<std::collections::BTreeSet<_>>().len(),
        test_items: test.iter().map(|e| e.item).collect::<std::collections::BTreeSet<_>>().len(),
        users_only_in_train: only_train,
    };
    Ok((train, test, summary))
}

/// Keys (items or users) drawn at random until their interactions reach `ratio` of the log.
fn cold_keys(events: &[Event], key: impl Fn(&Event) -> u32, n_keys: usize, ratio: f64, rng: &mut ChaCha8Rng) -> Vec<bool> {
    let mut per_key = vec![0usize; n_keys];
    for e in events {
        per_key[key(e) as usize] += 1;
    }
    let mut keys: Vec<u32> = (0..n_keys as u32).filter(|&k| per_key[k as usize] > 0).collect();
    keys.shuffle(rng);
    let target = (events.len() as f64 * ratio).round() as usize;
    let mut cold = vec![false; n_keys];
    let mut taken = 0;
    for k in keys {
        if taken >= target {
            break;
        }
        cold[k as usize] = true;
        taken += per_key[k as usize];
    }
    cold
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(users: u32, per_user: u32) -> Vec<Event> {
        let mut v = Vec::new();
        for u in 0..users {
            for k in 0..per_user + u % 3 {
                v.push(Event { user: u, item: (u * 7 + k * 3) % 50, value: 1.0, time: (100 - k) as i64 });
            }
        }
        v
    }

    #[test]
    fn python_rounding() {
        assert_eq!([0.5, 1.5, 2.5, 3.4, 4.6].map(round_half_even), [0, 2, 2, 3, 5]);
    }

    #[test]
    fn random_split_holds_out_a_quarter_per_user_and_is_seeded() {
        let ev = log(20, 8);
        let (train, test, s) = split(&ev, 50, Protocol::Random, 0.25, 42).unwrap();
        assert_eq!(train.len() + test.len(), ev.len());
        for u in 0..20 {
            let n = ev.iter().filter(|e| e.user == u).count();
            let t = test.iter().filter(|e| e.user == u).count();
            assert_eq!(t, n - round_half_even(n as f64 * 0.75), "user {u}");
        }
        assert_eq!(s.test_users, 20);
        let (_, again, _) = split(&ev, 50, Protocol::Random, 0.25, 42).unwrap();
        assert_eq!(again, test);
        let (_, other, _) = split(&ev, 50, Protocol::Random, 0.25, 7).unwrap();
        assert_ne!(other, test);
    }

    #[test]
    fn last_split_holds_out_the_latest() {
        let mut ev = log(5, 4);
        ev.push(Event { user: 9, item: 1, value: 1.0, time: 1 });
        let (_, test, s) = split(&ev, 50, Protocol::Last, 0.25, 42).unwrap();
        assert_eq!(test.len(), 5);
        for e in &test {
            let latest = ev.iter().filter(|x| x.user == e.user).map(|x| x.time).max().unwrap();
            assert_eq!(e.time, latest);
        }
        assert_eq!(s.users_only_in_train, 1);
    }

    #[test]
    fn cold_items_never_reach_training() {
        let ev = log(30, 10);
        let (train, test, _) = split(&ev, 50, Protocol::ColdItems, 0.25, 3).unwrap();
        let cold: std::collections::HashSet<u32> = test.iter().map(|e| e.item).collect();
        assert!(train.iter().all(|e| !cold.contains(&e.item)));
        let share = test.len() as f64 / ev.len() as f64;
        assert!((0.2..0.45).contains(&share), "{share}");
        assert!(split(&ev, 50, Protocol::Random, 1.5, 1).is_err());
    }

    #[test]
    fn cold_users_never_reach_training() {
        let ev = log(40, 10);
        let (train, test, s) = split(&ev, 50, Protocol::ColdUsers, 0.25, 3).unwrap();
        let cold: std::collections::HashSet<u32> = test.iter().map(|e| e.user).collect();
        assert!(train.iter().all(|e| !cold.contains(&e.user)));
        // Whole users: each test user brings every interaction.
        for &u in &cold {
            assert_eq!(test.iter().filter(|e| e.user == u).count(), ev.iter().filter(|e| e.user == u).count());
        }
        let share = test.len() as f64 / ev.len() as f64;
        assert!((0.2..0.35).contains(&share), "{share}");
        assert_eq!(s.users_only_in_train, 40 - cold.len());
        let (_, again, _) = split(&ev, 50, Protocol::ColdUsers, 0.25, 3).unwrap();
        assert_eq!(again, test);
    }
}
