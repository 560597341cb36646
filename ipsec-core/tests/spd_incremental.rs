//! A live gateway's SPD after random sequences of `install_policy` (at random places),
//! `remove_policy`, `replace_policy` and rebuilds answers every lookup exactly as an SPD
//! freshly built from the same policy list does: the changes pending beside the
//! compiled classifier (see "Live changes" in the `spd` module docs) never change a
//! decision. Sequences run past the bound of pending changes, so the rebuild it forces
//! is covered too.

use ipsec_core::{Direction, Flow, Gateway, Spd};
use proptest::prelude::*;
use std::net::IpAddr;
use std::time::Duration;

const SAS: &str = include_str!("data/sa-pair.toml");

fn v4(i: u8) -> String {
    format!("10.0.0.{i}")
}
fn v6(i: u8) -> String {
    format!("2001:db8::{i:x}")
}

/// One address element over 10.0.0.0-15 and 2001:db8::0-f (overlaps are frequent).
fn addr_elem() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("any".to_string()),
        3 => (0u8..16, any::<bool>()).prop_map(|(i, six)| if six { v6(i) } else { v4(i) }),
        3 => (0u8..16, 29u8..=32, any::<bool>()).prop_map(|(i, len, six)| {
            let block = 1u8 << (32 - len);
            let base = i - i % block;
            if six { format!("{}/{}", v6(base), 96 + len) } else { format!("{}/{len}", v4(base)) }
        }),
        1 => prop::collection::vec((0u8..16, any::<bool>()), 2..4).prop_map(|v| {
            let v: Vec<String> =
                v.into_iter().map(|(i, six)| if six { v6(i) } else { v4(i) }).collect();
            format!("{v:?}").replace('"', "'")
        }),
    ]
}

/// The body of one `[[policy]]` table, without its name: few distinct shapes, so that
/// many policies share their selectors or differ only in their ports.
fn body() -> impl Strategy<Value = String> {
    (
        0u8..3,
        prop::option::of(addr_elem()),
        prop::option::of(addr_elem()),
        0u8..5,
        prop::option::of(0u16..4),
        0u8..3,
    )
        .prop_map(|(dir, local, remote, proto, port, action)| {
            let dir = ["outbound", "inbound", "both"][usize::from(dir)];
            let mut s = format!("direction = \"{dir}\"\n");
            let quote = |a: &str| {
                if a.starts_with('[') {
                    a.replace('\'', "\"")
                } else {
                    format!("\"{a}\"")
                }
            };
            if let Some(l) = local {
                s += &format!("local = {}\n", quote(&l));
            }
            if let Some(r) = remote {
                s += &format!("remote = {}\n", quote(&r));
            }
            match proto {
                1 => {
                    s += "protocol = \"tcp\"\n";
                    if let Some(p) = port {
                        s += &format!("remote_port = {p}\n");
                    }
                }
                2 => {
                    s += "protocol = \"udp\"\n";
                    if let Some(p) = port {
                        s += &format!("local_port = \"{p}-{}\"\n", p + 2);
                    }
                }
                3 => {
                    s += "protocol = \"icmp\"\n";
                    if let Some(p) = port {
                        s += &format!("icmp_type = {p}\n");
                    }
                }
                4 => s += "protocol = 50\n",
                _ => {}
            }
            let action = ["protect", "bypass", "discard"][usize::from(action)];
            s += &format!("action = \"{action}\"\n");
            if action == "protect" {
                s += match dir {
                    "outbound" => "sa = \"o\"\n",
                    "inbound" => "sa = \"i\"\n",
                    _ => "sa = [\"o\", \"i\"]\n",
                };
            }
            s
        })
}

#[derive(Debug, Clone)]
enum Op {
    /// Install a new policy before the policy at this index (mod the count; the count
    /// itself: last).
    Install(usize, String),
    Remove(usize),
    Replace(usize, String),
    /// `Gateway::rebuild_policies`.
    Rebuild,
    /// The off-thread rebuild: an empty edit compiled and committed.
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<usize>(), body()).prop_map(|(i, b)| Op::Install(i, b)),
        5 => any::<usize>().prop_map(Op::Remove),
        4 => (any::<usize>(), body()).prop_map(|(i, b)| Op::Replace(i, b)),
        1 => Just(Op::Rebuild),
        1 => Just(Op::Commit),
    ]
}

fn table(name: &str, body: &str) -> String {
    format!("[[policy]]\nname = \"{name}\"\n{body}")
}

fn file(list: &[(String, String)]) -> String {
    let mut s = String::from(SAS);
    for (name, body) in list {
        s += "\n";
        s += &table(name, body);
    }
    s
}

fn flows() -> Vec<Flow> {
    let mut v = Vec::new();
    for d in [Direction::Outbound, Direction::Inbound] {
        for six in [false, true] {
            let addr = |i: u8| -> IpAddr {
                if six {
                    v6(i).parse().unwrap()
                } else {
                    v4(i).parse().unwrap()
                }
            };
            for (s, t) in [(0, 1), (1, 0), (3, 7), (5, 5), (8, 12), (15, 2), (6, 9)] {
                let (s, t) = (addr(s), addr(t));
                v.push(Flow::new(d, s, t, 6).ports(1, 2));
                v.push(Flow::new(d, s, t, 6).ports(2, 1));
                v.push(Flow::new(d, s, t, 17).ports(3, 0));
                v.push(Flow::new(d, s, t, 1).icmp(2, 0));
                v.push(Flow::new(d, s, t, 50));
                v.push(Flow::new(d, s, t, 6));
                v.push(Flow::new(d, s, t, 17));
            }
        }
    }
    v
}

/// Every lookup of the gateway's SPD answers as a fresh SPD of `list` does.
fn check(gw: &Gateway, list: &[(String, String)], flows: &[Flow]) -> Result<(), TestCaseError> {
    let fresh = Spd::from_toml(&file(list)).expect("a valid policy file");
    let live = gw.spd();
    let names = |spd: &Spd| {
        spd.policies()
            .iter()
            .map(|p| p.name().to_owned())
            .collect::<Vec<_>>()
    };
    prop_assert_eq!(names(live), names(&fresh));
    prop_assert_eq!(live.policies(), fresh.policies());
    for f in flows {
        prop_assert_eq!(live.lookup(f), fresh.lookup(f), "{:?}", f);
        prop_assert_eq!(live.lookup(f), live.lookup_linear(f), "{:?}", f);
        prop_assert_eq!(
            live.lookup_non_first_fragment(f),
            fresh.lookup_non_first_fragment(f),
            "{:?}",
            f
        );
        prop_assert_eq!(
            live.inbound_policy("i", f),
            fresh.inbound_policy("i", f),
            "{:?}",
            f
        );
    }
    // The burst lookup reads the same compiled classifiers, removal masks and added
    // policies.
    let mut burst = vec![ipsec_core::Decision::NO_MATCH; flows.len()];
    live.lookup_burst(flows, &mut burst);
    for (f, d) in flows.iter().zip(&burst) {
        prop_assert_eq!(*d, fresh.lookup(f), "lookup_burst: {:?}", f);
    }
    live.lookup_burst_staged(flows, &mut burst);
    for (f, d) in flows.iter().zip(&burst) {
        prop_assert_eq!(*d, fresh.lookup(f), "lookup_burst_staged: {:?}", f);
    }
    for d in [Direction::Outbound, Direction::Inbound] {
        for sa in ["o", "i"] {
            prop_assert_eq!(
                live.first_policy_naming(sa, d).map(|p| p.name()),
                fresh.first_policy_naming(sa, d).map(|p| p.name())
            );
        }
    }
    prop_assert_eq!(
        live.policy_selectors_for_sa("i"),
        fresh.policy_selectors_for_sa("i")
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn live_changes_answer_as_a_fresh_spd(
        initial in prop::collection::vec(body(), 0..12),
        ops in prop::collection::vec(op(), 1..180),
    ) {
        let flows = flows();
        let mut list: Vec<(String, String)> =
            initial.into_iter().enumerate().map(|(i, b)| (format!("p{i}"), b)).collect();
        let mut next = list.len();
        let mut gw = Gateway::new(Spd::from_toml(&file(&list)).expect("valid"), Duration::ZERO)
            .expect("a gateway");
        let mut max_pending = 0;
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Install(i, body) => {
                    let name = format!("p{next}");
                    next += 1;
                    let at = i % (list.len() + 1);
                    let before = list.get(at).map(|(n, _)| n.clone());
                    gw.install_policy(&table(&name, &body), before.as_deref())
                        .expect("installed");
                    list.insert(at, (name, body));
                }
                Op::Remove(i) if !list.is_empty() => {
                    let (name, _) = list.remove(i % list.len());
                    gw.remove_policy(&name).expect("removed");
                }
                Op::Replace(i, body) if !list.is_empty() => {
                    let at = i % list.len();
                    list[at].1 = body;
                    gw.replace_policy(&table(&list[at].0, &list[at].1)).expect("replaced");
                }
                Op::Rebuild => {
                    gw.rebuild_policies();
                    prop_assert_eq!(gw.pending_policy_changes(), 0);
                }
                Op::Commit => {
                    let compiled = gw.edit_policies().compile();
                    drop(gw.commit_policies(compiled).expect("committed"));
                    prop_assert_eq!(gw.pending_policy_changes(), 0);
                }
                _ => {}
            }
            max_pending = max_pending.max(gw.pending_policy_changes());
            prop_assert!(gw.pending_policy_changes() <= 128);
            // Checking every step of a long sequence costs more than it finds.
            if step < 24 || step % 7 == 0 {
                check(&gw, &list, &flows)?;
            }
        }
        check(&gw, &list, &flows)?;
    }
}
