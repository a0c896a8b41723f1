//! `appliance tokenize`: text to token ids, as a JSON array on stdout.

use crate::model::tokenizer::Tokenizer;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// tokenizer.json (default: the embedded tiny tokenizer).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// The text to encode (special tokens such as <|im_start|> are not parsed).
    pub text: String,
}

pub fn run(a: Args) -> Result<()> {
    let tok = match &a.tokenizer {
        Some(p) => Tokenizer::from_file(p)?,
        None => Tokenizer::tiny()?,
    };
    let ids = tok.encode(&a.text)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
