//! Our SPD against DPDK's `rte_acl`, the Rust half: exports the rule sets and flows of
//! `benches/spd.rs` (IPv4, and IPv6 of the same shape) for `benches/dpdk-acl/acl_spd.c`,
//! and times our side of the comparison on the very same rules and flows.
//!
//! ```text
//! cargo run --release -p ipsec-benches --example spd_acl -- export DIR [--sizes 1000,10000]
//! cargo run --release -p ipsec-benches --example spd_acl -- bench [--sizes 1000,10000] [--family ipv4]
//! cargo run --release -p ipsec-benches --example spd_acl -- stats [--sizes 1000,10000] [--family ipv6]
//! ```
//!
//! Instructions per lookup, where the timings are too noisy to compare two builds:
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!   --toggle-collect='ipsec_core::spd::Spd::classify_into' \
//!   --toggle-collect='ipsec_core::spd::Spd::classify_burst' \
//!   target/release/examples/spd_acl bench --family ipv4 --sizes 1000
//! callgrind_annotate --tree=caller cg.out | grep -E -B3 'PROGRAM TOTALS|\*  .*Spd::classify_(into|burst) \['
//! ```
//!
//! The total divided by the lookups: the calls of `classify_into` (the `<` lines above
//! it: one call per flow, for a classifier under 16 MiB, which answers one flow at a
//! time), or 16 per call of `classify_burst` (the staged burst of the largest sets: two
//! calls, one per direction, per 32 flows). Session 17 on an AMD EPYC: about 295 instructions
//! a lookup for the 1,000-policy IPv4 set, 424 for 10,000 (449 before the exact filter
//! boxes; 416 in session 18), about 640 for 100,000 (the calls of `classify_burst` times
//! 16; where it is inlined, toggle on `Spd::lookup_burst`, one call per 32 flows).
//!
//! `export` writes `DIR/spd-ipv4-N.txt` and `DIR/spd-ipv6-N.txt`, one line per rule and
//! per flow (the C program's input format, documented there):
//!
//! ```text
//! rule INDEX out|in|both LOCAL/LEN REMOTE/LEN PROTO|any LPORT-LPORT|any RPORT-RPORT|any
//! flow out|in SRC DST PROTO SPORT|- DPORT|- POLICY_INDEX|none
//! ```
//!
//! Rules are written from the loaded [`Spd`]'s policies (file order = `INDEX`), not from
//! the generator, and each flow carries the index of the policy our compiled SPD matched,
//! so the C program proves that `rte_acl` classifies exactly as we do before it times
//! anything.
//!
//! `stats` prints the shape of each compiled classifier (outbound IPv4 only: groups,
//! index dimension, intervals, list lengths, the interval starts a lookup walks in its
//! bucket (`walk`: mean over the intervals, most, and the share walked by bisection),
//! and in the filtered layout the share of list entries whose filter box is exact), for
//! tuning. `bench` prints one JSON line
//! per rule set: ns per lookup (the flows, outbound ones
//! first then inbound ones, in bursts of 32: one [`Spd::lookup_burst`] call per burst, on
//! the compiled classifier, no flow cache; it is first checked against [`Spd::lookup`]), the
//! time to compile the classifier ([`Spd::recompiled`], policy parsing excluded, as
//! `rte_acl_add_rules` + `rte_acl_build` exclude the application's parsing) and
//! [`Spd::compiled_bytes`] (both directions; also without the non-first fragment index,
//! which `rte_acl` has no counterpart of). Timing is the thread CPU clock, a calibration
//! pass, then 7 rounds of at least 20 ms whose median is reported, as in
//! `benches/openssl/evp_aead.c` and the C program. `scripts/spd-report.py` runs it on
//! CPU 0, where the C program's EAL pins its lcore (by hand: `taskset -c 0`).

#[path = "../benches/common/mod.rs"]
mod common;
#[path = "../benches/spd_gen/mod.rs"]
mod spd_gen;

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use ipsec_core::spd::{EngineKind, PolicyDirection};
use ipsec_core::{Decision, Direction, Flow, Spd};
use spd_gen::{Family, rule_set};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const BURST: usize = 32;
const ROUNDS: usize = 7;
const ROUND_NS: u64 = 20_000_000;

fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

/// `(lo, hi)` as `ADDR/LEN` if it is exactly one prefix of a `width`-bit family.
fn prefix(family: Family, lo: u128, hi: u128) -> Option<String> {
    let size = hi.wrapping_sub(lo); // host mask if a prefix
    let is_prefix = size & size.wrapping_add(1) == 0 && lo & size == 0;
    let host_bits = size.count_ones() as u8;
    (is_prefix && host_bits <= family.width())
        .then(|| format!("{}/{}", family.addr(lo), family.width() - host_bits))
}

/// The one prefix of `family` in `set`; `None` if the set has no address of the family
/// (the rule cannot match it); an error if it is not a single prefix.
fn set_prefix(
    family: Family,
    set: &ipsec_core::spd::AddrSet,
    what: &str,
) -> Result<Option<String>, String> {
    let ranges: Vec<(u128, u128)> = match family {
        Family::V4 => set
            .v4_ranges()
            .iter()
            .map(|&(a, b)| (u128::from(a), u128::from(b)))
            .collect(),
        Family::V6 => set.v6_ranges().to_vec(),
    };
    match ranges.as_slice() {
        [] => Ok(None),
        [(lo, hi)] => prefix(family, *lo, *hi)
            .map(Some)
            .ok_or_else(|| format!("{what}: not a prefix")),
        _ => Err(format!("{what}: more than one range")),
    }
}

fn port_text(p: Option<(u16, u16)>) -> String {
    p.map_or_else(|| "any".into(), |(lo, hi)| format!("{lo}-{hi}"))
}

/// The export file of one rule set.
fn export_text(spd: &Spd, flows: &[Flow], family: Family) -> Result<String, String> {
    let mut out = format!(
        "# ipsec-core SPD rule set for acl_spd.c: {} {} policies {} flows\n",
        family_name(family),
        spd.policies().len(),
        flows.len()
    );
    for (i, p) in spd.policies().iter().enumerate() {
        if p.icmp_type().is_some() || p.icmp_code().is_some() {
            return Err(format!(
                "policy {}: ICMP selectors are not exported",
                p.name()
            ));
        }
        let local = set_prefix(family, p.local(), p.name())?;
        let remote = set_prefix(family, p.remote(), p.name())?;
        let (Some(local), Some(remote)) = (local, remote) else {
            continue; // no address of this family: cannot match its flows
        };
        let dir = match p.direction() {
            PolicyDirection::Outbound => "out",
            PolicyDirection::Inbound => "in",
            _ => "both",
        };
        let proto = p.protocol().map_or_else(|| "any".into(), |n| n.to_string());
        let _ = writeln!(
            out,
            "rule {i} {dir} {local} {remote} {proto} {} {}",
            port_text(p.local_port()),
            port_text(p.remote_port())
        );
    }
    for f in flows {
        let dir = match f.direction {
            Direction::Outbound => "out",
            _ => "in",
        };
        let port = |p: Option<u16>| p.map_or_else(|| "-".into(), |p| p.to_string());
        let matched = spd
            .lookup(f)
            .policy_index
            .map_or_else(|| "none".into(), |i| i.to_string());
        let _ = writeln!(
            out,
            "flow {dir} {} {} {} {} {} {matched}",
            f.src,
            f.dst,
            f.protocol,
            port(f.src_port),
            port(f.dst_port)
        );
    }
    Ok(out)
}

/// Panics unless [`Spd::lookup_burst`] answers as [`Spd::lookup`] for every flow.
fn pass_check(spd: &Spd, flows: &[Flow]) {
    let mut out = [Decision::NO_MATCH; BURST];
    for burst in flows.chunks(BURST) {
        let out = &mut out[..burst.len()];
        spd.lookup_burst(burst, out);
        for (f, d) in burst.iter().zip(out.iter()) {
            assert_eq!(*d, spd.lookup(f), "lookup_burst differs from lookup: {f:?}");
        }
    }
}

/// ns per lookup of `flows` in bursts of [`BURST`]: the median of [`ROUNDS`] rounds.
fn time_lookups(spd: &Spd, flows: &[Flow]) -> f64 {
    let mut out = [Decision::NO_MATCH; BURST];
    let mut pass = || {
        for burst in flows.chunks(BURST) {
            let out = &mut out[..burst.len()];
            spd.lookup_burst(black_box(burst), out);
            black_box(&*out);
        }
    };
    // The burst answers what one lookup at a time answers (a cross-check, not timed).
    pass_check(spd, flows);
    // Calibration: passes that take at least ROUND_NS in all.
    let t = common::cpu_now();
    pass();
    let one = (common::cpu_now() - t).as_nanos().max(1) as u64;
    let passes = ROUND_NS.div_ceil(one).max(1);
    let mut per_lookup: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t = common::cpu_now();
            for _ in 0..passes {
                pass();
            }
            (common::cpu_now() - t).as_nanos() as f64 / (passes as f64 * flows.len() as f64)
        })
        .collect();
    per_lookup.sort_by(f64::total_cmp);
    per_lookup[ROUNDS / 2]
}

/// The sizes (`--sizes 1000,10000`; default [`SIZES`]) and families (`--family ipv4`
/// or `ipv6`; default both) of the command line.
fn parse_options(args: &[String]) -> Result<(Vec<usize>, Vec<Family>), String> {
    let (mut sizes, mut families) = (SIZES.to_vec(), vec![Family::V4, Family::V6]);
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag}: a value"))?;
        match flag.as_str() {
            "--sizes" => {
                sizes = value
                    .split(',')
                    .map(|s| s.trim().parse().map_err(|e| format!("--sizes {s}: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            "--family" => {
                families = vec![match value.as_str() {
                    "ipv4" => Family::V4,
                    "ipv6" => Family::V6,
                    other => return Err(format!("--family {other}: ipv4 or ipv6")),
                }];
            }
            _ => return Err(format!("unexpected argument {flag}")),
        }
    }
    Ok((sizes, families))
}

fn run(args: &[String]) -> Result<(), String> {
    let (cmd, rest) = args
        .split_first()
        .ok_or("usage: spd_acl export DIR | bench | stats")?;
    let (dir, rest) = match cmd.as_str() {
        "export" => {
            let (dir, rest) = rest.split_first().ok_or("export: the output directory")?;
            (Some(Path::new(dir)), rest)
        }
        "bench" | "stats" => (None, rest),
        _ => return Err(format!("unknown command {cmd}")),
    };
    let (sizes, families) = parse_options(rest)?;
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    for family in families {
        for &n in &sizes {
            let (text, flows) = rule_set(n, family);
            let spd = Spd::from_toml(&text).map_err(|e| e.to_string())?;
            let name = family_name(family);
            if let Some(dir) = dir {
                let path = dir.join(format!("spd-{name}-{n}.txt"));
                std::fs::write(&path, export_text(&spd, &flows, family)?)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                continue;
            }
            if cmd == "stats" {
                println!("{name} {n}:\n{}", spd.engine_stats());
                continue;
            }
            let mut sorted = flows.clone();
            sorted.sort_by_key(|f| f.direction != Direction::Outbound);
            let t = Instant::now();
            let again = spd.recompiled(EngineKind::Partitioned);
            let build = t.elapsed();
            drop(again);
            let ns = time_lookups(&spd, &sorted);
            let bytes = spd.compiled_bytes();
            let no_frag = bytes - spd.fragment_index_bytes();
            println!(
                "{{\"impl\":\"ipsec-core\",\"family\":\"{name}\",\"rules\":{n},\"flows\":{},\
                 \"burst\":{BURST},\"ns_per_lookup\":{ns:.2},\"build_ms\":{:.3},\
                 \"bytes\":{bytes},\"bytes_per_rule\":{:.1},\"bytes_no_fragment_index\":{no_frag},\
                 \"bytes_per_rule_no_fragment_index\":{:.1}}}",
                sorted.len(),
                build.as_secs_f64() * 1e3,
                bytes as f64 / n as f64,
                no_frag as f64 / n as f64,
            );
        }
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("spd_acl: {e}");
        std::process::exit(2);
    }
}
