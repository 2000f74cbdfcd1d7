fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let lm = zhiku_infer::LanguageModel::open(std::path::Path::new(&args[1]))?;
    let what = args.get(2).map(String::as_str).unwrap_or("all");
    if what == "prefill" || what == "all" {
        println!("prefill 512: {:.1} tok/s", zhiku_infer::bench::prefill(&lm, 512, 2)?);
    }
    if what == "decode" || what == "all" {
        for s in [1, 4, 16] {
            println!("decode x{s}: {:.1} tok/s", zhiku_infer::bench::decode(&lm, s, 32)?);
        }
    }
    Ok(())
}
