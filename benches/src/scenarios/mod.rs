//! One module per performance goal of the capability issues.

use crate::harness::Scenario;

/// Every scenario, in the order the table shows them.
pub fn all() -> Vec<Box<dyn Scenario>> {
    vec![]
}
