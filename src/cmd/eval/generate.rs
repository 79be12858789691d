//! `koala eval generate` (placeholder, being written).
use anyhow::{Result, bail};

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    bail!("koala eval generate is not built yet")
}
