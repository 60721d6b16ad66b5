//! dp-connect: open many real TCP connections from chosen local source addresses (bound
//! before connecting) to one server, hold them, and report what happened. Used by the
//! namespace tests to look like clients from several netblocks.

use std::{
    io::{BufRead, Write},
    net::{IpAddr, SocketAddr},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Result, bail};
use clap::Parser;
use duraplane_tools::{
    connect::{Summary, connect_many, peer_closed},
    require_documentation,
};

/// Open COUNT TCP connections from each --source to SERVER, hold them, report.
///
/// Prints `connected ok=… refused=… timeout=… failed=…` once every attempt has finished,
/// then holds the connections for --hold seconds (or until stdin closes, with
/// --until-eof), then prints `closed peer_closed=…` and exits.
#[derive(Debug, Parser)]
#[command(name = "dp-connect", version)]
struct Args {
    /// Server address, e.g. 192.0.2.1:25 or [2001:db8::1]:25 (documentation ranges only).
    #[arg(short, long)]
    server: SocketAddr,
    /// Local source address to bind (repeatable; documentation ranges only).
    #[arg(short = 'b', long = "source", required = true)]
    sources: Vec<IpAddr>,
    /// Connections per source (max 10000 in total).
    #[arg(short, long, default_value_t = 1)]
    count: usize,
    /// Per-attempt connect timeout, milliseconds.
    #[arg(long, default_value_t = 2000)]
    connect_timeout_ms: u64,
    /// Hold established connections this many seconds (max 3600).
    #[arg(long, default_value_t = 10.0)]
    hold: f64,
    /// Release early when stdin reaches EOF (or a line is read).
    #[arg(long)]
    until_eof: bool,
    /// Print one line per attempt.
    #[arg(short, long)]
    verbose: bool,
}

fn main() -> Result<()> {
    let a = Args::parse();
    require_documentation("server", &a.server.ip())?;
    for s in &a.sources {
        require_documentation("source", s)?;
        if s.is_ipv4() != a.server.is_ipv4() {
            bail!(
                "source {s} and server {} are of different families",
                a.server
            );
        }
    }
    if a.count == 0 || a.count * a.sources.len() > 10_000 {
        bail!("--count × sources must be 1..=10000");
    }
    if !(0.0..=3600.0).contains(&a.hold) {
        bail!("--hold must be 0..=3600 seconds");
    }
    let attempts = connect_many(
        &a.sources,
        a.count,
        a.server,
        Duration::from_millis(a.connect_timeout_ms),
    )?;
    if a.verbose {
        for at in &attempts {
            println!("attempt source={} outcome={:?}", at.source, at.outcome);
        }
    }
    let mut out = std::io::stdout();
    writeln!(out, "connected {}", Summary::of(&attempts))?;
    out.flush()?;

    let (tx, rx) = mpsc::channel::<()>();
    if a.until_eof {
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            let _ = tx.send(());
        });
    }
    // Either the hold time passes or stdin says so (a dropped sender also ends the wait).
    let hold = Duration::from_secs_f64(a.hold);
    match rx.recv_timeout(hold) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
        Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(hold),
    }
    writeln!(out, "closed peer_closed={}", peer_closed(&attempts))?;
    Ok(())
}
