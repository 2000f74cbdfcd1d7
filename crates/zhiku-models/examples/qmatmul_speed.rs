//! Speed of each block format's product at a few row counts (decode = 1 row, prefill = 512),
//! with the weight bytes read per second and the multiply-adds per second.
use std::time::Instant;
use zhiku_models::blocks::GgmlType;
use zhiku_models::qmatmul::QMatrix;

fn main() {
    let (rows, cols) = (4864, 1024);
    let args: Vec<String> = std::env::args().collect();
    let types: Vec<GgmlType> = if args.len() > 1 { GgmlType::ALL.into_iter().filter(|t| args[1..].iter().any(|a| a == t.name())).collect() } else { GgmlType::ALL.into_iter().filter(|t| t.is_quantized()).collect() };
    let w: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
    println!("kernel {:?}; matrix {rows}x{cols}", zhiku_models::qmatmul::kernel());
    for ty in types {
        let m = QMatrix::from_f32(w.clone(), rows, cols, ty).unwrap();
        let ns: Vec<usize> = std::env::var("ROWS").ok().map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect()).unwrap_or(vec![1, 4, 16, 512]);
        for n in ns {
            let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut y = vec![0f32; n * rows];
            m.matmul(&x, n, &mut y);
            let reps = if n >= 512 { 3 } else { std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(200) };
            let t = Instant::now();
            for _ in 0..reps {
                m.matmul(&x, n, &mut y);
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!("{:5} n={n:4}: {:8.3} ms  {:6.1} GB/s weights  {:7.1} GMAC/s", ty.name(), s * 1e3, m.weight_bytes() as f64 / s / 1e9, (rows * cols * n) as f64 / s / 1e9);
        }
    }
}
