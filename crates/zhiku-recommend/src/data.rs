//! Interaction logs (user, item, optional rating and timestamp) and item tables (id plus text
//! columns), read from CSV, TSV or JSONL with the errors of the classification readers: file and
//! line for what cannot be read, a counted skip for rows that can be read but not used.

use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use zhiku_data::table::{for_each_row, Column};
use zhiku_data::{DataError, Format};

/// External ids (as written in the files) and their dense indices, in first-seen order.
#[derive(Debug, Clone, Default)]
pub struct IdMap {
    ids: Vec<String>,
    index: HashMap<String, u32>,
}

impl IdMap {
    pub fn from_ids(ids: Vec<String>) -> Self {
        let index = ids.iter().enumerate().map(|(i, s)| (s.clone(), i as u32)).collect();
        Self { ids, index }
    }
    pub fn get(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }
    pub fn get_or_insert(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        let i = self.ids.len() as u32;
        self.ids.push(id.to_string());
        self.index.insert(id.to_string(), i);
        i
    }
    pub fn id(&self, index: u32) -> &str {
        &self.ids[index as usize]
    }
    pub fn ids(&self) -> &[String] {
        &self.ids
    }
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// One interaction: dense user and item indices, its value (the rating, or 1 for an event
/// without one) and time (0 without a timestamp column).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    pub user: u32,
    pub item: u32,
    pub value: f32,
    pub time: i64,
}

/// Which columns hold what.
#[derive(Debug, Clone)]
pub struct InteractionColumns {
    pub user: String,
    pub item: String,
    /// Read when present; rows then need a number there.
    pub rating: String,
    pub time: String,
    /// The event type (view, click, purchase, ...), read when `events` is given.
    pub event: String,
    /// The event types that count as interactions; rows of other types are skipped and counted.
    /// None: every row counts.
    pub events: Option<Vec<String>>,
    pub format: Option<Format>,
}

impl Default for InteractionColumns {
    fn default() -> Self {
        Self { user: "user_id".into(), item: "item_id".into(), rating: "rating".into(), time: "timestamp".into(), event: "event".into(), events: None, format: None }
    }
}

/// What was read and what was left out, and why.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReadReport {
    pub rows: usize,
    pub kept: usize,
    /// Rows for a (user, item) pair seen before: merged into one interaction (the latest wins).
    pub duplicates_merged: usize,
    /// Rows whose item is missing from the item table (skipped).
    pub unknown_items: usize,
    /// Rows whose rating is negative, NaN or infinite (skipped).
    pub invalid_ratings: usize,
    /// Rows of an event type not among those that count (skipped).
    pub other_events: usize,
    /// The first skipped row, as `file:line: why`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_skip: Option<String>,
}

impl ReadReport {
    pub fn skipped(&self) -> usize {
        self.unknown_items + self.invalid_ratings + self.other_events
    }

    /// One line for a person, or None when nothing was skipped or merged.
    pub fn summary(&self, path: &Path) -> Option<String> {
        if self.skipped() == 0 && self.duplicates_merged == 0 {
            return None;
        }
        let mut parts = Vec::new();
        if self.unknown_items > 0 {
            parts.push(format!("{} with an item missing from the item table", self.unknown_items));
        }
        if self.invalid_ratings > 0 {
            parts.push(format!("{} with a negative, NaN or infinite rating", self.invalid_ratings));
        }
        if self.other_events > 0 {
            parts.push(format!("{} of other event types", self.other_events));
        }
        let mut s = format!("{}: kept {} of {} rows", path.display(), self.kept, self.rows);
        if !parts.is_empty() {
            s.push_str(&format!("; skipped {}", parts.join(" and ")));
        }
        if self.duplicates_merged > 0 {
            s.push_str(&format!("; {} repeated (user, item) rows merged into one, the latest kept", self.duplicates_merged));
        }
        if let Some(first) = &self.first_skip {
            s.push_str(&format!(" (first skip: {first})"));
        }
        Some(s)
    }
}

/// An interaction log: one event per (user, item) pair, sorted by user then item.
#[derive(Debug, Clone)]
pub struct Interactions {
    pub users: IdMap,
    pub items: IdMap,
    pub events: Vec<Event>,
    pub has_rating: bool,
    pub has_time: bool,
    pub report: ReadReport,
}

impl Interactions {
    /// Each user's events, one slice per user (the events are sorted by user).
    pub fn by_user(&self) -> impl Iterator<Item = &[Event]> {
        self.events.chunk_by(|a, b| a.user == b.user)
    }
}

/// Reads an interaction log. `users` and `items` seed the id maps (a model's, when a test file is
/// read against it); with `closed_items` an item not in `items` is a counted skip (the item table
/// names the catalogue), otherwise it is added.
pub fn read_interactions(path: &Path, cols: &InteractionColumns, users: IdMap, items: IdMap, closed_items: bool) -> Result<Interactions, DataError> {
    let columns = [
        Column { name: &cols.user, flag: "user-column", required: true },
        Column { name: &cols.item, flag: "item-column", required: true },
        Column { name: &cols.rating, flag: "rating-column", required: false },
        Column { name: &cols.time, flag: "time-column", required: false },
        Column { name: &cols.event, flag: "event-column", required: cols.events.is_some() },
    ];
    let mut out = Interactions { users, items, events: Vec::new(), has_rating: false, has_time: false, report: ReadReport::default() };
    let p = || path.to_path_buf();
    let rows = for_each_row(path, cols.format, &columns, |line, f| {
        let (user, item) = (f[0].unwrap_or_default(), f[1].unwrap_or_default());
        let skip = |report: &mut ReadReport, why: String| {
            if report.first_skip.is_none() {
                report.first_skip = Some(format!("{}:{line}: {why}", path.display()));
            }
        };
        if let Some(kinds) = &cols.events {
            let kind = f[4].unwrap_or_default();
            if !kinds.iter().any(|k| k == kind) {
                out.report.other_events += 1;
                skip(&mut out.report, format!("event type {kind:?}"));
                return Ok(());
            }
        }
        let value = match f[2] {
            None => 1.0,
            Some(s) => {
                out.has_rating = true;
                let v: f32 = s.parse().map_err(|_| DataError::Malformed { path: p(), line, detail: format!("rating {s:?} is not a number") })?;
                if !v.is_finite() || v < 0.0 {
                    out.report.invalid_ratings += 1;
                    skip(&mut out.report, format!("rating {s}"));
                    return Ok(());
                }
                v
            }
        };
        let time = match f[3] {
            None => 0,
            Some(s) => {
                out.has_time = true;
                match s.parse::<i64>() {
                    Ok(t) => t,
                    Err(_) => match s.parse::<f64>() {
                        Ok(t) if t.is_finite() => t as i64,
                        _ => return Err(DataError::Malformed { path: p(), line, detail: format!("timestamp {s:?} is not a number (seconds since 1970)") }),
                    },
                }
            }
        };
        let item = match (closed_items, out.items.get(item)) {
            (_, Some(i)) => i,
            (false, None) => out.items.get_or_insert(item),
            (true, None) => {
                out.report.unknown_items += 1;
                skip(&mut out.report, format!("item {item:?} is not in the item table"));
                return Ok(());
            }
        };
        let user = out.users.get_or_insert(user);
        out.events.push(Event { user, item, value, time });
        Ok(())
    })?;
    out.report.rows = rows;
    // One event per pair: the latest by time, then by line. The sort is stable and events were
    // read in line order, so within a pair and a time the last read comes last; the log is
    // compacted in place (a 10M-row log does not need a second copy).
    out.events.sort_by_key(|e| (e.user, e.item, e.time));
    let mut kept = 0;
    for r in 0..out.events.len() {
        let e = out.events[r];
        if kept > 0 && out.events[kept - 1].user == e.user && out.events[kept - 1].item == e.item {
            out.events[kept - 1] = e;
            out.report.duplicates_merged += 1;
        } else {
            out.events[kept] = e;
            kept += 1;
        }
    }
    out.events.truncate(kept);
    out.events.shrink_to_fit();
    out.report.kept = out.events.len();
    if out.events.is_empty() {
        return Err(DataError::Invalid { path: p(), detail: format!("no usable interactions among {rows} rows ({})", out.report.first_skip.clone().unwrap_or_default()) });
    }
    Ok(out)
}

/// Writes interactions as TSV with the given column names (rating and time only where the log has
/// them), through a temporary file renamed into place.
pub fn write_interactions(path: &Path, log: &Interactions, events: &[Event], cols: &InteractionColumns) -> std::io::Result<()> {
    let tmp = path.with_extension("tsv.tmp");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut header = vec![cols.user.as_str(), cols.item.as_str()];
        if log.has_rating {
            header.push(&cols.rating);
        }
        if log.has_time {
            header.push(&cols.time);
        }
        writeln!(w, "{}", header.join("\t"))?;
        for e in events {
            write!(w, "{}\t{}", log.users.id(e.user), log.items.id(e.item))?;
            if log.has_rating {
                write!(w, "\t{}", e.value)?;
            }
            if log.has_time {
                write!(w, "\t{}", e.time)?;
            }
            writeln!(w)?;
        }
        w.flush()?;
    }
    std::fs::rename(&tmp, path)
}

/// A table keyed by id, items or users: the ids, the other columns' names, and their values
/// (an item's texts and tags, a user's features).
#[derive(Debug, Clone)]
pub struct Table {
    pub ids: IdMap,
    pub columns: Vec<String>,
    /// `values[row][column]`.
    pub values: Vec<Vec<String>>,
}

impl Table {
    /// The text an encoder reads for an item: its non-empty text columns joined by ". ".
    pub fn text(&self, item: u32) -> String {
        let v = &self.values[item as usize];
        v.iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>().join(". ")
    }
}

/// Reads an item table: `id_column` plus `text_columns` (all other columns of a CSV/TSV header,
/// or of the first JSON object, when empty). A repeated item id is an error with its line.
pub fn read_items(path: &Path, id_column: &str, text_columns: &[String], format: Option<Format>) -> Result<Table, DataError> {
    read_table(path, format, ("item", id_column, "item-column"), (text_columns, "item-text-columns"))
}

/// Reads a user table: `id_column` plus `feature_columns` (all other columns when empty), such
/// as age, gender or occupation. A repeated user id is an error with its line.
pub fn read_users(path: &Path, id_column: &str, feature_columns: &[String], format: Option<Format>) -> Result<Table, DataError> {
    read_table(path, format, ("user", id_column, "user-column"), (feature_columns, "user-features"))
}

/// `(what, id column, its flag)` and `(value columns, their flag)`.
fn read_table(path: &Path, format: Option<Format>, id: (&str, &str, &'static str), value_columns: (&[String], &'static str)) -> Result<Table, DataError> {
    let (what, id_column, id_flag) = id;
    let in_file = zhiku_data::table::column_names(path, format)?;
    let names: Vec<String> = if value_columns.0.is_empty() {
        in_file.iter().filter(|c| *c != id_column).cloned().collect()
    } else {
        // A named column must exist: a typo would otherwise read as a column of empty cells.
        if let Some(c) = value_columns.0.iter().find(|c| !in_file.contains(c)) {
            return Err(DataError::MissingColumn { path: path.to_path_buf(), line: 1, column: c.clone(), available: in_file.join(", "), flag: value_columns.1 });
        }
        value_columns.0.to_vec()
    };
    let mut columns = vec![Column { name: id_column, flag: id_flag, required: true }];
    columns.extend(names.iter().map(|c| Column { name: c, flag: value_columns.1, required: false }));
    let mut table = Table { ids: IdMap::default(), columns: names.clone(), values: Vec::new() };
    for_each_row(path, format, &columns, |line, f| {
        let id = f[0].unwrap_or_default();
        if table.ids.get(id).is_some() {
            return Err(DataError::Malformed { path: path.to_path_buf(), line, detail: format!("{what} {id:?} is listed twice") });
        }
        table.ids.get_or_insert(id);
        table.values.push(f[1..].iter().map(|v| v.unwrap_or_default().to_string()).collect());
        Ok(())
    })?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn duplicates_merge_and_bad_rows_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "r.tsv",
            "user_id\titem_id\trating\ttimestamp\nu1\ti1\t3\t10\nu1\ti1\t5\t20\nu2\ti2\tnan\t5\nu2\ti1\t-1\t5\nu2\ti3\t4\t7\n",
        );
        let log = read_interactions(&p, &InteractionColumns::default(), IdMap::default(), IdMap::default(), false).unwrap();
        assert_eq!(log.events.len(), 2);
        assert_eq!(log.events[0].value, 5.0, "the latest of the repeated pair");
        assert_eq!(log.report.duplicates_merged, 1);
        assert_eq!(log.report.invalid_ratings, 2);
        assert!(log.report.first_skip.as_deref().unwrap().contains("r.tsv:4"), "{:?}", log.report.first_skip);
        let summary = log.report.summary(&p).unwrap();
        assert!(summary.contains("kept 2 of 5 rows"), "{summary}");
    }

    #[test]
    fn unknown_items_are_skipped_against_a_closed_catalogue() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "r.csv", "user_id,item_id\nu1,a\nu1,zz\n");
        let items = IdMap::from_ids(vec!["a".into()]);
        let log = read_interactions(&p, &InteractionColumns::default(), IdMap::default(), items, true).unwrap();
        assert_eq!((log.events.len(), log.report.unknown_items), (1, 1));
        assert!(!log.has_rating && !log.has_time);
    }

    #[test]
    fn unreadable_rows_and_empty_logs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("a.tsv", "user_id\titem_id\trating\nu\ti\tgood\n", "a.tsv:2"),
            ("b.tsv", "user_id\titem_id\n", "no examples"),
            ("c.tsv", "user\titem_id\nu\ti\n", "--user-column"),
            ("d.tsv", "user_id\titem_id\trating\nu\ti\tnan\n", "no usable interactions"),
        ];
        for (name, body, want) in cases {
            let p = write(dir.path(), name, body);
            let e = read_interactions(&p, &InteractionColumns::default(), IdMap::default(), IdMap::default(), false).unwrap_err().to_string();
            assert!(e.contains(want), "{name}: {e}");
        }
    }

    #[test]
    fn item_tables_join_their_text_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "items.tsv", "item_id\ttitle\tyear\n1\tToy Story\t1995\n2\tHeat\t\n");
        let items = read_items(&p, "item_id", &[], None).unwrap();
        assert_eq!(items.text(0), "Toy Story. 1995");
        assert_eq!(items.text(1), "Heat");
        let p = write(dir.path(), "dup.tsv", "item_id\ttitle\n1\ta\n1\tb\n");
        let e = read_items(&p, "item_id", &[], None).unwrap_err().to_string();
        assert!(e.contains("dup.tsv:3") && e.contains("twice"), "{e}");
    }
}
