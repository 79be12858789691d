//! `koala submit job.toml [--watch]`: send a job file to the daemon; with `--watch`, follow it
//! with a live progress bar (WatchJob) until it ends.
use std::path::PathBuf;

use clap::Args;
use koala_proto::v1::JobState;
use koala_trainer::daemon::client::{self, JobFile};

use super::jobs::{ConnectArgs, block_on};

#[derive(Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// The job file: the JobSpec fields in TOML (see docs/daemon.md).
    pub job: PathBuf,
    /// Follow the job with a progress bar until it ends; exit non-zero unless it SUCCEEDED.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: print one line per event instead of a progress bar.
    #[arg(long)]
    pub plain: bool,
}

pub fn run(args: SubmitArgs) -> anyhow::Result<()> {
    let spec = JobFile::load(&args.job)?;
    block_on(async move {
        let mut c = args.conn.connect().await?;
        let job = c
            .submit_job(spec)
            .await
            .map_err(client::ClientError::from)?
            .into_inner();
        println!("job {} {}", job.id, client::state_name(job.state()));
        if !args.watch {
            return Ok(());
        }
        let done = client::watch(&mut c, job.id, !args.plain).await?;
        print!("{}", client::describe_job(&done));
        if done.state() != JobState::Succeeded {
            anyhow::bail!("job {} ended {}", done.id, client::state_name(done.state()));
        }
        Ok(())
    })
}
