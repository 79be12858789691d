//! `koala eval report` (placeholder, being written).
use anyhow::{Result, bail};

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    bail!("koala eval report is not built yet")
}
