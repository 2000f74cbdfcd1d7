//! Mixed precision: master weights stay in f32 (they are what the optimiser updates and what
//! checkpoints hold), while the forward and backward passes run in bf16 or fp16. Each layer
//! casts its weights to the compute type as it uses them; the cast is differentiable, so the
//! gradients come back to the f32 masters in f32. LayerNorm, the attention softmax and the loss
//! run in f32, as in PyTorch's autocast. Meant for GPUs: candle's CPU kernels have no fast
//! half-precision products, so on the CPU fp32 is faster.

use candle_core::DType;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// bfloat16 compute: f32's range, so no loss scaling is needed.
    Bf16,
    /// float16 compute: needs dynamic loss scaling (done by the trainer) against underflow.
    Fp16,
}

impl Precision {
    /// The dtype activations are computed in (`None` for fp32: the model's own dtype).
    pub fn compute_dtype(self) -> Option<DType> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(DType::BF16),
            Precision::Fp16 => Some(DType::F16),
        }
    }
}

impl FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "fp16" | "f16" | "float16" | "half" => Ok(Precision::Fp16),
            other => anyhow::bail!("unknown precision {other:?}: use fp32, bf16 or fp16"),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        })
    }
}
