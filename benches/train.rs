//! `cargo bench --bench train`: the `train` suite of `appliance bench` (CPU
//! backend; the tiny model and the ~100M config of src/bench/train.rs),
//! printed as a table. Its ratios are against baselines measured in the
//! same process: the step's time over a forward of the same batch, and the
//! step's split into forward, backward and optimizer.

fn main() -> anyhow::Result<()> {
    for s in appliance::bench::train::shapes() {
        println!("{}", appliance::bench::train::describe(&s));
    }
    println!("{} threads", rayon::current_num_threads());
    let rows = appliance::bench::train::run(5)?;
    let report = appliance::bench::report(rows);
    print!("{}", appliance::bench::render(&report, None));
    Ok(())
}
