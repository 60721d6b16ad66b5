//! `duraplane run` processes on testbed hosts, for multi-node tests, benches and the demo.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use super::{ProcessGuard, Stream, Testbed, TestbedError};

/// Writes a cluster key file the daemons accept: `key` as its content, mode 0600 (the
/// engine refuses a key file that group or others can read).
pub fn write_key(path: &Path, key: &[u8]) -> Result<(), TestbedError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, key)
        .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)))
        .map_err(|e| TestbedError::Io {
            what: format!("write the key file {}", path.display()),
            source: e,
        })
}

/// The config of a lone log-publishing daemon, node "solo" on 192.0.2.1 with a 4802
/// listener: `loggers` are its logger scopes (whole text), `logs` the entries of its
/// `logs = [ … ]` (one per line, indented), metrics off.
pub fn solo_log_config(loggers: &str, logs: &str, socket: &Path, key: &Path) -> String {
    format!(
        r#"ECCluster_Listener {{
  Listen "192.0.2.1:4802" {{}}
}}
{loggers}cluster {{
  nodename = "solo"
  nodeaddr = "192.0.2.1"
  logs = [
{logs}  ]
}}
duraplane {{
  control_socket = "{}"
  metrics = "off"
  cluster_key_file = "{}"
}}
"#,
        socket.display(),
        key.display()
    )
}

/// One daemon on one host, stopped (SIGTERM, then SIGKILL by the guard) on drop.
pub struct DaemonNode {
    pub host: String,
    pub socket: PathBuf,
    pub config: PathBuf,
    guard: Option<ProcessGuard>,
}

impl DaemonNode {
    /// Writes `config_text` to `dir/<host>.conf` and starts `bin run --foreground` inside
    /// `host`; returns once the control socket answers `cluster nodename`.
    pub fn start(
        tb: &Testbed,
        bin: &Path,
        host: &str,
        dir: &Path,
        socket: PathBuf,
        config_text: &str,
    ) -> Result<DaemonNode, TestbedError> {
        let config = dir.join(format!("{host}.conf"));
        std::fs::write(&config, config_text).map_err(|e| TestbedError::Io {
            what: format!("write {}", config.display()),
            source: e,
        })?;
        let mut node = DaemonNode {
            host: host.to_owned(),
            socket,
            config,
            guard: None,
        };
        node.restart(tb, bin)?;
        Ok(node)
    }

    /// (Re)starts the daemon with its config and waits until it answers.
    pub fn restart(&mut self, tb: &Testbed, bin: &Path) -> Result<(), TestbedError> {
        let b = bin.to_string_lossy().into_owned();
        let c = self.config.to_string_lossy().into_owned();
        let mut guard = tb.spawn(&self.host, &[&b, "run", "--foreground", "-c", &c])?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(out) = self.console(bin, "cluster nodename")
                && !out.is_empty()
            {
                break;
            }
            if let Ok(Some(status)) = guard.try_wait() {
                return Err(TestbedError::Command {
                    cmd: format!("duraplane run on {}", self.host),
                    status: status.to_string(),
                    stderr: guard.lines(Stream::Stderr).join("\n"),
                });
            }
            if Instant::now() > deadline {
                return Err(TestbedError::Timeout {
                    what: format!("duraplane on {} to answer", self.host),
                    after: Duration::from_secs(20),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.guard = Some(guard);
        Ok(())
    }

    /// Runs one console command; `Err` carries the daemon's error text.
    pub fn console(&self, bin: &Path, command: &str) -> Result<String, String> {
        let out = Command::new(bin)
            .arg("console")
            .arg("--socket")
            .arg(&self.socket)
            .arg(command)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Sends a signal to the daemon (SIGKILL, SIGSTOP, SIGCONT …).
    pub fn signal(&self, sig: Signal) -> Result<(), TestbedError> {
        match &self.guard {
            Some(g) => g.signal(sig),
            None => Ok(()),
        }
    }

    /// Kills the daemon with SIGKILL and reaps it (a crash).
    pub fn kill(&mut self) {
        if let Some(g) = self.guard.take() {
            let _ = g.stop(Signal::SIGKILL, Duration::from_secs(5));
        }
    }

    /// The daemon's stderr so far (its log).
    pub fn log(&self) -> String {
        self.guard
            .as_ref()
            .map(|g| g.lines(Stream::Stderr).join("\n"))
            .unwrap_or_default()
    }
}

impl Drop for DaemonNode {
    fn drop(&mut self) {
        if let Some(g) = self.guard.take() {
            let _ = g.signal(Signal::SIGCONT);
            let _ = g.stop(Signal::SIGTERM, Duration::from_secs(5));
        }
    }
}
