//! `dp-api`: the daemon's local API from the shell (gauges, shared throttles, caches,
//! cluster-wide connection counts). Protocol: docs/local-api.md.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use duraplane::localapi::{Client, Request};

#[derive(Debug, Parser)]
#[command(
    name = "dp-api",
    about = "Ask the Duraplane daemon's local API (gauge tables, shared named throttles, named caches, cluster-wide counts)"
)]
struct Cli {
    /// The local API socket (`<dir of control_socket>/api.sock`).
    #[arg(
        short,
        long,
        env = "DURAPLANE_API_SOCKET",
        default_value = "/run/duraplane/api.sock"
    )]
    socket: PathBuf,
    /// Print the daemon's raw JSON reply instead of a plain value.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check the daemon answers; prints its nodename.
    Ping,
    /// Gauge tables: outbound_domains (KEY = domain), outbound_binding_domains (binding::domain).
    Gauge {
        #[command(subcommand)]
        op: GaugeOp,
    },
    /// Shared named throttles ("X/Y": X per Y seconds, cluster-wide).
    Throttle {
        #[command(subcommand)]
        op: ThrottleOp,
    },
    /// Named caches (Replicate "NAME" { type = "cache" }).
    Cache {
        #[command(subcommand)]
        op: CacheOp,
    },
    /// Current inbound connections to the cluster from CIDR: "/24" (with --addr),
    /// "addr/len", or an address.
    InboundCount {
        cidr: String,
        #[arg(long)]
        addr: Option<String>,
    },
    /// Current outbound connections to DOMAIN across the cluster.
    OutboundCount { domain: String },
    /// Current outbound connections from the cluster to CIDR (outbound_cidr): "/24"
    /// (with --addr), "addr/len", or an address.
    OutboundCidrCount {
        cidr: String,
        #[arg(long)]
        addr: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum GaugeOp {
    /// Add N (default 1) to this node's count; prints "local cluster".
    Inc {
        table: String,
        key: String,
        #[arg(default_value_t = 1)]
        n: i64,
    },
    /// Subtract N (default 1) from this node's count; prints "local cluster".
    Dec {
        table: String,
        key: String,
        #[arg(default_value_t = 1)]
        n: i64,
    },
    /// Prints "local cluster".
    Get { table: String, key: String },
}

#[derive(Debug, Subcommand)]
enum ThrottleOp {
    /// Create or redefine NAME as RATE ("X/Y") with optional EPSILON (0 < e < 1, default 0.95).
    Create {
        name: String,
        rate: String,
        epsilon: Option<f64>,
    },
    /// Would one more be allowed? Exit 0 = yes, 1 = no.
    Check { name: String },
    /// Take N (default 1) if allowed. Exit 0 = taken, 1 = refused.
    Consume {
        name: String,
        #[arg(default_value_t = 1)]
        n: u64,
    },
}

#[derive(Debug, Subcommand)]
enum CacheOp {
    /// Prints the value; exit 1 if there is none.
    Get { cache: String, key: String },
    /// TTL: seconds, or ending in H or M; 0 (default) = never expires.
    Set {
        cache: String,
        key: String,
        value: String,
        #[arg(default_value = "0")]
        ttl: String,
    },
    /// Delete KEY cluster-wide.
    Delete { cache: String, key: String },
}

fn request(cmd: Cmd) -> Request {
    match cmd {
        Cmd::Ping => Request::Ping,
        Cmd::Gauge { op } => match op {
            GaugeOp::Inc { table, key, n } => Request::GaugeInc {
                table,
                key,
                n: Some(n),
            },
            GaugeOp::Dec { table, key, n } => Request::GaugeDec {
                table,
                key,
                n: Some(n),
            },
            GaugeOp::Get { table, key } => Request::GaugeGet { table, key },
        },
        Cmd::Throttle { op } => match op {
            ThrottleOp::Create {
                name,
                rate,
                epsilon,
            } => Request::ThrottleCreate {
                name,
                rate,
                epsilon,
            },
            ThrottleOp::Check { name } => Request::ThrottleCheck { name },
            ThrottleOp::Consume { name, n } => Request::ThrottleConsume { name, n: Some(n) },
        },
        Cmd::Cache { op } => match op {
            CacheOp::Get { cache, key } => Request::CacheGet { cache, key },
            CacheOp::Set {
                cache,
                key,
                value,
                ttl,
            } => Request::CacheSet {
                cache,
                key,
                value,
                ttl: Some(ttl),
            },
            CacheOp::Delete { cache, key } => Request::CacheDelete { cache, key },
        },
        Cmd::InboundCount { cidr, addr } => Request::InboundCount { cidr, addr },
        Cmd::OutboundCount { domain } => Request::OutboundCount { domain },
        Cmd::OutboundCidrCount { cidr, addr } => Request::OutboundCidrCount { cidr, addr },
    }
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let mut client = Client::connect(&cli.socket)?;
    let req = request(cli.cmd);
    let r = client.raw(&req).context("local API request")?;
    if cli.json {
        print!("{}", r.to_line());
        return Ok(if r.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    if !r.ok {
        eprintln!(
            "dp-api: {}",
            r.message.as_deref().unwrap_or("request refused")
        );
        return Ok(ExitCode::from(2));
    }
    let yes_no = |b: bool| {
        if b {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    };
    Ok(match req {
        Request::Ping => {
            println!("{}", r.node.unwrap_or_default());
            ExitCode::SUCCESS
        }
        Request::GaugeInc { .. } | Request::GaugeDec { .. } | Request::GaugeGet { .. } => {
            println!("{} {}", r.local.unwrap_or(0), r.cluster.unwrap_or(0));
            ExitCode::SUCCESS
        }
        Request::ThrottleCreate { .. } | Request::CacheSet { .. } => ExitCode::SUCCESS,
        Request::ThrottleCheck { .. } | Request::ThrottleConsume { .. } => {
            let allowed = r.allowed.unwrap_or(false);
            println!(
                "{} remaining {} local {}",
                if allowed { "allowed" } else { "refused" },
                r.remaining.unwrap_or(0),
                r.local.unwrap_or(0)
            );
            yes_no(allowed)
        }
        Request::CacheGet { .. } => match r.value {
            Some(v) => {
                println!("{v}");
                ExitCode::SUCCESS
            }
            None => ExitCode::FAILURE,
        },
        Request::CacheDelete { .. } => yes_no(r.deleted.unwrap_or(false)),
        Request::InboundCount { .. }
        | Request::OutboundCount { .. }
        | Request::OutboundCidrCount { .. } => {
            println!("{}", r.count.unwrap_or(0));
            ExitCode::SUCCESS
        }
    })
}
