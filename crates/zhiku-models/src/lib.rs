//! Model definitions and loading for zhiku.
//!
//! Everything here turns text into tensors and tensors into hidden states or logits:
//! Hugging Face model folders ([`ModelFolder`]), tokenizers ([`TextTokenizer`]), a BERT
//! encoder written on candle's differentiable ops ([`BertModel`]) so that every parameter
//! receives a gradient, and the sequence-classification head ([`SequenceClassifier`]).
//! Training lives in `zhiku-train`; this crate knows nothing about optimisers or data files.

pub mod bert;
pub mod blocks;
pub mod classifier;
pub mod clip;
pub mod config;
pub mod decoder;
pub mod float_env;
pub mod folder;
mod byte_reader;
pub mod ctranslate2;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod attention;
pub mod kernels;
pub mod layers;
pub mod linear;
pub mod params;
pub mod peft;
pub mod precision;
pub mod qmatmul;
pub mod quant;
pub mod shard;
pub mod slice_ops;
pub mod testing;
pub mod text_model;
pub mod tokenizer;
pub mod whisper;
pub mod whisper_folder;

pub use bert::BertModel;
pub use classifier::{ClassifierConfig, Pooling, ProblemType, SequenceClassifier};
pub use config::BertConfig;
pub use folder::{ModelFolder, WeightsFile};
pub use layers::DropoutRng;
pub use params::{Params, WeightSource};
pub use peft::{AdapterFolder, PeftConfig};
pub use precision::Precision;
pub use text_model::{BaseCache, EmbeddingPooling, TextModel};
pub use tokenizer::{EncodedBatch, TextTokenizer, TokenizedText};

/// The device the engine runs on: the first CUDA GPU when built with `--features cuda` and one
/// is present (unless `ZHIKU_DEVICE=cpu`), otherwise the CPU.
pub fn default_device() -> candle_core::Device {
    #[cfg(feature = "cuda")]
    {
        if std::env::var("ZHIKU_DEVICE").as_deref() != Ok("cpu") {
            if let Ok(dev) = candle_core::Device::new_cuda(0) {
                return dev;
            }
        }
    }
    candle_core::Device::Cpu
}
