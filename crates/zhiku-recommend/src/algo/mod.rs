//! The recommendation algorithms, each a plain function from the training matrix (and item
//! texts) to its fitted weights. [`crate::model::Recommender`] holds the result and scores with it.

pub mod als;
pub mod bpr;
pub mod content;
pub mod ease;
pub mod hybrid;
pub mod itemknn;

use serde::{Deserialize, Serialize};

/// User and item factor matrices (row-major, `dim` columns), plus item biases for BPR.
#[derive(Debug, Clone, PartialEq)]
pub struct Factors {
    pub dim: usize,
    pub user: Vec<f32>,
    pub item: Vec<f32>,
    pub item_bias: Option<Vec<f32>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Popularity,
    ItemKnn,
    Bpr,
    Als,
    Ease,
    Content,
    Hybrid,
}

impl Algorithm {
    pub const ALL: [Algorithm; 7] = [Algorithm::Popularity, Algorithm::ItemKnn, Algorithm::Bpr, Algorithm::Als, Algorithm::Ease, Algorithm::Content, Algorithm::Hybrid];

    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "popularity" => Algorithm::Popularity,
            "itemknn" | "item-knn" => Algorithm::ItemKnn,
            "bpr" => Algorithm::Bpr,
            "als" | "ials" => Algorithm::Als,
            "ease" => Algorithm::Ease,
            "content" => Algorithm::Content,
            "hybrid" => Algorithm::Hybrid,
            _ => anyhow::bail!("unknown algorithm {s:?}: expected popularity, itemknn, bpr, als, ease, content or hybrid"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Popularity => "popularity",
            Algorithm::ItemKnn => "itemknn",
            Algorithm::Bpr => "bpr",
            Algorithm::Als => "als",
            Algorithm::Ease => "ease",
            Algorithm::Content => "content",
            Algorithm::Hybrid => "hybrid",
        }
    }
}

/// Every algorithm's hyperparameters (the ones of the algorithm trained are used).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Params {
    pub itemknn: itemknn::ItemKnnParams,
    pub bpr: bpr::BprParams,
    pub als: als::AlsParams,
    pub ease: ease::EaseParams,
    pub hybrid: hybrid::HybridParams,
}

impl Algorithm {
    /// Whether the algorithm reads item texts (and so needs an item table and an encoder).
    pub fn needs_text(self) -> bool {
        matches!(self, Algorithm::Content | Algorithm::Hybrid)
    }
}
