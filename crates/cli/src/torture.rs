//! `mmnotify torture`: the randomized soak of the simulated system.

use anyhow::Result;

/// Arguments of `mmnotify torture`.
#[derive(clap::Args, Debug)]
pub struct TortureArgs {}

/// Runs `mmnotify torture`.
pub fn run(_args: TortureArgs) -> Result<()> {
    Ok(())
}
