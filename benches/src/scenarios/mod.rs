//! One module per performance goal of the capability issues.

mod failover;
mod logs;
mod manager_pull;
mod membership;
mod packet_cost;
mod rawbpf;
mod replication;
mod scrape;
mod util;
mod veth_flood;
mod vip_scale;

use crate::harness::Scenario;

/// Every scenario, in the order the table shows them.
pub fn all() -> Vec<Box<dyn Scenario>> {
    vec![
        Box::new(packet_cost::PacketCost),
        Box::new(veth_flood::VethFlood),
        Box::new(scrape::Scrape),
        Box::new(replication::ReplicationStaleness),
        Box::new(membership::MembershipDetection),
        Box::new(logs::LogAppends),
        Box::new(manager_pull::ManagerPull),
        Box::new(failover::Failover),
        Box::new(vip_scale::VipScale),
    ]
}
