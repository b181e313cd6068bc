//! Wiring and supervision: builds the runtime, dispatches the CLI.

use crate::cli::{exit, Cli};

/// Runs a command and returns the process exit code.
pub fn main(cli: Cli) -> i32 {
    let _ = cli;
    exit::FAILED
}
