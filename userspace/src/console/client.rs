//! The client side of the control socket, for `duraplane console` and tests.

use super::protocol::{MAX_REQUEST_BYTES, REQUEST_TIMEOUT, Reply, ReplyError, read_reply};
use std::{
    io::{self, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

/// Default control socket, as in `duraplane { control_socket }`.
pub const DEFAULT_SOCKET: &str = "/run/duraplane/control.sock";

/// Why a command could not be run on the daemon (not: the daemon answered with an error).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to the duraplane control socket {path}: {source} (is the daemon running? check `duraplane {{ control_socket }}` or --socket)"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("command too long ({len} bytes, limit {MAX_REQUEST_BYTES})")]
    TooLong { len: usize },
    #[error("a command cannot contain a newline")]
    Newline,
    #[error("cannot send the command to {path}: {source}")]
    Send {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no valid reply from {path}: {source}")]
    Reply {
        path: PathBuf,
        #[source]
        source: ReplyError,
    },
}

/// Sends one command and reads its reply on a fresh connection. `timeout` bounds the wait
/// for the reply (a daemon stuck in a handler must not hang the operator's shell).
pub fn request(socket: &Path, command: &str, timeout: Duration) -> Result<Reply, ClientError> {
    if command.contains('\n') {
        return Err(ClientError::Newline);
    }
    if command.len() > MAX_REQUEST_BYTES {
        return Err(ClientError::TooLong { len: command.len() });
    }
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    let send_err = |source| ClientError::Send {
        path: socket.to_owned(),
        source,
    };
    stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .map_err(send_err)?;
    stream.set_read_timeout(Some(timeout)).map_err(send_err)?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(send_err)?;
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader).map_err(|source| ClientError::Reply {
        path: socket.to_owned(),
        source,
    })
}
