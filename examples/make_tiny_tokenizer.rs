//! Regenerates `configs/tiny/tokenizer.json` from `configs/tiny/corpus.txt`.
//!
//! Owns only the file I/O around `appliance::model::tokenizer::build_tiny_tokenizer_json`;
//! the training itself lives in the library so `tests/tokenizer.rs` can check
//! that the committed file is reproducible byte for byte.
//!
//! Run: `cargo run --example make_tiny_tokenizer`

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let root = env!("CARGO_MANIFEST_DIR");
    let corpus_path = format!("{root}/configs/tiny/corpus.txt");
    let out_path = format!("{root}/configs/tiny/tokenizer.json");
    let corpus = std::fs::read_to_string(&corpus_path)
        .with_context(|| format!("cannot read corpus {corpus_path}"))?;
    let json = appliance::model::tokenizer::build_tiny_tokenizer_json(&corpus)?;
    std::fs::write(&out_path, &json).with_context(|| format!("cannot write {out_path}"))?;
    println!("wrote {out_path} ({} bytes)", json.len());
    Ok(())
}
