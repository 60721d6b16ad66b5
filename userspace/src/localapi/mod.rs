//! The local API: what local programs (policy scripts, MTA hooks) ask the data plane over
//! a Unix socket — gauge tables, shared named throttles, named caches, and cluster-wide
//! inbound/outbound connection counts. Protocol and semantics: `docs/local-api.md`.

pub mod client;
pub mod objects;
pub mod protocol;
pub mod server;

pub use client::{Client, ClientError, ThrottleAnswer};
pub use objects::SharedObjects;
pub use protocol::{ApiError, ErrorKind, Request, Response};
pub use server::{LocalApiError, LocalApiHandle, LocalApiServer, socket_path};
