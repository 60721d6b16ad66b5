//! The `duraplane` command: the daemon (`run`), a configuration checker, the console client.

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use duraplane::{
    config::{self, ConfigError},
    console::client::{self, ClientError, DEFAULT_SOCKET},
    daemon::{self, RunOptions, logging},
};
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

#[derive(Parser, Debug)]
#[command(
    name = "duraplane",
    version,
    about = "Duraplane: a cluster data plane for fleets of mail servers",
    long_about = "Duraplane re-implements Momentum's (Ecelerity's) cluster module as a Linux data \
plane. It reads ecelerity-cluster.conf (with Duraplane's own settings in a `duraplane { }` scope) \
and answers Momentum's `cluster …` console commands on a Unix control socket."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    ///
    /// Loads and validates FILE (errors as FILE:LINE:COL: message, exit 2), binds the control
    /// socket and the metrics port, drops privileges as `Security { }` says, then serves until
    /// SIGTERM/SIGINT. SIGHUP reloads the configuration.
    Run {
        /// The configuration file (ecelerity-cluster.conf).
        #[arg(
            short = 'c',
            long = "config",
            value_name = "FILE",
            env = "DURAPLANE_CONFIG"
        )]
        config: PathBuf,
        /// Stay in the foreground (for systemd Type=simple, containers, tests). Without it the
        /// daemon detaches once it is ready; startup errors are still reported with exit 1.
        #[arg(long)]
        foreground: bool,
        /// Log line format on stderr. The level filter comes from DURAPLANE_LOG (default info).
        #[arg(long, value_enum, default_value_t = LogFormatArg::Text, env = "DURAPLANE_LOG_FORMAT")]
        log_format: LogFormatArg,
    },
    /// Check a configuration file.
    ///
    /// Prints the effective configuration on stdout and warnings on stderr, exit 0; or each
    /// error as FILE:LINE:COL: message on stderr, exit 2.
    CheckConfig {
        /// The configuration file to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Talk to a running daemon over its control socket.
    ///
    /// With a COMMAND (e.g. `cluster info`): print the answer; exit 1 if the daemon answered
    /// with an error, 3 if it cannot be reached. Without: an interactive console with history.
    Console {
        /// The daemon's control socket (`duraplane { control_socket }`).
        #[arg(short, long, value_name = "PATH", default_value = DEFAULT_SOCKET, env = "DURAPLANE_CONTROL_SOCKET")]
        socket: PathBuf,
        /// Seconds to wait for an answer.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        timeout: u64,
        /// The command words, e.g. `cluster nodeaddr`.
        #[arg(
            value_name = "COMMAND",
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        command: Vec<String>,
    },
    /// Run the log manager: pull every published cluster:// log from the nodes over port
    /// 4802 into consolidated files (`Logs { logfile }` of an eccluster.conf-style FILE).
    Manager {
        /// The manager's configuration (eccluster.conf: `Logs { }`, `duraplane { cluster_key_file }`).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// The manager's name (its subscriber name and `Manager "name"` rules); default: hostname.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// A node to pull from, NAME=ADDR (its ECCluster_Listener); repeat for each node.
        #[arg(long = "node", value_name = "NAME=ADDR")]
        nodes: Vec<String>,
        /// The cluster key file (overrides `duraplane { cluster_key_file }`).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// A node (ECCluster_Listener ADDR) to ask for the cluster's members; every live
        /// member that announced itself is pulled from. Repeatable.
        #[arg(long = "seed", value_name = "ADDR")]
        seeds: Vec<std::net::SocketAddr>,
    },
    /// Print the version.
    Version,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormatArg {
    Text,
    Json,
}

/// Exit status for configuration errors (as `check-config` and `run` use it).
const EXIT_CONFIG: u8 = 2;
/// Exit status when the daemon cannot be reached.
const EXIT_UNREACHABLE: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("duraplane {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Console {
            socket,
            timeout,
            command,
        } => {
            let timeout = Duration::from_secs(timeout.max(1));
            if command.is_empty() {
                report(interactive(&socket, timeout))
            } else {
                one_shot(&socket, &command, timeout)
            }
        }
        Command::Run {
            config,
            foreground,
            log_format,
        } => run(&config, foreground, log_format),
        Command::Manager {
            config,
            name,
            nodes,
            key,
            seeds,
        } => report(manager(config, name, nodes, key, seeds)),
    }
}

/// `duraplane manager`: runs until SIGTERM/SIGINT.
fn manager(
    config: PathBuf,
    name: Option<String>,
    nodes: Vec<String>,
    key_file: Option<PathBuf>,
    seeds: Vec<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    logging::init(logging::LogFormat::Text);
    let nodes = nodes
        .iter()
        .map(|n| {
            let (name, addr) = n
                .split_once('=')
                .with_context(|| format!("--node {n:?}: expected NAME=ADDR"))?;
            Ok((
                name.to_owned(),
                addr.parse()
                    .with_context(|| format!("--node {n:?}: bad address"))?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let name = match name {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("hostname")?
            .to_string_lossy()
            .into_owned(),
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("signal handler")?;
    }
    duraplane::log::manager::run(
        &duraplane::log::manager::ManagerOptions {
            config,
            name,
            nodes,
            key_file,
            seeds,
        },
        stop,
    )?;
    Ok(())
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("duraplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints load errors one per line, as `FILE:LINE:COL: message`.
fn print_config_error(e: &ConfigError) {
    match e {
        ConfigError::Invalid(diags) => {
            for d in diags {
                eprintln!("{d}");
            }
        }
        other => eprintln!("{other}"),
    }
}

fn check_config(file: &Path) -> ExitCode {
    // `check` keeps the warnings even when there are errors, so an operator sees both.
    let checked = match config::check(file) {
        Ok(c) => c,
        Err(e) => {
            print_config_error(&e);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for w in &checked.warnings {
        eprintln!("warning: {w}");
    }
    match checked.into_result() {
        Ok(loaded) => {
            print!("{}", config::render_effective(&loaded));
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_config_error(&e);
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn run(config_path: &Path, foreground: bool, format: LogFormatArg) -> ExitCode {
    let loaded = match config::load(config_path) {
        Ok(l) => l,
        Err(e) => {
            print_config_error(&e);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The daemon's subscriber also feeds its own cluster:// logs (paniclog, rejectlog, mainlog).
    duraplane::log::daemon::init_logging(match format {
        LogFormatArg::Text => logging::LogFormat::Text,
        LogFormatArg::Json => logging::LogFormat::Json,
    });
    let ready = if foreground {
        None
    } else {
        match daemon::daemonize() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        }
    };
    // Absolute, so logs are unambiguous and reloads do not depend on the working directory.
    let opts = RunOptions {
        config_path: std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_owned()),
    };
    match daemon::run(&opts, loaded, ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn one_shot(socket: &Path, words: &[String], timeout: Duration) -> ExitCode {
    let line = words.join(" ");
    match client::request(socket, &line, timeout) {
        Ok(reply) => {
            let out = &reply.body;
            let nl = if out.is_empty() || out.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            if reply.ok {
                print!("{out}{nl}");
                ExitCode::SUCCESS
            } else {
                eprint!("{out}{nl}");
                ExitCode::FAILURE
            }
        }
        Err(e @ ClientError::Connect { .. }) => {
            eprintln!("duraplane: {e}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
        Err(e) => {
            eprintln!("duraplane: {e}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}

/// Local wall-clock time as HH:MM:SS, for Momentum's prompt.
fn clock() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    // SAFETY: localtime_r writes only into the tm we pass.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let t: libc::time_t = now;
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    } else {
        let s = now.rem_euclid(86_400);
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }
}

fn history_file() -> PathBuf {
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".duraplane_history"),
        None => std::env::temp_dir().join(format!(
            "duraplane_history-{}",
            nix::unistd::getuid().as_raw()
        )),
    }
}

/// Momentum-like interactive console: `HH:MM:SS duraplane(SOCKET)> `, one connection per
/// command (so a daemon restart in between is harmless), `quit`/`exit`/Ctrl-D to leave.
fn interactive(socket: &Path, timeout: Duration) -> anyhow::Result<()> {
    use rustyline::{DefaultEditor, error::ReadlineError};
    let mut rl = DefaultEditor::new().context("cannot start the line editor")?;
    let history = history_file();
    let _ = rl.load_history(&history);
    // Say at once if the daemon is not there, rather than at the first command.
    if let Err(e) = client::request(socket, "version", timeout) {
        eprintln!("duraplane: {e}");
    }
    loop {
        let prompt = format!("{} duraplane({})> ", clock(), socket.display());
        match rl.readline(&prompt) {
            Ok(line) => {
                let cmd = line.trim();
                if cmd.is_empty() {
                    continue;
                }
                let _ = rl.add_history_entry(cmd);
                if matches!(cmd, "quit" | "exit") {
                    break;
                }
                match client::request(socket, cmd, timeout) {
                    Ok(reply) => {
                        let nl = if reply.body.is_empty() || reply.body.ends_with('\n') {
                            ""
                        } else {
                            "\n"
                        };
                        print!("{}{nl}", reply.body);
                    }
                    Err(e) => eprintln!("duraplane: {e}"),
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading the console input"),
        }
    }
    if let Err(e) = rl.save_history(&history) {
        eprintln!(
            "duraplane: cannot save history to {}: {e}",
            history.display()
        );
    }
    Ok(())
}
