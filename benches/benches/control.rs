//! Control-call latency on a live gateway (issue 12, section 1; goal: adding or removing
//! one SA or policy in under 50 µs at 100,000 tunnels while traffic flows). The gateway
//! is `scale.rs`'s: N = 1,000, 10,000 and 100,000 tunnels, each an inbound and an
//! outbound AES-128-GCM SA and one `direction = "both"` PROTECT policy, then a
//! catch-all discard. Every timed figure is one control call (or one pair), timed alone
//! (see below for the clock): what is needed to undo it or to set up the next one runs
//! untimed.
//!
//! * `sa_add_delete/{pair,add,delete}`: `add_sa` of an inbound SA (fresh SPI and key)
//!   and `delete_sa` of it;
//! * `sa_rekey_out/{pair,rekey,delete_old}`: `rekey_sa` of a tunnel's outbound SA (a
//!   fresh key; every policy that sent through the old SA moves to the new one) and
//!   `delete_sa` of the old one. Each iteration takes the next tunnel in turn. The new
//!   SA also carries every name its predecessors carried, so a rekey costs more the
//!   more often the tunnel was rekeyed: these run last, and at N = 1,000 a printed
//!   line shows the cost along one tunnel's chain of 1,000 rekeys;
//! * `policy_install_remove/{pair,install,remove}`: `install_policy` of a PROTECT
//!   policy (`direction = "both"`, or `"outbound"` only for the `*_out` cases) before the
//!   final catch-all, and `remove_policy` of it;
//! * `policy_install_remove/install_parsed`: `install_parsed_policy` of the same policy
//!   parsed beforehand (`Policy::from_toml`, untimed: a key manager parses on its own
//!   thread), to show what the parse costs inside `install_policy`;
//! * `under_traffic/{install_policy,install_parsed_policy,replace_policy,remove_policy,
//!   add_sa,delete_sa,rekey_sa}`: the same calls, each after 256 packets through the
//!   gateway (64-byte inbound packets of random tunnels, sealed and decrypted untimed
//!   on the same thread), as on a gateway that carries traffic between two control
//!   calls: its caches hold packets, not the control path. This is the case the goal
//!   is about; the back-to-back figures above are the same calls with warm caches;
//! * `policy_replace`: `replace_policy` of a random tunnel's policy, narrowed to a /16
//!   remote and back again in turn. Policy calls compile nothing: each one joins the
//!   changes pending beside the compiled classifier (see "Live changes" in the
//!   `ipsec_core::spd` docs); when `Gateway::policy_rebuild_due` says so, the bench
//!   rebuilds as a gateway does: `edit_policies` and `commit_policies` on the timed
//!   thread, `compile` and the drop of the retired policies on another thread (all
//!   untimed here). A printed line gives the median of the first replace after such a
//!   rebuild and of the others, and one the cost of the rebuild's steps and of the
//!   on-the-spot one a gateway that never rebuilds pays every 128 changes;
//! * `policy_rebuild/{edit,commit,first_install,first_remove,first_replace}`: the
//!   steps of that off-thread rebuild that the gateway's own thread runs, each timed
//!   alone in a cycle of its own (32 `replace_policy` calls pending, `edit_policies`,
//!   `compile` on another thread, `commit_policies`, the retired policies dropped on
//!   another thread, then one policy call): the goal is that none of them costs the
//!   gateway's thread more than a policy call does, at any size;
//!   `policy_rebuild/first_after_rebuild_policies`: the first `replace_policy` after an
//!   on-the-spot `Gateway::rebuild_policies` (untimed);
//!   `policy_rebuild/install_after_uncommitted_compile`: the control, an
//!   `install_policy` right after the same off-thread compile when nothing is
//!   committed (what a call costs after another thread churned memory while this one
//!   waited, whatever the SPD); `policy_rebuild/install_after_idle`: the second
//!   control, the same install after this thread slept 250 ms with no other thread
//!   working (the rebuild then runs untimed, its old SPD dropped on another thread);
//!   `policy_rebuild/first_install_under_traffic`: `first_install` with 256 inbound
//!   packets through the gateway between the commit and the install (untimed), as on a
//!   gateway that carries traffic. `first_install_parsed`, `install_after_idle_parsed`
//!   and `first_install_under_traffic_parsed`: the same with `install_parsed_policy` of
//!   the policy parsed (untimed) before the cycle.
//!
//! Before timing, it prints (not criterion) the cost of one packet right after a change,
//! against the same packet with no change before it, medians of many repetitions:
//! a 64-byte inbound packet of an installed tunnel right after `add_sa` + `delete_sa` of
//! another SA, the first packet of the successor installed by `rekey_sa` (inbound), and
//! the first inbound and outbound packets after `install_policy` (the policy is pending
//! beside the compiled classifier: a lookup that reaches it checks it).
//!
//! Times are **thread CPU time** (`CLOCK_THREAD_CPUTIME_ID`, a criterion measurement of
//! its own), not wall clock: on a shared machine a call of milliseconds is often
//! preempted, and its wall time says more about the neighbours than about the call.
//! The after-change packet figures are wall-clock medians (a packet is too short for the
//! CPU clock, whose own cost is a system call, and a median ignores the preempted ones).
//!
//! Run: `cargo bench -p ipsec-benches --bench control` (a few minutes, mostly building
//! the gateways). Under `cargo test --benches` only N = 1,000 runs.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use ipsec_core::gateway::{Inbound, Outbound};
use ipsec_core::{Cipher, Direction, Gateway, Mode, PacketBuf, SaConfig, SecurityAssociation, Spd};

mod common;

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
/// Buffer per packet; an outbound inner packet starts at [`AT`].
const SLOT: usize = 256;
const AT: usize = 64;
/// Inner packet size.
const INNER: usize = 64;

/// All sizes under `cargo bench`; under `cargo test --benches` only the smallest.
fn sizes() -> &'static [usize] {
    if std::env::args().any(|a| a == "--bench") {
        &SIZES
    } else {
        &SIZES[..1]
    }
}

/// Repetitions of the printed after-change measurements (fewer under `cargo test`).
fn reps(policy: bool) -> usize {
    match (std::env::args().any(|a| a == "--bench"), policy) {
        (true, false) => 2001,
        (true, true) => 9,
        (false, _) => 4,
    }
}

/// Criterion's measurement by the thread CPU clock ([`cpu_now`]).
struct ThreadCpu;

static WALL: WallTime = WallTime;

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        common::cpu_now()
    }
    fn end(&self, start: Duration) -> Duration {
        common::cpu_now() - start
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

/// Times `f` on the thread CPU clock.
fn cpu<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = common::cpu_now();
    let r = f();
    (r, common::cpu_now() - start)
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn key(&mut self) -> [u8; 20] {
        let mut k = [0u8; 20];
        for chunk in k.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes()[..chunk.len()]);
        }
        k
    }
}

/// One tunnel: its inbound and outbound SA (AES-128-GCM key and salt, 20 bytes each).
struct Tunnel {
    in_spi: u32,
    in_key: [u8; 20],
    out_spi: u32,
    out_key: [u8; 20],
}

/// Inbound SPIs handed out so far (the tunnels' and the benches' own), kept distinct.
struct Spis(HashSet<u32>);
impl Spis {
    fn fresh(&mut self, rng: &mut Rng) -> u32 {
        loop {
            let s = rng.next() as u32;
            if s >= 256 && self.0.insert(s) {
                return s;
            }
        }
    }
}

fn tunnels(n: usize, rng: &mut Rng, spis: &mut Spis) -> Vec<Tunnel> {
    (0..n)
        .map(|_| Tunnel {
            in_spi: spis.fresh(rng),
            in_key: rng.key(),
            out_spi: (rng.next() as u32).max(256),
            out_key: rng.key(),
        })
        .collect()
}

/// The local host of tunnel `i`.
fn local(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 | i as u32)
}

/// The remote host every inner packet comes from or goes to.
const REMOTE: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);

fn hex(key: &[u8]) -> String {
    key.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `scale.rs`'s policy file: per tunnel an inbound SA `i{i}`, an outbound SA `o{i}` and
/// a policy `p{i}`, then a catch-all discard.
fn policy_file(tunnels: &[Tunnel]) -> String {
    let mut t = String::with_capacity(tunnels.len() * 600);
    for (i, tun) in tunnels.iter().enumerate() {
        let _ = write!(
            t,
            "[[sa]]\nname = \"i{i}\"\nspi = 0x{:x}\ndirection = \"inbound\"\nmode = \"tunnel\"\n\
             cipher = \"aes-128-gcm\"\nkey = \"{}\"\n\
             [[sa]]\nname = \"o{i}\"\nspi = 0x{:x}\ndirection = \"outbound\"\n\
             mode = \"tunnel\"\ncipher = \"aes-128-gcm\"\nkey = \"{}\"\n\
             tunnel_src = \"192.0.2.1\"\ntunnel_dst = \"198.18.{}.{}\"\n",
            tun.in_spi,
            hex(&tun.in_key),
            tun.out_spi,
            hex(&tun.out_key),
            (i >> 8) & 255,
            i & 255
        );
        let _ = write!(t, "{}", policy_text(i, "both", "172.16.0.0/12", i));
    }
    t.push_str("[[policy]]\nname = \"catch-all\"\ndirection = \"both\"\naction = \"discard\"\n");
    t
}

/// The policy of tunnel `i` (named `p{i}`, local host `local(i)`), through the SAs of
/// tunnel `sas`.
fn policy_text(i: usize, direction: &str, remote: &str, sas: usize) -> String {
    let sa = match direction {
        "both" => format!("[\"o{sas}\", \"i{sas}\"]"),
        "outbound" => format!("\"o{sas}\""),
        _ => format!("\"i{sas}\""),
    };
    format!(
        "[[policy]]\nname = \"p{i}\"\ndirection = \"{direction}\"\nlocal = \"{}\"\n\
         remote = \"{remote}\"\naction = \"protect\"\nsa = {sa}\n",
        local(i)
    )
}

fn inbound_config(spi: u32, key: &[u8]) -> SaConfig {
    SaConfig::new(
        spi,
        Direction::Inbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        key,
    )
}

fn outbound_config(spi: u32, key: &[u8]) -> SaConfig {
    let mut cfg = SaConfig::new(
        spi,
        Direction::Outbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        key,
    );
    cfg.tunnel(
        "192.0.2.1".parse().expect("address"),
        "198.18.0.1".parse().expect("address"),
    );
    cfg
}

/// The peer's side of an inbound SA (same SPI and key), to make packets it accepts.
fn twin(spi: u32, key: &[u8]) -> SecurityAssociation {
    let mut cfg = SaConfig::new(
        spi,
        Direction::Outbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        key,
    );
    cfg.tunnel(
        "198.51.100.1".parse().expect("address"),
        "192.0.2.1".parse().expect("address"),
    );
    SecurityAssociation::new(cfg, Duration::ZERO).expect("valid SA")
}

/// A 64-byte IPv4/UDP packet from `src` to `dst`.
fn inner(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = common::inner_packet(INNER);
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[10..12].fill(0);
    ipsec_core::packet::set_ipv4_checksum(&mut p[..20]);
    p
}

/// A fresh ESP packet of tunnel `i` sealed by `twin` into `slot`; returns its length.
fn seal_into(twin: &mut SecurityAssociation, i: usize, slot: &mut [u8; SLOT]) -> usize {
    let plain = inner(REMOTE, local(i));
    let mut scratch = [0u8; SLOT];
    scratch[AT..AT + plain.len()].copy_from_slice(&plain);
    let mut pkt = PacketBuf::new(&mut scratch, AT, plain.len()).expect("in bounds");
    twin.encrypt(&mut pkt, Duration::ZERO).expect("encrypts");
    let len = pkt.len();
    slot[..len].copy_from_slice(pkt.data());
    len
}

/// Times one inbound packet (it must decrypt).
fn time_inbound(gw: &mut Gateway, slot: &mut [u8; SLOT], len: usize) -> Duration {
    let mut pkt = PacketBuf::new(slot, 0, len).expect("in bounds");
    let start = Instant::now();
    let r = gw.inbound(&mut pkt, Duration::ZERO);
    let t = start.elapsed();
    assert!(matches!(r, Ok(Inbound::Decrypted { .. })), "{r:?}");
    t
}

/// Times one outbound 64-byte packet of tunnel `i` (it must be protected).
fn time_outbound(gw: &mut Gateway, i: usize, slot: &mut [u8; SLOT]) -> Duration {
    slot[AT..AT + INNER].copy_from_slice(&inner(local(i), REMOTE));
    let mut pkt = PacketBuf::new(slot, AT, INNER).expect("in bounds");
    let start = Instant::now();
    let r = gw.outbound(&mut pkt, Duration::ZERO);
    let t = start.elapsed();
    assert!(matches!(r, Ok(Outbound::Protected { .. })), "{r:?}");
    t
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort_unstable();
    v[v.len() / 2].as_nanos() as f64
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// Everything one size's benches need.
struct Setup {
    n: usize,
    gw: Gateway,
    tuns: Vec<Tunnel>,
    rng: Rng,
    spis: Spis,
    /// Each inbound tunnel's peer side, made on first use.
    twins: Vec<Option<SecurityAssociation>>,
    /// The current name of each tunnel's inbound and outbound SA (rekeys rename them).
    in_name: Vec<String>,
    out_name: Vec<String>,
    /// Successors installed so far (names stay unique).
    generation: usize,
    /// Whether tunnel `i`'s policy is narrowed now ([`Setup::replace_random`]).
    narrowed: Vec<bool>,
}

impl Setup {
    fn new(n: usize, seed: u64) -> Setup {
        let mut rng = Rng(seed);
        let mut spis = Spis(HashSet::with_capacity(n + 1024));
        let tuns = tunnels(n, &mut rng, &mut spis);
        let started = Instant::now();
        let gw = Gateway::new(
            Spd::from_toml(&policy_file(&tuns)).expect("valid policy file"),
            Duration::ZERO,
        )
        .expect("valid gateway");
        println!(
            "control N = {n}: gateway of {} SAs and {} policies built in {:.2} s",
            2 * n,
            n + 1,
            started.elapsed().as_secs_f64()
        );
        Setup {
            n,
            gw,
            twins: (0..n).map(|_| None).collect(),
            in_name: (0..n).map(|i| format!("i{i}")).collect(),
            out_name: (0..n).map(|i| format!("o{i}")).collect(),
            tuns,
            rng,
            spis,
            generation: 0,
            narrowed: vec![false; n],
        }
    }

    /// `replace_policy` of a random tunnel's policy, narrowed to a /16 remote or
    /// widened back in turn; returns its CPU time.
    fn replace_random(&mut self) -> Duration {
        let i = self.rng.below(self.n);
        self.narrowed[i] = !self.narrowed[i];
        let remote = if self.narrowed[i] {
            "172.16.0.0/16"
        } else {
            "172.16.0.0/12"
        };
        // The policy names the tunnel's SAs as first written (a rekeyed outbound SA
        // carries its old name).
        let text = policy_text(i, "both", remote, i);
        let (r, replaced) = cpu(|| self.gw.replace_policy(&text));
        r.expect("replaced");
        replaced
    }

    /// A fresh inbound packet of tunnel `i` in `slot`; returns its length.
    fn inbound_packet(&mut self, i: usize, slot: &mut [u8; SLOT]) -> usize {
        let t = &self.tuns[i];
        let twin = self.twins[i].get_or_insert_with(|| twin(t.in_spi, &t.in_key));
        seal_into(twin, i, slot)
    }

    /// Rekeys tunnel `i`'s outbound SA (untimed parts prepared here); returns the times
    /// of the rekey and of the old SA's deletion.
    fn rekey_outbound(&mut self, i: usize) -> (Duration, Duration) {
        self.generation += 1;
        let new = format!("o{i}.{}", self.generation);
        let cfg = outbound_config((self.rng.next() as u32).max(256), &self.rng.key());
        let old = std::mem::replace(&mut self.out_name[i], new);
        let (r, rekey) = cpu(|| {
            self.gw
                .rekey_sa(&old, &self.out_name[i], cfg, Duration::ZERO)
        });
        r.expect("rekeyed");
        let (r, delete) = cpu(|| self.gw.delete_sa(&old));
        r.expect("old SA deleted");
        (rekey, delete)
    }
}

/// Sends `count` fresh 64-byte inbound packets of random tunnels through the gateway
/// (each sealed by the tunnel's peer side first); none of it is timed.
fn traffic(s: &mut Setup, count: usize) {
    let mut slot = [0u8; SLOT];
    for _ in 0..count {
        let i = s.rng.below(s.n);
        let len = s.inbound_packet(i, &mut slot);
        time_inbound(&mut s.gw, &mut slot, len);
    }
}

/// One `under_traffic/*` iteration (see the module docs): traffic, then the timed call
/// `case`, with what sets it up and undoes it untimed (and a policy rebuild off the
/// thread when one is due, as a gateway does).
fn under_traffic(
    s: &mut Setup,
    case: &str,
    pool: &[(u32, [u8; 20])],
    next: &mut usize,
) -> Duration {
    const PACKETS: usize = 256;
    let n = s.n;
    if s.gw.policy_rebuild_due() {
        rebuild_off_thread(&mut s.gw);
    }
    let text = policy_text(n, "both", "172.16.0.0/12", 0);
    let extra = format!("p{n}");
    match case {
        "install_policy" | "install_parsed_policy" => {
            let parsed = ipsec_core::Policy::from_toml(&text).expect("a valid policy");
            traffic(s, PACKETS);
            let (r, t) = if case == "install_policy" {
                cpu(|| s.gw.install_policy(&text, Some("catch-all")))
            } else {
                cpu(|| s.gw.install_parsed_policy(parsed, Some("catch-all")))
            };
            r.expect("installed");
            s.gw.remove_policy(&extra).expect("removed");
            t
        }
        "remove_policy" => {
            s.gw.install_policy(&text, Some("catch-all"))
                .expect("installed");
            traffic(s, PACKETS);
            let (r, t) = cpu(|| s.gw.remove_policy(&extra));
            r.expect("removed");
            t
        }
        "replace_policy" => {
            traffic(s, PACKETS);
            s.replace_random()
        }
        "add_sa" | "delete_sa" => {
            let (spi, key) = pool[*next % pool.len()];
            *next += 1;
            let cfg = inbound_config(spi, &key);
            if case == "add_sa" {
                traffic(s, PACKETS);
            }
            let (r, added) = cpu(|| s.gw.add_sa("added", cfg, Duration::ZERO));
            r.expect("added");
            if case == "delete_sa" {
                traffic(s, PACKETS);
            }
            let (r, deleted) = cpu(|| s.gw.delete_sa("added"));
            r.expect("deleted");
            if case == "add_sa" { added } else { deleted }
        }
        _ => {
            // rekey_sa of a random tunnel's outbound SA (the old one deleted untimed),
            // never the last tunnel's (`rekey_chain` measures its chain of rekeys).
            let i = s.rng.below(n - 1);
            traffic(s, PACKETS);
            s.rekey_outbound(i).0
        }
    }
}

/// Rekeys one tunnel's outbound SA again and again (deleting the old one each time)
/// and prints what the rekey costs as the chain grows: the new SA takes over every name
/// its predecessors carried, so the list grows by one per rekey.
fn rekey_chain(s: &mut Setup) {
    let i = s.n - 1;
    let mut times = Vec::new();
    for _ in 0..reps(false) / 2 {
        times.push(s.rekey_outbound(i).0);
    }
    let at = |k: usize| {
        let k = k.min(times.len());
        median(times[k.saturating_sub(5)..k].to_vec())
    };
    println!(
        "  rekey chain (one tunnel, CPU ns per rekey_sa, median of 5): after 5 rekeys {:.0}, \
         50: {:.0}, 500: {:.0}, {}: {:.0}",
        at(5),
        at(50),
        at(500),
        times.len(),
        at(times.len())
    );
}

/// The CPU times of one off-thread rebuild, as a gateway does it.
struct Rebuild {
    /// `edit_policies`, on the gateway's thread.
    edit: Duration,
    /// `compile`, on another thread.
    compile: Duration,
    /// `commit_policies`, on the gateway's thread.
    commit: Duration,
    /// Dropping the retired policies, on another thread.
    drop: Duration,
}

/// Compiles the gateway's policies again off its thread: `edit_policies` here,
/// `compile` on another thread, `commit_policies` here, and the retired policies
/// dropped on another thread (joined before this returns, so that the next timed call
/// runs alone on a shared machine).
fn rebuild_off_thread(gw: &mut Gateway) -> Rebuild {
    let (edit, take) = cpu(|| gw.edit_policies());
    let (compiled, compile) = std::thread::scope(|t| {
        t.spawn(move || cpu(move || edit.compile()))
            .join()
            .expect("compiled")
    });
    let (r, commit) = cpu(|| gw.commit_policies(compiled));
    let retired = r.expect("committed");
    let ((), dropped) = std::thread::scope(|t| {
        t.spawn(move || cpu(move || drop(retired)))
            .join()
            .expect("dropped")
    });
    Rebuild {
        edit: take,
        compile,
        commit,
        drop: dropped,
    }
}

/// Prints what a rebuild of the policy classifier costs (thread CPU time): the batch
/// path's steps, and the on-the-spot rebuild.
fn rebuild_costs(s: &mut Setup) {
    let n = s.n;
    let text = policy_text(n, "both", "172.16.0.0/12", 0);
    s.gw.install_policy(&text, Some("catch-all"))
        .expect("installed");
    let r = rebuild_off_thread(&mut s.gw);
    s.gw.remove_policy(&format!("p{n}")).expect("removed");
    let ((), spot) = cpu(|| s.gw.rebuild_policies());
    println!(
        "  N = {n:>6}, rebuild of the policy classifier, CPU ms: edit_policies {:.3}, \
         compile (other thread) {:.1}, commit_policies {:.3}, drop of the retired \
         policies (other thread) {:.1}; rebuild_policies on the spot {:.1}",
        r.edit.as_secs_f64() * 1e3,
        r.compile.as_secs_f64() * 1e3,
        r.commit.as_secs_f64() * 1e3,
        r.drop.as_secs_f64() * 1e3,
        spot.as_secs_f64() * 1e3,
    );
}

/// The `policy_rebuild/*` cases (see the module docs): each iteration is one rebuild
/// cycle, and only `case`'s step of it is timed.
fn rebuild_cycle(s: &mut Setup, case: &str) -> Duration {
    let n = s.n;
    let extra = format!("p{n}");
    // `*_parsed`: the policy parsed beforehand (as a key manager would, on its own
    // thread) and installed by `install_parsed_policy`.
    let (case, parsed) = match case.strip_suffix("_parsed") {
        Some(c) => (c, true),
        None => (case, false),
    };
    let text = policy_text(n, "both", "172.16.0.0/12", 0);
    let policy = ipsec_core::Policy::from_toml(&text).expect("a valid policy");
    let install = |gw: &mut Gateway| {
        let (res, t) = if parsed {
            cpu(|| gw.install_parsed_policy(policy, Some("catch-all")))
        } else {
            cpu(|| gw.install_policy(&text, Some("catch-all")))
        };
        res.expect("installed");
        gw.remove_policy(&extra).expect("removed");
        t
    };
    if case == "first_remove" {
        // Compiled in by the rebuild, removed right after it.
        s.gw.install_policy(&text, Some("catch-all"))
            .expect("installed");
    }
    while !s.gw.policy_rebuild_due() {
        s.replace_random();
    }
    if case == "first_after_rebuild_policies" {
        s.gw.rebuild_policies();
        return s.replace_random();
    }
    if case == "install_after_uncommitted_compile" {
        // The control for the `first_*` cases: the same cycle without the commit (the
        // compiled policies and the edit dropped on the other thread), so that the
        // install is the first call after another thread compiled and freed an SPD
        // while this one waited, but on the SPD it had before.
        let edit = s.gw.edit_policies();
        std::thread::scope(|t| {
            t.spawn(move || drop(edit.compile()));
        });
        let t = install(&mut s.gw);
        s.gw.rebuild_policies();
        return t;
    }
    if case == "install_after_idle" {
        // The second control: no other thread at all, this one idle for about as long
        // as a compile of 100,000 policies takes, then the same install.
        std::thread::sleep(Duration::from_millis(250));
        let t = install(&mut s.gw);
        let edit = s.gw.edit_policies();
        let compiled = edit.compile();
        let retired = s.gw.commit_policies(compiled).expect("committed");
        std::thread::scope(|t| {
            t.spawn(move || drop(retired));
        });
        return t;
    }
    let r = rebuild_off_thread(&mut s.gw);
    match case {
        "edit" => r.edit,
        "commit" => r.commit,
        "first_install" => install(&mut s.gw),
        "first_install_under_traffic" => {
            // Traffic between the commit and the call, as on a live gateway: 256
            // fresh inbound packets of random tunnels (sealed and decrypted untimed).
            traffic(s, 256);
            install(&mut s.gw)
        }
        "first_remove" => {
            let (res, t) = cpu(|| s.gw.remove_policy(&extra));
            res.expect("removed");
            t
        }
        _ => s.replace_random(),
    }
}

/// The printed after-change packet costs (see the module docs).
fn after_change(s: &mut Setup) {
    let n = s.n;
    let mut slot = [0u8; SLOT];
    let mut pool: Vec<(u32, [u8; 20])> = Vec::new();
    for _ in 0..64 {
        let spi = s.spis.fresh(&mut s.rng);
        pool.push((spi, s.rng.key()));
    }
    let (mut steady, mut after_add) = (Vec::new(), Vec::new());
    for r in 0..reps(false) {
        let i = s.rng.below(n);
        let len = s.inbound_packet(i, &mut slot);
        if r % 2 == 0 {
            steady.push(time_inbound(&mut s.gw, &mut slot, len));
        } else {
            let (spi, key) = pool[r % pool.len()];
            s.gw.add_sa("extra", inbound_config(spi, &key), Duration::ZERO)
                .expect("added");
            s.gw.delete_sa("extra").expect("deleted");
            after_add.push(time_inbound(&mut s.gw, &mut slot, len));
        }
    }
    // Make-before-break inbound: the successor's first packet, against an old SA's.
    let (mut first_new, mut old_sa) = (Vec::new(), Vec::new());
    for _ in 0..reps(false) / 4 {
        let i = s.rng.below(n);
        let len = s.inbound_packet(i, &mut slot);
        old_sa.push(time_inbound(&mut s.gw, &mut slot, len));
        s.generation += 1;
        let (spi, key) = (s.spis.fresh(&mut s.rng), s.rng.key());
        let name = format!("i{i}.{}", s.generation);
        let old = std::mem::replace(&mut s.in_name[i], name.clone());
        s.gw.rekey_sa(&old, &name, inbound_config(spi, &key), Duration::ZERO)
            .expect("rekeyed");
        s.gw.delete_sa(&old).expect("deleted");
        s.tuns[i].in_spi = spi;
        s.tuns[i].in_key = key;
        s.twins[i] = Some(twin(spi, &key));
        let len = s.inbound_packet(i, &mut slot);
        first_new.push(time_inbound(&mut s.gw, &mut slot, len));
    }
    // After install_policy (the SPD recompiled): the next inbound and outbound packets.
    let (mut in_before, mut in_after, mut out_before, mut out_after) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut second = Vec::new();
    for _ in 0..reps(true) {
        let i = s.rng.below(n);
        let len = s.inbound_packet(i, &mut slot);
        in_before.push(time_inbound(&mut s.gw, &mut slot, len));
        out_before.push(time_outbound(&mut s.gw, i, &mut slot));
        let text = policy_text(n, "both", "172.16.0.0/12", 0);
        s.gw.install_policy(&text, Some("catch-all"))
            .expect("installed");
        let j = s.rng.below(n);
        let len = s.inbound_packet(j, &mut slot);
        in_after.push(time_inbound(&mut s.gw, &mut slot, len));
        out_after.push(time_outbound(&mut s.gw, j, &mut slot));
        let len = s.inbound_packet(j, &mut slot);
        second.push(time_inbound(&mut s.gw, &mut slot, len));
        s.gw.remove_policy(&format!("p{n}")).expect("removed");
    }
    println!(
        "  N = {n:>6}, one 64-byte packet, median ns: inbound {:.0} steady / {:.0} right \
         after add_sa + delete_sa of another SA; inbound rekey: an old SA's packet {:.0} / \
         the successor's first {:.0}; after install_policy: inbound {:.0} \
         before / {:.0} first after / {:.0} second; outbound {:.0} before / {:.0} first after",
        median(steady),
        median(after_add),
        median(old_sa),
        median(first_new),
        median(in_before),
        median(in_after),
        median(second),
        median(out_before),
        median(out_after),
    );
}

fn bench_control(c: &mut Criterion<ThreadCpu>) {
    println!("control, CPU {}", cpu_model());
    for (k, &n) in sizes().iter().enumerate() {
        let mut s = Setup::new(n, 0x5eed_0100 + k as u64);
        after_change(&mut s);

        let mut g = c.benchmark_group("control");
        g.sample_size(20);
        g.measurement_time(Duration::from_secs(3));
        g.warm_up_time(Duration::from_secs(1));

        // A pool of inbound SAs to add, each deleted before its next use.
        let pool: Vec<(u32, [u8; 20])> = (0..1024)
            .map(|_| (s.spis.fresh(&mut s.rng), s.rng.key()))
            .collect();
        let mut next = 0usize;
        for case in ["pair", "add", "delete"] {
            g.bench_function(BenchmarkId::new(format!("sa_add_delete/{case}"), n), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (spi, key) = pool[next % pool.len()];
                        next += 1;
                        let cfg = inbound_config(spi, &key);
                        let (r, added) = cpu(|| s.gw.add_sa("added", cfg, Duration::ZERO));
                        r.expect("added");
                        let (r, deleted) = cpu(|| s.gw.delete_sa("added"));
                        r.expect("deleted");
                        total += match case {
                            "pair" => added + deleted,
                            "add" => added,
                            _ => deleted,
                        };
                    }
                    total
                })
            });
        }
        // Policy calls recompile the SPD: few iterations per sample.
        g.sampling_mode(SamplingMode::Flat);
        g.sample_size(10);
        g.warm_up_time(Duration::from_millis(500));
        g.measurement_time(Duration::from_secs(if n >= 100_000 { 10 } else { 3 }));
        for (direction, suffix) in [("both", ""), ("outbound", "_out")] {
            let text = policy_text(n, direction, "172.16.0.0/12", 0);
            let name = format!("p{n}");
            let cases: &[&str] = if suffix.is_empty() {
                &["pair", "install", "remove", "install_parsed"]
            } else {
                &["pair", "install", "remove"]
            };
            for &case in cases {
                let id = BenchmarkId::new(format!("policy_install_remove/{case}{suffix}"), n);
                g.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let parsed = ipsec_core::Policy::from_toml(&text).expect("valid");
                            let (r, installed) = if case == "install_parsed" {
                                cpu(|| s.gw.install_parsed_policy(parsed, Some("catch-all")))
                            } else {
                                cpu(|| s.gw.install_policy(&text, Some("catch-all")))
                            };
                            r.expect("installed");
                            let (r, removed) = cpu(|| s.gw.remove_policy(&name));
                            r.expect("removed");
                            total += match case {
                                "pair" => installed + removed,
                                "install" | "install_parsed" => installed,
                                _ => removed,
                            };
                        }
                        total
                    })
                });
            }
        }
        for case in [
            "install_policy",
            "install_parsed_policy",
            "replace_policy",
            "remove_policy",
            "add_sa",
            "delete_sa",
            "rekey_sa",
        ] {
            g.bench_function(BenchmarkId::new(format!("under_traffic/{case}"), n), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| under_traffic(&mut s, case, &pool, &mut next))
                        .sum()
                })
            });
        }
        let mut rebuilds = 0usize;
        let mut each: Vec<(Duration, usize)> = Vec::new();
        g.bench_function(BenchmarkId::new("policy_replace", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let replaced = s.replace_random();
                    total += replaced;
                    each.push((replaced, s.gw.pending_policy_changes()));
                    if s.gw.policy_rebuild_due() {
                        // As a gateway does it (compile and drop on other threads);
                        // untimed here: the `policy_rebuild/*` cases time its steps.
                        rebuild_off_thread(&mut s.gw);
                        rebuilds += 1;
                    }
                }
                total
            })
        });
        println!("  policy_replace: {rebuilds} rebuilds (off the timed account) when due");
        {
            let med = |v: Vec<Duration>| if v.is_empty() { 0.0 } else { median(v) };
            let mut first = Vec::new();
            let mut later = Vec::new();
            for &(t, pending) in &each {
                if pending <= 2 {
                    first.push(t)
                } else {
                    later.push(t)
                }
            }
            println!(
                "  policy_replace: CPU ns, median {:.0}; the first replace after a rebuild: median {:.0} \
                 (n = {}), the others: median {:.0}, max {:.0} (n = {})",
                med(each.iter().map(|e| e.0).collect()),
                med(first.clone()),
                first.len(),
                med(later.clone()),
                later.iter().max().map_or(0.0, |d| d.as_nanos() as f64),
                later.len(),
            );
        }
        // One rebuild cycle per iteration (a compile of the whole SPD on another
        // thread): few of them.
        g.measurement_time(Duration::from_secs(if n >= 100_000 { 8 } else { 3 }));
        for case in [
            "edit",
            "commit",
            "first_install",
            "first_install_parsed",
            "first_remove",
            "first_replace",
            "first_after_rebuild_policies",
            "install_after_uncommitted_compile",
            "install_after_idle",
            "install_after_idle_parsed",
            "first_install_under_traffic",
            "first_install_under_traffic_parsed",
        ] {
            g.bench_function(BenchmarkId::new(format!("policy_rebuild/{case}"), n), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| rebuild_cycle(&mut s, case)).sum())
            });
        }
        rebuild_costs(&mut s);
        if k == 0 {
            // Before the rekey benches: on a tunnel not rekeyed yet.
            rekey_chain(&mut s);
        }
        // Back to many iterations per sample.
        g.sampling_mode(SamplingMode::Auto);
        g.sample_size(20);
        g.warm_up_time(Duration::from_secs(1));
        g.measurement_time(Duration::from_secs(3));
        // Last, as it leaves names behind. Each iteration rekeys the next tunnel: the outbound SA's list of names it
        // carries grows by one per rekey (see the report), so spread them.
        let mut turn = 0usize;
        for case in ["pair", "rekey", "delete_old"] {
            g.bench_function(BenchmarkId::new(format!("sa_rekey_out/{case}"), n), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (rekey, delete) = s.rekey_outbound(turn % n);
                        turn += 1;
                        total += match case {
                            "pair" => rekey + delete,
                            "rekey" => rekey,
                            _ => delete,
                        };
                    }
                    total
                })
            });
        }
        println!(
            "  sa_rekey_out: {turn} rekeys over {n} tunnels (up to {} per tunnel)",
            turn.div_ceil(n)
        );

        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench_control
}
criterion_main!(benches);
