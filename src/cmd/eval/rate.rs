//! `koala eval rate|status|export` (placeholder, being written).
use anyhow::{Result, bail};

#[derive(clap::Args, Debug)]
pub struct RateArgs {}
#[derive(clap::Args, Debug)]
pub struct StatusArgs {}
#[derive(clap::Args, Debug)]
pub struct ExportArgs {}

pub fn rate(_args: RateArgs) -> Result<()> {
    bail!("koala eval rate is not built yet")
}
pub fn status(_args: StatusArgs) -> Result<()> {
    bail!("koala eval status is not built yet")
}
pub fn export(_args: ExportArgs) -> Result<()> {
    bail!("koala eval export is not built yet")
}
