//! `mpvr-linkemu`: relay Ethernet frames between two interfaces with
//! emulated delay, jitter, loss, bursts, blackouts, reordering and rate
//! limits (this kernel has no netem). See `mpvr::linkemu`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mpvr::sim::LinkModel;

#[derive(Parser)]
#[command(name = "mpvr-linkemu", version, about = "Ethernet link emulator for the mpvr testbed (a userspace netem)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Relay frames between interfaces A and B until killed.
    Run {
        /// First interface.
        #[arg(long)]
        a: String,
        /// Second interface.
        #[arg(long)]
        b: String,
        /// Model of the direction A -> B (`mpvr sim --link` syntax, e.g. delay=20ms,jitter=2ms,loss=5%).
        #[arg(long, default_value = "delay=0ms")]
        ab: String,
        /// Model of the direction B -> A.
        #[arg(long, default_value = "delay=0ms")]
        ba: String,
        /// Control socket.
        #[arg(long)]
        control: PathBuf,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Send one command to a running emulator:
    /// `set ab|ba|both SPEC`, `blackout ab|ba|both on|off|DURATION`, `show`.
    Ctl {
        /// Control socket.
        #[arg(long)]
        control: PathBuf,
        /// The command words.
        #[arg(required = true, num_args = 1..)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    let r: Result<()> = match Cli::parse().command {
        Command::Run { a, b, ab, ba, control, seed } => (|| {
            let ab: LinkModel = ab.parse().context("--ab")?;
            let ba: LinkModel = ba.parse().context("--ba")?;
            let emu = mpvr::linkemu::start(&a, &b, ab, ba, seed).with_context(|| format!("relaying {a} <-> {b}"))?;
            mpvr::linkemu::serve(&emu, &control).with_context(|| format!("control socket {}", control.display()))
        })(),
        Command::Ctl { control, command } => mpvr::linkemu::control(&control, &command.join(" "))
            .map(|reply| println!("{reply}"))
            .with_context(|| format!("mpvr-linkemu at {}", control.display())),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mpvr-linkemu: {e:#}");
            ExitCode::FAILURE
        }
    }
}
