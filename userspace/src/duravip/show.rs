//! `cluster duravip show` in Momentum's format (reference/momentum.md §3.1):
//!
//! ```text
//! DuraVIP State:
//! 198.51.100.50/binding-a/binding-b: (owned,safe) multivip
//! \t[view stable for 5420 seconds]
//! \t[configuration stable for 5409 seconds]
//!     \tnode-2 multivip
//!  *  \tnode-4 multivip
//! ```
//!
//! The asterisk marks the owner among the participants. Flags are `owned|unowned`, then
//! `safe|UNSAFE|BROKEN`, then `conflict` when two preferences clash (our addition in the
//! same list form). `multivip` is the only kind Duraplane has.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr, time::Duration};

use super::assign::{Assignment, Safety};

/// What the renderer needs besides the assignment.
#[derive(Debug, Clone, Default)]
pub struct ShowContext<'a> {
    /// The view in Corosync's order, by nodename: participants are listed in this order
    /// (those missing from it follow, sorted).
    pub view_order: &'a [String],
    /// How long the view has been unchanged.
    pub view_stable: Duration,
    /// Per VIP: how long its declarations have been unchanged; missing → `view_stable`.
    pub config_stable: BTreeMap<IpAddr, Duration>,
}

/// Render every VIP of `a`.
pub fn render(a: &Assignment, ctx: &ShowContext<'_>) -> String {
    let mut out = String::from("DuraVIP State:\n");
    for st in a.states.values() {
        let mut head = st.addr.to_string();
        for b in &st.bindings {
            head.push('/');
            head.push_str(b);
        }
        let owned = if st.owner.is_some() {
            "owned"
        } else {
            "unowned"
        };
        let safety = match st.safety {
            Safety::Safe => "safe",
            Safety::Unsafe => "UNSAFE",
            Safety::Broken => "BROKEN",
        };
        let conflict = if st.conflict { ",conflict" } else { "" };
        let cfg = ctx
            .config_stable
            .get(&st.addr)
            .copied()
            .unwrap_or(ctx.view_stable);
        let _ = write!(
            out,
            "{head}: ({owned},{safety}{conflict}) multivip\n\t[view stable for {} seconds]\n\t[configuration stable for {} seconds]\n",
            ctx.view_stable.as_secs(),
            cfg.as_secs()
        );
        let mut rows: Vec<&String> = ctx
            .view_order
            .iter()
            .filter(|n| st.participants.contains(n))
            .collect();
        let mut rest: Vec<&String> = st
            .participants
            .iter()
            .filter(|p| !ctx.view_order.contains(p))
            .collect();
        rest.sort();
        rows.extend(rest);
        for n in rows {
            let mark = if st.owner.as_ref() == Some(n) {
                " *  "
            } else {
                "    "
            };
            let _ = writeln!(out, "{mark}\t{n} multivip");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::duravip::assign::{AssignInput, MemberDecls, VipDecl, assign};

    #[test]
    fn matches_momentums_sample_byte_for_byte() {
        // The structure of reference §3.1's sample, with documentation addresses.
        let decl = |i: u8, names: &[&str]| VipDecl {
            addr: IpAddr::from([198, 51, 100, i]),
            bindings: names.iter().map(|s| (*s).to_owned()).collect(),
            services: BTreeSet::from(["Binding".to_owned()]),
            preference: None,
            follow: None,
        };
        let vips = vec![decl(50, &["hm-50", "hm-51", "hm-52"]), decl(53, &["hm-53"])];
        let members = ["labrat-1", "labrat-2", "labrat-4"]
            .iter()
            .map(|n| MemberDecls {
                nodename: (*n).to_owned(),
                vips: vips.clone(),
            })
            .collect();
        let current = BTreeMap::from([
            (IpAddr::from([198, 51, 100, 50]), "labrat-4".to_owned()),
            (IpAddr::from([198, 51, 100, 53]), "labrat-2".to_owned()),
        ]);
        let a = assign(&AssignInput {
            members,
            current,
            mature: false,
            balance_moves: 0,
            quorate: true,
        });
        let order: Vec<String> = ["labrat-2", "labrat-1", "labrat-4"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let ctx = ShowContext {
            view_order: &order,
            view_stable: Duration::from_secs(5420),
            config_stable: BTreeMap::from([
                (IpAddr::from([198, 51, 100, 50]), Duration::from_secs(5409)),
                (IpAddr::from([198, 51, 100, 53]), Duration::from_secs(5466)),
            ]),
        };
        let expected = "DuraVIP State:\n\
198.51.100.50/hm-50/hm-51/hm-52: (owned,safe) multivip\n\
\t[view stable for 5420 seconds]\n\
\t[configuration stable for 5409 seconds]\n    \tlabrat-2 multivip\n    \tlabrat-1 multivip\n *  \tlabrat-4 multivip\n\
198.51.100.53/hm-53: (owned,safe) multivip\n\
\t[view stable for 5420 seconds]\n\
\t[configuration stable for 5466 seconds]\n *  \tlabrat-2 multivip\n    \tlabrat-1 multivip\n    \tlabrat-4 multivip\n";
        assert_eq!(render(&a, &ctx), expected);
    }

    #[test]
    fn unowned_broken_and_conflict_flags() {
        let mut v = VipDecl {
            addr: IpAddr::from([198, 51, 100, 9]),
            bindings: BTreeSet::from(["x".to_owned()]),
            services: BTreeSet::new(),
            preference: Some("a".into()),
            follow: None,
        };
        let ma = MemberDecls {
            nodename: "a".into(),
            vips: vec![v.clone()],
        };
        v.preference = Some("b".into());
        let mb = MemberDecls {
            nodename: "b".into(),
            vips: vec![v.clone()],
        };
        let mut i = AssignInput {
            members: vec![ma, mb],
            current: BTreeMap::new(),
            mature: true,
            balance_moves: 1,
            quorate: true,
        };
        let ctx = ShowContext::default();
        assert!(
            render(&assign(&i), &ctx).contains("198.51.100.9/x: (owned,safe,conflict) multivip\n")
        );
        i.members[1].vips[0].bindings = BTreeSet::from(["y".to_owned()]);
        let text = render(&assign(&i), &ctx);
        assert!(
            text.contains("198.51.100.9/x/y: (unowned,BROKEN,conflict) multivip\n"),
            "{text}"
        );
        assert!(
            text.contains("\n    \ta multivip\n    \tb multivip\n"),
            "{text}"
        );
    }
}
