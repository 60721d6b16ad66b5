//! DuraVIP: floating addresses, each owned by exactly one live member of the agreed view.
//!
//! * [`assign`]: the pure ownership function every member computes identically.
//! * [`decl`]: configuration → announced declarations, and the node-level rules.
//! * [`show`]: `cluster duravip show` in Momentum's format.
//! * [`plumb`]: adding/removing the addresses with netlink, tagged so orphans are found.
//! * [`announce`]: gratuitous ARP / unsolicited NA frames, their schedule and a sender.
//!
//! How the daemon wires these together is described in docs/duravip.md.

pub mod announce;
pub mod assign;
pub mod daemon;
pub mod decl;
pub mod plumb;
pub mod show;

pub use assign::{
    AssignInput, Assignment, MemberDecls, Move, MoveReason, Safety, VipDecl, VipState, assign,
};
