//! The `mpvr` command line.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mpvr::sim::LinkModel;
use mpvr::sim::compare::{Load, Row, compare};

#[derive(Parser)]
#[command(
    name = "mpvr",
    version,
    about = "Multipath virtual router: several unreliable uplinks as one reliable, low-latency network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the real core in the network simulator: the same stream over each
    /// link alone, then over all links through mpvr, and compare loss and latency.
    Sim(SimArgs),
}

#[derive(clap::Args)]
struct SimArgs {
    /// A link, once per link. Keys: delay=20ms, jitter=5ms (uniform),
    /// jitter-sd=2ms (normal), loss=5%, burst=5% (bursty loss),
    /// blackout=2s-4s, reorder=1%, duplicate=1%, corrupt=1%, rate=10mbit, queue=64kb.
    #[arg(long = "link", value_name = "SPEC", default_values = ["delay=20ms,jitter=2ms,loss=5%", "delay=40ms,jitter=4ms,loss=5%,blackout=3s-5s"])]
    links: Vec<LinkModel>,
    /// Packets in the stream.
    #[arg(long, default_value_t = 100_000)]
    packets: u64,
    /// Packets per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// IP packet size in bytes (IPv4 UDP, 36 to 1436).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(36..=1436))]
    size: u16,
    /// Random seed: the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_string(),
        |d| format!("{:.1}", d.as_secs_f64() * 1e3),
    )
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "", "sent", "lost", "loss %", "p50 ms", "p99 ms", "max ms", "dup/bad"
    );
    for r in rows {
        let rep = &r.report;
        println!(
            "{:<22} {:>9} {:>9} {:>9.3} {:>9} {:>9} {:>9} {:>4}/{:<3}",
            r.label,
            rep.sent,
            rep.lost(),
            rep.loss_rate() * 100.0,
            ms(rep.latency_percentile(50.0)),
            ms(rep.latency_percentile(99.0)),
            ms(rep.latency_percentile(100.0)),
            rep.delivered_twice,
            rep.mangled,
        );
    }
}

fn sim(args: SimArgs) -> Result<bool> {
    anyhow::ensure!(!args.links.is_empty(), "give at least one --link");
    anyhow::ensure!(args.rate > 0, "--rate must be at least 1 packet per second");
    let load = Load {
        packets: args.packets,
        rate_pps: args.rate,
        size: usize::from(args.size),
        seed: args.seed,
    };
    println!(
        "mpvr simulator: {} packets of {} bytes at {} packets/s from host 1 to host 2 (seed {})",
        load.packets, load.size, load.rate_pps, load.seed
    );
    for (i, l) in args.links.iter().enumerate() {
        println!("  link {}: {l}", i + 1);
    }
    println!();
    let rows = compare(&args.links, load);
    print_rows(&rows);
    let (singles, mpvr) = rows.split_at(rows.len() - 1);
    let mpvr = &mpvr[0];
    let best_single = singles.iter().map(|r| r.report.lost()).min().unwrap_or(0);
    println!();
    println!(
        "mpvr lost {} packets, the best single link {}; {} copies of {} were lost on the links, \
         no packet was delivered twice: {}.",
        mpvr.report.lost(),
        best_single,
        mpvr.copies_lost,
        mpvr.copies_sent,
        if mpvr.report.delivered_twice == 0 && mpvr.report.mangled == 0 {
            "yes"
        } else {
            "NO"
        }
    );
    Ok(mpvr.report.delivered_twice == 0 && mpvr.report.mangled == 0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(args) => sim(args).context("simulation failed"),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("mpvr: {e:#}");
            ExitCode::from(2)
        }
    }
}
