//! `cargo bench --bench model`: the `model` suite of `appliance bench` (CPU
//! backend, the stated config in src/bench/model.rs), printed as a table,
//! with ratios against baselines measured in the same process: recompute
//! against keeping activations, batch 8 against batch 1 generation.

fn main() -> anyhow::Result<()> {
    let rows = appliance::bench::model::run(5)?;
    let cfg = appliance::bench::model::config();
    println!(
        "model: hidden {}, {} layers, {} heads / {} kv heads, vocab {}, {:.1}M parameters; {} threads",
        cfg.hidden_size,
        cfg.num_layers,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.vocab_size,
        cfg.num_params() as f64 / 1e6,
        rayon::current_num_threads()
    );
    let report = appliance::bench::report(rows);
    print!("{}", appliance::bench::render(&report, None));
    let r = &report.rows;
    println!("ratios: recompute/keep {:.2}x; batch-8/batch-1 generation {:.2}x", r[1].median / r[0].median, r[3].median / r[2].median);
    Ok(())
}
