//! Policy lint cost (`lint_toml`: parse, compile and every check) on 1,000, 10,000 and
//! 100,000 rules, of two kinds:
//!
//! * `disjoint`: no two rules overlap (each its own local host, TCP to one port), the
//!   shape of a large generated rule base; the comparing analyses find no partner for
//!   any rule, so their cost is the index's `n log n`;
//! * `nested`: per site a /24 rule after many /28 and host rules inside it, protocols and
//!   ports mixed, as administrators write them: the analyses do real work (shadowed,
//!   redundant and conflicting rules within each site).
//!
//! Run: `cargo bench -p ipsec-benches --bench lint` (about a minute). The 100,000-rule
//! cases take seconds per iteration, so criterion takes ten samples of them.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ipsec_core::spd::{LintBudget, lint_toml_with};
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

/// The sizes of this run: all of them under `cargo bench`; under `cargo test --benches`
/// (which runs each case once, unoptimised, as a check) only the smallest.
fn sizes() -> &'static [usize] {
    if std::env::args().any(|a| a == "--bench") {
        &SIZES
    } else {
        &SIZES[..1]
    }
}

/// `n` rules no two of which overlap, then a catch-all.
fn disjoint(n: usize) -> String {
    let mut t = String::with_capacity(n * 120);
    for i in 0..n.saturating_sub(1) {
        let _ = write!(
            t,
            "[[policy]]\nname = \"d{i}\"\ndirection = \"both\"\nlocal = \"10.{}.{}.{}\"\n\
             remote = \"172.16.0.0/12\"\nprotocol = \"tcp\"\nlocal_port = {}\n\
             action = \"{}\"\n",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255,
            1000 + i % 1000,
            if i % 2 == 0 { "bypass" } else { "discard" },
        );
    }
    t.push_str("[[policy]]\nname = \"deny\"\ndirection = \"both\"\naction = \"discard\"\n");
    t
}

/// `n` rules in sites of 64, each site a /24 of its own: hosts and /28s inside it with
/// mixed protocols and ports, the site's /24 last, then a catch-all.
fn nested(n: usize) -> String {
    const PROTO: [&str; 4] = ["tcp", "udp", "icmp", "any"];
    let mut t = String::with_capacity(n * 120);
    for i in 0..n.saturating_sub(1) {
        let (site, k) = (i / 64, i % 64);
        let (a, b) = ((site >> 8) & 255, site & 255);
        let local = match k {
            63 => format!("10.{a}.{b}.0/24"),
            k if k % 3 == 0 => format!("10.{a}.{b}.{}/28", 16 * ((k / 3) % 16)),
            k => format!("10.{a}.{b}.{}", (k * 5) & 255),
        };
        let proto = PROTO[k % 4];
        let port = match proto {
            "tcp" | "udp" if k % 2 == 0 => format!("local_port = {}\n", 20 + k * 7),
            "tcp" | "udp" => format!("local_port = \"{}-{}\"\n", 1000 + k * 10, 1100 + k * 10),
            _ => String::new(),
        };
        let _ = write!(
            t,
            "[[policy]]\nname = \"n{i}\"\ndirection = \"both\"\nlocal = \"{local}\"\n\
             protocol = \"{proto}\"\n{port}action = \"{}\"\n",
            ["bypass", "discard"][k % 2]
        );
    }
    t.push_str("[[policy]]\nname = \"deny\"\ndirection = \"both\"\naction = \"discard\"\n");
    t
}

fn bench_lint(c: &mut Criterion) {
    let mut g = c.benchmark_group("lint");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    for (kind, make) in [
        ("disjoint", disjoint as fn(usize) -> String),
        ("nested", nested),
    ] {
        for &n in sizes() {
            let text = make(n);
            // The same findings whatever the run: the budget never cuts these files short.
            let findings = lint_toml_with(&text, LintBudget::DEFAULT);
            assert!(
                findings
                    .iter()
                    .all(|f| f.code != "budget" && f.code != "invalid")
            );
            g.bench_with_input(BenchmarkId::new(kind, n), &text, |b, text| {
                b.iter(|| black_box(lint_toml_with(text, LintBudget::DEFAULT)))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_lint);
criterion_main!(benches);
