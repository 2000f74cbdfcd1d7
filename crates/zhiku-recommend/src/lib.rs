//! Recommendation from behaviour and item text.
//!
//! Interaction logs and item tables are read with file-and-line errors ([`data`]), split by the
//! published protocols ([`split`]), and fitted by one of the algorithms in [`algo`]: popularity,
//! item-kNN, BPR, implicit ALS, EASE, or content vectors from any encoder zhiku loads. Training
//! tunes each algorithm's hyperparameters on a validation split carved from the training data
//! ([`train`]); [`metrics`] scores the result as Microsoft Recommenders does; [`model`] keeps it
//! in a folder and answers queries, known users or a bare history (fold-in).

pub mod algo;
pub mod ctr;
pub mod data;
pub mod matrix;
pub mod metrics;
pub mod model;
pub mod segments;
pub mod split;
pub mod train;

pub use algo::{Algorithm, Params};
pub use data::{read_interactions, read_items, read_users, Event, IdMap, InteractionColumns, Interactions, Table};
pub use model::{Query, Recommender};
