//! The cluster key and the mutual challenge-response handshake that every connection on
//! port 4802 completes before anything else is accepted.
//!
//! Each side sends `HELLO { nonce, role, nodename }`; on receiving the other's HELLO it
//! sends `PROOF = HMAC-SHA256(key, label ‖ own role ‖ own nonce ‖ peer nonce ‖ own name ‖
//! peer name)`. A proof is bound to both fresh nonces (a recorded proof never verifies
//! again) and to the prover's role (a proof reflected back at its author does not verify,
//! because the author expects the opposite role). Comparison is constant-time
//! (`Mac::verify_slice`).

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::frame::{Frame, ServiceId};

/// Keys shorter than this are refused: too easy to guess.
pub const MIN_KEY_LEN: usize = 16;
/// Bytes of each side's random challenge.
pub const NONCE_LEN: usize = 32;
/// Bytes of an HMAC-SHA256 proof.
pub const PROOF_LEN: usize = 32;
/// Domain separation: a MAC made for anything else with the same key never verifies here.
const LABEL: &[u8] = b"duraplane/4802/auth/v1";

/// Engine message kinds (service 0).
pub mod kind {
    pub const HELLO: u8 = 1;
    pub const PROOF: u8 = 2;
    pub const PING: u8 = 3;
}

type HmacSha256 = Hmac<Sha256>;

/// The shared secret of the cluster. Debug output never shows it.
#[derive(Clone)]
pub struct ClusterKey(Vec<u8>);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({} bytes)", self.0.len())
    }
}

/// Why the cluster key could not be used; each names the path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "cluster key file {path}: {source}; create it with `head -c 32 /dev/urandom | base64 > {path} && chmod 600 {path}` on every node (same content)"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cluster key file {path} is readable by group/other (mode {mode:04o}); run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "cluster key file {path} holds {len} bytes; at least {MIN_KEY_LEN} are required (e.g. `head -c 32 /dev/urandom | base64 > {path}`)"
    )]
    TooShort { path: PathBuf, len: usize },
}

impl ClusterKey {
    /// Loads the key: the file's bytes with trailing whitespace removed (so a key written
    /// by `base64`/`openssl rand -hex` with its newline works). Refuses files readable by
    /// group or other.
    pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
        let meta = fs::metadata(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let mut bytes = fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
            bytes.pop();
        }
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort {
                path: path.to_owned(),
                len: bytes.len(),
            });
        }
        Ok(ClusterKey(bytes))
    }

    /// A key from bytes already in memory (tests, tools). `None` if shorter than
    /// [`MIN_KEY_LEN`].
    pub fn from_bytes(bytes: &[u8]) -> Option<ClusterKey> {
        (bytes.len() >= MIN_KEY_LEN).then(|| ClusterKey(bytes.to_vec()))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; this cannot fail.
        match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        }
    }
}

/// Which end of the TCP connection a side is; part of every proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opened the connection (a peer link or a client).
    Initiator = 1,
    /// Accepted it (a listener).
    Acceptor = 2,
}

impl Role {
    fn opposite(self) -> Role {
        match self {
            Role::Initiator => Role::Acceptor,
            Role::Acceptor => Role::Initiator,
        }
    }
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("service frame (service {service}, kind {kind}) before authentication")]
    Unauthenticated { service: u8, kind: u8 },
    #[error("malformed handshake message (kind {kind}): {what}")]
    Malformed { kind: u8, what: &'static str },
    #[error("peer's proof does not verify: wrong cluster key, replay or reflection")]
    BadProof,
}

#[derive(Debug)]
enum Stage {
    AwaitHello,
    AwaitProof {
        peer_nonce: [u8; NONCE_LEN],
        peer_name: String,
    },
    Done,
}

/// Progress of a handshake after one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this frame, then keep waiting.
    Send(Frame),
    /// The peer proved knowledge of the key; it calls itself `peer_name`.
    Done { peer_name: String },
}

/// A sans-I/O handshake: feed it the peer's engine frames; it says what to send.
#[derive(Debug)]
pub struct Handshake {
    role: Role,
    name: String,
    nonce: [u8; NONCE_LEN],
    stage: Stage,
}

impl Handshake {
    /// Starts a handshake; the returned HELLO must be sent first. Names longer than 255
    /// bytes are truncated (at a character boundary).
    pub fn start(role: Role, name: &str) -> (Handshake, Frame) {
        let mut name = name.to_owned();
        while name.len() > 255 {
            name.pop();
        }
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut p = Vec::with_capacity(NONCE_LEN + 2 + name.len());
        p.extend_from_slice(&nonce);
        p.push(role as u8);
        p.push(name.len() as u8);
        p.extend_from_slice(name.as_bytes());
        let hello = Frame::new(ServiceId::ENGINE, kind::HELLO, p);
        (
            Handshake {
                role,
                name,
                nonce,
                stage: Stage::AwaitHello,
            },
            hello,
        )
    }

    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// Consumes one frame from the peer.
    pub fn on_frame(&mut self, key: &ClusterKey, f: &Frame) -> Result<Step, AuthError> {
        if f.service != ServiceId::ENGINE {
            return Err(AuthError::Unauthenticated {
                service: f.service.0,
                kind: f.kind,
            });
        }
        match (&self.stage, f.kind) {
            (Stage::AwaitHello, kind::HELLO) => {
                let p = &f.payload;
                let bad = |what| AuthError::Malformed {
                    kind: kind::HELLO,
                    what,
                };
                if p.len() < NONCE_LEN + 2 {
                    return Err(bad("shorter than nonce, role and name length"));
                }
                let mut peer_nonce = [0u8; NONCE_LEN];
                peer_nonce.copy_from_slice(&p[..NONCE_LEN]);
                if p[NONCE_LEN] != self.role.opposite() as u8 {
                    return Err(bad("peer claims the same role as this side"));
                }
                let nlen = p[NONCE_LEN + 1] as usize;
                if p.len() != NONCE_LEN + 2 + nlen {
                    return Err(bad("name length does not match payload"));
                }
                let Ok(peer_name) = std::str::from_utf8(&p[NONCE_LEN + 2..]) else {
                    return Err(bad("name is not UTF-8"));
                };
                if peer_nonce == self.nonce {
                    // Our own challenge reflected back.
                    return Err(AuthError::BadProof);
                }
                let proof = self.proof(
                    key,
                    self.role,
                    &self.nonce,
                    &peer_nonce,
                    &self.name,
                    peer_name,
                );
                self.stage = Stage::AwaitProof {
                    peer_nonce,
                    peer_name: peer_name.to_owned(),
                };
                Ok(Step::Send(Frame::new(
                    ServiceId::ENGINE,
                    kind::PROOF,
                    proof.to_vec(),
                )))
            }
            (
                Stage::AwaitProof {
                    peer_nonce,
                    peer_name,
                },
                kind::PROOF,
            ) => {
                if f.payload.len() != PROOF_LEN {
                    return Err(AuthError::Malformed {
                        kind: kind::PROOF,
                        what: "proof is not 32 bytes",
                    });
                }
                let mut m = key.mac();
                feed(
                    &mut m,
                    self.role.opposite(),
                    peer_nonce,
                    &self.nonce,
                    peer_name,
                    &self.name,
                );
                m.verify_slice(&f.payload)
                    .map_err(|_| AuthError::BadProof)?;
                let peer_name = peer_name.clone();
                self.stage = Stage::Done;
                Ok(Step::Done { peer_name })
            }
            (_, k) => Err(AuthError::Malformed {
                kind: k,
                what: "unexpected message at this stage of the handshake",
            }),
        }
    }

    fn proof(
        &self,
        key: &ClusterKey,
        role: Role,
        own: &[u8; NONCE_LEN],
        peer: &[u8; NONCE_LEN],
        own_name: &str,
        peer_name: &str,
    ) -> [u8; PROOF_LEN] {
        let mut m = key.mac();
        feed(&mut m, role, own, peer, own_name, peer_name);
        m.finalize().into_bytes().into()
    }
}

fn feed(
    m: &mut HmacSha256,
    role: Role,
    prover_nonce: &[u8; NONCE_LEN],
    verifier_nonce: &[u8; NONCE_LEN],
    prover_name: &str,
    verifier_name: &str,
) {
    m.update(LABEL);
    m.update(&[role as u8]);
    m.update(prover_nonce);
    m.update(verifier_nonce);
    m.update(&[prover_name.len() as u8]);
    m.update(prover_name.as_bytes());
    m.update(&[verifier_name.len() as u8]);
    m.update(verifier_name.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_bytes(&[b; 32]).unwrap()
    }

    /// Runs both handshakes against each other; returns each side's result.
    fn run(ka: &ClusterKey, kb: &ClusterKey) -> (Result<Step, AuthError>, Result<Step, AuthError>) {
        let (mut a, ha) = Handshake::start(Role::Initiator, "a");
        let (mut b, hb) = Handshake::start(Role::Acceptor, "b");
        let Step::Send(pa) = a.on_frame(ka, &hb).unwrap() else {
            panic!()
        };
        let Step::Send(pb) = b.on_frame(kb, &ha).unwrap() else {
            panic!()
        };
        (a.on_frame(ka, &pb), b.on_frame(kb, &pa))
    }

    #[test]
    fn same_key_authenticates_both_ways() {
        let (a, b) = run(&key(1), &key(1));
        assert_eq!(
            a,
            Ok(Step::Done {
                peer_name: "b".into()
            })
        );
        assert_eq!(
            b,
            Ok(Step::Done {
                peer_name: "a".into()
            })
        );
    }

    #[test]
    fn wrong_key_fails_both_ways() {
        let (a, b) = run(&key(1), &key(2));
        assert_eq!(a, Err(AuthError::BadProof));
        assert_eq!(b, Err(AuthError::BadProof));
    }

    #[test]
    fn replayed_proof_fails() {
        let k = key(1);
        let (mut a, ha) = Handshake::start(Role::Initiator, "a");
        let (mut b, hb) = Handshake::start(Role::Acceptor, "b");
        let Step::Send(pa) = a.on_frame(&k, &hb).unwrap() else {
            panic!()
        };
        b.on_frame(&k, &ha).unwrap();
        assert!(b.on_frame(&k, &pa).is_ok());
        // A recorded HELLO + PROOF against a fresh acceptor: new nonce, proof fails.
        let (mut b2, _) = Handshake::start(Role::Acceptor, "b");
        b2.on_frame(&k, &ha).unwrap();
        assert_eq!(b2.on_frame(&k, &pa), Err(AuthError::BadProof));
    }

    #[test]
    fn reflection_fails() {
        let k = key(1);
        let (mut b, hb) = Handshake::start(Role::Acceptor, "b");
        // The acceptor's own HELLO reflected: wrong role.
        assert!(matches!(
            b.on_frame(&k, &hb),
            Err(AuthError::Malformed { .. })
        ));
        // Own nonce with the right role.
        let (mut b, hb) = Handshake::start(Role::Acceptor, "b");
        let mut fake = hb.clone();
        fake.payload[NONCE_LEN] = Role::Initiator as u8;
        assert_eq!(b.on_frame(&k, &fake), Err(AuthError::BadProof));
    }

    #[test]
    fn service_frame_before_auth_is_refused() {
        let (mut b, _) = Handshake::start(Role::Acceptor, "b");
        let f = Frame::new(ServiceId(1), 1, vec![]);
        assert!(matches!(
            b.on_frame(&key(1), &f),
            Err(AuthError::Unauthenticated { .. })
        ));
    }
}
