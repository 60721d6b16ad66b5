//! Shared helpers for the daemon/console integration tests: a real `duraplane run` process
//! in a temp dir, killed by PID when the guard drops.
#![allow(dead_code)]

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_duraplane");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal configuration: fixed identity, temp control socket, loopback metrics port.
pub fn config_text(socket: &Path, metrics_port: u16, extra: &str) -> String {
    format!(
        r#"# test configuration
cluster {{
  nodename = "testnode"
  nodeaddr = "192.0.2.10"
}}
ECCluster_Listener {{
  Listen "*:4802" {{}}
}}
duraplane {{
  control_socket = "{}"
  metrics = "127.0.0.1:{metrics_port}"
}}
{extra}
"#,
        socket.display()
    )
}

pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub metrics: SocketAddr,
    pub log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Starts `duraplane run --foreground` on a fresh temp dir and waits until it answers.
    pub fn start(extra: &str) -> Daemon {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut d = Self::spawn_in(&dir, &dir.join("run/control.sock"), extra, &[]);
        d._tmp = Some(tmp);
        d.wait_ready();
        d
    }

    /// Spawns without waiting; the caller owns `dir`.
    pub fn spawn_in(dir: &Path, socket: &Path, extra: &str, args: &[&str]) -> Daemon {
        let port = free_port();
        let config = dir.join(format!("cluster-{port}.conf"));
        fs::write(&config, config_text(socket, port, extra)).unwrap();
        let log = dir.join(format!("daemon-{port}.log"));
        let child = Command::new(BIN)
            .args(["run", "-c"])
            .arg(&config)
            .arg("--foreground")
            .args(args)
            .env("DURAPLANE_LOG", "debug")
            .env_remove("EC_NODE_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon {
            child,
            dir: dir.to_owned(),
            config,
            socket: socket.to_owned(),
            metrics: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _tmp: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("daemon exited early ({st}):\n{}", self.log_text());
            }
            if self.log_text().contains("ready") && UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = self.log_text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "log never contained {needle:?}:\n{text}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `duraplane console --socket S WORDS…`
    pub fn console(&self, words: &[&str]) -> Output {
        console(&self.socket, words)
    }

    pub fn scrape(&self, path: &str) -> String {
        http_get(self.metrics, path)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn console(socket: &Path, words: &[&str]) -> Output {
    Command::new(BIN)
        .arg("console")
        .arg("--socket")
        .arg(socket)
        .args(words)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
