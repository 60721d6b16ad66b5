//! The local API's wire protocol: one JSON object per line each way (`docs/local-api.md`).
//! JSON lines because every language a mail server's policy scripts are written in can
//! speak it with its standard library, and a line bound makes limits trivial.

use serde::{Deserialize, Serialize};

/// Longest request line (bytes, newline included). Longer: error, connection closed.
pub const MAX_LINE: usize = 16 * 1024;

/// A request. `op` selects the operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Liveness and the node's name.
    Ping,
    /// Adds `n` (default 1) to this node's count of `key` in gauge table `table`.
    GaugeInc {
        table: String,
        key: String,
        #[serde(default)]
        n: Option<i64>,
    },
    GaugeDec {
        table: String,
        key: String,
        #[serde(default)]
        n: Option<i64>,
    },
    /// This node's and the cluster's count of `key`.
    GaugeGet {
        table: String,
        key: String,
    },
    /// `ec_shared_throttle_create name "X/Y" [epsilon]`.
    ThrottleCreate {
        name: String,
        rate: String,
        #[serde(default)]
        epsilon: Option<f64>,
    },
    /// Would one more be allowed cluster-wide?
    ThrottleCheck {
        name: String,
    },
    /// Take `n` (default 1) if allowed.
    ThrottleConsume {
        name: String,
        #[serde(default)]
        n: Option<u64>,
    },
    CacheGet {
        cache: String,
        key: String,
    },
    /// `ttl`: seconds, or ending in H/M; "0" (the default) = never expires.
    CacheSet {
        cache: String,
        key: String,
        value: String,
        #[serde(default)]
        ttl: Option<String>,
    },
    CacheDelete {
        cache: String,
        key: String,
    },
    /// Current inbound connections to the cluster from `cidr`: `/24` (around `addr`),
    /// `addr/len`, or a bare address (its /32 or /128).
    InboundCount {
        cidr: String,
        #[serde(default)]
        addr: Option<String>,
    },
    /// Current outbound connections to `domain` across the cluster (`outbound_domains`).
    OutboundCount {
        domain: String,
    },
    /// Current outbound connections from the cluster to `cidr` (`outbound_cidr`, counted
    /// at every node's egress): the same `cidr`/`addr` forms as [`Request::InboundCount`].
    OutboundCidrCount {
        cidr: String,
        #[serde(default)]
        addr: Option<String>,
    },
}

/// Machine-readable error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not JSON, unknown op or field, wrong type.
    BadRequest,
    /// The line exceeded [`MAX_LINE`]; the connection is closed.
    TooLong,
    /// A value was refused (key, rate, ttl, underflow …).
    Invalid,
    /// No such table, throttle or cache.
    Unknown,
    /// The figure needs replication that is not running (e.g. `inbound_cidr`).
    Unavailable,
    /// Too many connections; try again.
    Busy,
}

/// A reply: `ok`, and the fields the request's operation fills.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// This node's figure (gauge count, throttle consumption in the window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<i64>,
    /// The cluster-wide figure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// Cache value (`null`/absent = no such key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl Response {
    pub fn ok() -> Self {
        Response {
            ok: true,
            ..Default::default()
        }
    }

    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(kind),
            message: Some(message.into()),
            ..Default::default()
        }
    }

    /// One line, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"ok":false,"error":"bad_request","message":"unencodable reply"}"#.to_owned()
        });
        s.push('\n');
        s
    }
}

/// A refused request: becomes an error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}

impl From<ApiError> for Response {
    fn from(e: ApiError) -> Self {
        Response::error(e.kind, e.message)
    }
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, ApiError> {
    serde_json::from_slice(line)
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("bad request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_roundtrip() {
        let r = parse_request(br#"{"op":"gauge_inc","table":"outbound_domains","key":"aol.com"}"#)
            .unwrap();
        assert_eq!(
            r,
            Request::GaugeInc {
                table: "outbound_domains".into(),
                key: "aol.com".into(),
                n: None
            }
        );
        let line = serde_json::to_string(&Request::ThrottleConsume {
            name: "t".into(),
            n: Some(2),
        })
        .unwrap();
        assert_eq!(line, r#"{"op":"throttle_consume","name":"t","n":2}"#);
        assert_eq!(
            parse_request(line.as_bytes()).unwrap(),
            Request::ThrottleConsume {
                name: "t".into(),
                n: Some(2)
            }
        );
    }

    #[test]
    fn malformed_requests_are_bad_request() {
        for bad in [
            &b"not json"[..],
            br#"{"op":"nope"}"#,
            br#"{"op":"gauge_get","table":"x"}"#,
            br#"{"op":"gauge_get","table":"x","key":"k","extra":1}"#,
            br#"{"op":"throttle_consume","name":"t","n":-1}"#,
            br#"[1,2]"#,
            b"\xff\xfe",
        ] {
            let e = parse_request(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{bad:?}");
        }
    }

    #[test]
    fn replies_are_one_line() {
        let r = Response::error(ErrorKind::Invalid, "a\nb");
        let l = r.to_line();
        assert_eq!(l.matches('\n').count(), 1);
        assert_eq!(serde_json::from_str::<Response>(l.trim_end()).unwrap(), r);
    }
}
