//! `outbound_cidr` counting: the `tc_egress` classifier on the configured interfaces
//! counts this node's outbound TCP connections per destination address.

use std::{net::IpAddr, time::Duration};

use aya::{
    maps::IterableMap,
    programs::{SchedClassifier, TcAttachType, tc, tc::SchedClassifierLinkId},
    util::KernelVersion,
};
use duraplane_common::{Stat, map_names as names, program_names};

use super::{
    BpfError, Datapath, dup_fd,
    frames::{Frame, tcp_flags},
    monotonic_ns, testrun,
};

/// Connection counts of one destination address (summed over CPUs): the same shape as a
/// source's ([`super::SourceCount`], whose `current` saturates the same way).
pub type DestinationCount = super::SourceCount;

/// One open outbound connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundFlow {
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    /// CLOCK_MONOTONIC ns (coarse) when the SYN left.
    pub opened_ns: u64,
}

/// How `tc_egress` got attached (logged: the clsact qdisc is visible to `tc` users).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressMode {
    /// A TCX link (kernel ≥ 6.6): no qdisc, gone with the link.
    Tcx,
    /// A netlink filter on a clsact qdisc (older kernels); the qdisc stays.
    Clsact,
}

impl std::fmt::Display for EgressMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EgressMode::Tcx => "tcx",
            EgressMode::Clsact => "clsact",
        })
    }
}

pub(super) struct EgressAttachment {
    pub interface: String,
    pub link: SchedClassifierLinkId,
}

impl Datapath {
    /// `tc_egress`, loaded on first use.
    pub fn egress_program(&mut self) -> Result<&SchedClassifier, BpfError> {
        Ok(self.egress_program_mut()?)
    }

    fn egress_program_mut(&mut self) -> Result<&mut SchedClassifier, BpfError> {
        self.loaded_program::<SchedClassifier>(program_names::TC_EGRESS)
    }

    /// Runs `tc_egress` on `frame` (as if sent by this node) through `BPF_PROG_TEST_RUN`;
    /// returns its `TC_ACT_*` verdict.
    pub fn egress_test_run(&mut self, frame: &[u8]) -> Result<i32, BpfError> {
        testrun::run_tc(self.egress_program()?, frame)
    }

    /// Attaches `tc_egress` to `interface`'s egress (TCX link on kernel ≥ 6.6; a clsact
    /// qdisc + netlink filter before). Detached by [`detach_egress`](Self::detach_egress)
    /// or on drop.
    pub fn attach_egress(&mut self, interface: &str) -> Result<EgressMode, BpfError> {
        if self.egress.iter().any(|a| a.interface == interface) {
            return Err(BpfError::EgressAlreadyAttached {
                interface: interface.to_owned(),
            });
        }
        // aya attaches with a TCX link from 6.6 on (no qdisc needed); before, through a
        // clsact qdisc. An unreadable version is treated as old: the qdisc is harmless.
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if !tcx {
            match tc::qdisc_add_clsact(interface) {
                Ok(()) => {}
                // Already there (ours from an earlier run, or someone else's): reuse it.
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(source) => {
                    return Err(BpfError::Clsact {
                        interface: interface.to_owned(),
                        source: Box::new(source),
                    });
                }
            }
        }
        let link = self
            .egress_program_mut()?
            .attach(interface, TcAttachType::Egress)
            .map_err(|source| BpfError::EgressAttach {
                interface: interface.to_owned(),
                source: Box::new(source),
            })?;
        self.egress.push(EgressAttachment {
            interface: interface.to_owned(),
            link,
        });
        Ok(if tcx {
            EgressMode::Tcx
        } else {
            EgressMode::Clsact
        })
    }

    /// Interfaces `tc_egress` is attached to.
    pub fn egress_attachments(&self) -> Vec<String> {
        self.egress.iter().map(|a| a.interface.clone()).collect()
    }

    /// Detaches `tc_egress` from `interface`. Counts and open flows are kept.
    pub fn detach_egress(&mut self, interface: &str) -> Result<(), BpfError> {
        let pos = self
            .egress
            .iter()
            .position(|a| a.interface == interface)
            .ok_or_else(|| BpfError::EgressNotAttached {
                interface: interface.to_owned(),
            })?;
        let a = self.egress.remove(pos);
        self.egress_program_mut()?
            .detach(a.link)
            .map_err(|source| BpfError::EgressDetach {
                interface: a.interface,
                source: Box::new(source),
            })
    }

    /// Per-destination counts of every destination the LRU still holds (batch read).
    pub fn read_destinations(&mut self) -> Result<Vec<DestinationCount>, BpfError> {
        let fd = dup_fd(self.destinations.map(), names::DESTINATIONS)?;
        self.read_address_counts(names::DESTINATIONS, fd)
    }

    /// Every open outbound connection, IPv4 then IPv6 (batch reads).
    pub fn read_outbound_flows(&mut self) -> Result<Vec<OutboundFlow>, BpfError> {
        let fds = [
            dup_fd(self.out_flows_v4.map(), names::OUT_FLOWS_V4)?,
            dup_fd(self.out_flows_v6.map(), names::OUT_FLOWS_V6)?,
        ];
        Ok(self
            .read_flow_maps([names::OUT_FLOWS_V4, names::OUT_FLOWS_V6], fds)?
            .into_iter()
            .map(|f| OutboundFlow {
                local: f.saddr,
                local_port: f.sport,
                remote: f.daddr,
                remote_port: f.dport,
                opened_ns: f.value.opened_ns,
            })
            .collect())
    }

    /// Closes outbound flows opened more than `older_than` ago (a connection whose FIN/RST
    /// the classifier never saw: the host crashed it, the route changed) so destination
    /// counts do not stay up forever. Returns how many were closed.
    pub fn expire_outbound_flows(&mut self, older_than: Duration) -> Result<u64, BpfError> {
        let older = u64::try_from(older_than.as_nanos()).unwrap_or(u64::MAX);
        let cutoff = monotonic_ns()?.saturating_sub(older);
        self.expire_outbound_opened_before(cutoff)
    }

    /// Closes outbound flows whose `opened_ns` ≤ `cutoff_ns` (CLOCK_MONOTONIC) by running
    /// `tc_egress` on an RST of each (as if this node sent it), so the program's own close
    /// path keeps the flow map and the destination counts consistent.
    pub fn expire_outbound_opened_before(&mut self, cutoff_ns: u64) -> Result<u64, BpfError> {
        let flows = self.read_outbound_flows()?;
        let before = self.read_stats()?.get(Stat::OutClosed);
        for f in flows {
            if f.opened_ns > cutoff_ns {
                continue;
            }
            let frame = Frame::tcp(
                f.local,
                f.local_port,
                f.remote,
                f.remote_port,
                tcp_flags::RST,
            )
            .build();
            testrun::run_tc(self.egress_program()?, &frame)?;
        }
        Ok(self
            .read_stats()?
            .get(Stat::OutClosed)
            .saturating_sub(before))
    }
}
