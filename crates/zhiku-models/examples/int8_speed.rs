//! Per-shape speed of the int8 linear layer against the f32 one (same run, same inputs):
//! `cargo run --release -p zhiku-models --example int8_speed`. The encoder-level number is
//! `zhiku bench --int8`.
use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() {
    let dev = Device::Cpu;
    for (m, k, n) in [(4096, 384, 384), (4096, 384, 1536), (4096, 1536, 384), (1024, 384, 1152)] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.05, (n, k), &dev).unwrap();
        let b = Tensor::zeros(n, candle_core::DType::F32, &dev).unwrap();
        let q = zhiku_models::quant::QuantLinear::new(&w, Some(&b)).unwrap();
        let time = |f: &dyn Fn()| { f(); let t = Instant::now(); for _ in 0..5 { f(); } t.elapsed().as_secs_f64() / 5.0 };
        let tf = time(&|| { zhiku_models::linear::linear(&x, &w, &b).unwrap(); });
        let tq = time(&|| { q.forward(&x).unwrap(); });
        let gflop = 2.0 * (m * k * n) as f64 / 1e9;
        println!("{m}x{k}x{n}: f32 {:.1} GFLOP/s, int8 {:.1} GOP/s, ratio {:.2}", gflop / tf, gflop / tq, tf / tq);
    }
}
