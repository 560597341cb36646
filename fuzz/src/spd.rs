//! Bodies of the SPD fuzz targets.
//!
//! * [`policy_parse`]: arbitrary text into [`Spd::from_toml`] and
//!   [`Spd::from_toml_all_errors`]: no panic, and both agree; a file that loads gives a
//!   [`Gateway`] (loading ran every check creating the SAs runs), and `lint_toml` has an
//!   `invalid` finding exactly when the loaders refuse the file; and secrets never in
//!   output: every [`KEY_MARKER`] of the text becomes a key generated from the input,
//!   and no 8 consecutive characters of it appear in any error, finding or `Debug`
//!   text of any loader (unless they also stand outside the file's secret values).
//! * [`spd_differential`]: structured random policies over a small address space (so
//!   that rules overlap often) and random flows and packets: the compiled classifier,
//!   the flow cache, the burst lookup and the naive first-match scan answer the same,
//!   always; so do the compiled non-first fragment query and its plain scan, and
//!   `lookup_packet` gives a packet's fragments the answers those queries give.

use arbitrary::Arbitrary;
use ipsec_core::spd::EngineKind;
use ipsec_core::{Action, Direction, Error, Flow, FragmentDecision, Gateway, Spd, SpdCache};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

const SAS: &str = include_str!("../../ipsec-core/tests/data/sa-pair.toml");

/// What [`policy_parse`] replaces with the generated key: `key = "$K"`, `key = $K`,
/// `integrity_key = "$K" garbage`, ... (the seeds of `corpus/policy_parse/secret-*`).
pub const KEY_MARKER: &str = "$K";

/// The key [`policy_parse`] puts in place of each [`KEY_MARKER`] of `data`: 40 lower-case
/// hex digits (an AES-128-GCM key and salt) drawn from a hash of the input, so that the
/// fuzzer cannot simply write the same digits elsewhere in the file.
pub fn generated_key(data: &[u8]) -> String {
    // FNV-1a, then SplitMix64 for the digits.
    let mut h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut key = String::with_capacity(40);
    while key.len() < 40 {
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let _ = write!(key, "{z:016x}");
    }
    key.truncate(40);
    key
}

/// Fuzz target `policy_parse`: any text is either a policy set or a list of errors,
/// and a generated key in it is never echoed ([`secrets_never_in_output`]).
pub fn policy_parse(data: &[u8]) {
    let key = generated_key(data);
    let text = String::from_utf8_lossy(data).replace(KEY_MARKER, &key);
    secrets_never_in_output(&text, &key);
    let one = Spd::from_toml(&text);
    let all = Spd::from_toml_all_errors(&text);
    match (&one, &all) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.policies(), b.policies());
            // A loaded SPD answers lookups; compiled == naive on a few flows.
            let addrs: [IpAddr; 4] = [
                "10.0.0.1".parse().expect("addr"),
                "192.0.2.1".parse().expect("addr"),
                "2001:db8::1".parse().expect("addr"),
                "0.0.0.0".parse().expect("addr"),
            ];
            for (i, &s) in addrs.iter().enumerate() {
                for &d in &addrs {
                    for proto in [6u8, 17, 1, 58, 50] {
                        let dir = if i % 2 == 0 {
                            Direction::Outbound
                        } else {
                            Direction::Inbound
                        };
                        let f = Flow::new(dir, s, d, proto).ports(500, 4500).icmp(8, 0);
                        assert_eq!(a.lookup(&f), a.lookup_linear(&f));
                    }
                }
            }
        }
        (Err(e), Err(list)) => {
            assert!(!list.is_empty());
            assert!(list.contains(e), "{e} not among {list:?}");
            for e in list {
                assert!(!e.to_string().is_empty());
            }
        }
        _ => panic!("from_toml and from_toml_all_errors disagree"),
    }
    // Lint reports every load error (bounded input: the shadow analysis is not cheap).
    if text.len() <= 2048 {
        let invalid = ipsec_core::spd::lint_toml(&text)
            .iter()
            .any(|f| f.code == "invalid");
        assert_eq!(invalid, one.is_err(), "lint and the loader disagree");
    }
    // Every SA the SPD accepted can be created: the gateway refuses nothing it loaded.
    if let Ok(spd) = one
        && let Err(e) = Gateway::new(spd, Duration::ZERO)
    {
        panic!("the SPD loaded but its gateway fails: {e}");
    }
}

/// The "secrets never in output" property: no 8 consecutive characters of `key` (any
/// letter case) appear in anything the loaders say about `text`: the errors of
/// `Spd::from_toml`, `from_toml_all_errors`, `Policy::from_toml`, `parse_sa_file`, SA
/// and gateway creation and `run_cases` (the text given as a cases file), every `lint_toml` and `Spd::lint`
/// finding, in `Display` and `Debug` form.
///
/// Only the key where it stands as a secret value is secret: the pieces of `key` that
/// also appear in the text outside its secret values ([`ipsec_core::secret::secret_spans`],
/// which masks from a secret field name to the end of its value), as in
/// `name = "$K"`, may be quoted and are not checked.
pub fn secrets_never_in_output(text: &str, key: &str) {
    let mut public = String::with_capacity(text.len());
    let mut at = 0;
    for span in ipsec_core::secret::secret_spans(text) {
        public.push_str(&text[at..span.start]);
        public.push('\n');
        at = span.end;
    }
    public.push_str(&text[at..]);
    let public = public.to_ascii_lowercase();
    let key = key.to_ascii_lowercase();
    let pieces: Vec<&str> = (0..=key.len().saturating_sub(8))
        .filter_map(|i| key.get(i..i + 8))
        .filter(|p| !public.contains(p))
        .collect();
    if pieces.is_empty() || !text.contains(key.as_str()) {
        return;
    }
    let mut said: Vec<(&str, String)> = Vec::new();
    match Spd::from_toml_all_errors(text) {
        Ok(spd) => {
            for f in spd.lint() {
                said.push(("Spd::lint", format!("{f} {f:?}")));
            }
            if let Err(e) = ipsec_core::Gateway::new(spd, core::time::Duration::ZERO) {
                said.push(("Gateway::new", format!("{e} {e:?}")));
            }
        }
        Err(errors) => {
            for e in errors {
                said.push(("Spd::from_toml_all_errors", format!("{e} {e:?}")));
            }
        }
    }
    if let Err(e) = Spd::from_toml(text) {
        said.push(("Spd::from_toml", format!("{e} {e:?}")));
    }
    match ipsec_core::Policy::from_toml(text) {
        Err(e) => said.push(("Policy::from_toml", format!("{e} {e:?}"))),
        Ok(p) => said.push(("Policy Debug", format!("{p:?}"))),
    }
    match ipsec_core::sa_file::parse_sa_file(text) {
        Err(e) => said.push(("parse_sa_file", format!("{e} {e:?}"))),
        Ok(sas) => {
            for s in sas {
                said.push(("NamedSa Debug", format!("{s:?}")));
                if let Err(e) =
                    ipsec_core::SecurityAssociation::new(s.config, core::time::Duration::ZERO)
                {
                    said.push(("SecurityAssociation::new", format!("{e} {e:?}")));
                }
            }
        }
    }
    for f in ipsec_core::spd::lint_toml(text) {
        said.push(("lint_toml", format!("{f} {f:?}")));
    }
    if let Ok(empty) = Spd::from_toml("")
        && let Err(e) = empty.run_cases(text)
    {
        said.push(("Spd::run_cases", format!("{e} {e:?}")));
    }
    for (what, out) in said {
        let low = out.to_ascii_lowercase();
        for piece in &pieces {
            assert!(
                !low.contains(piece),
                "{what} shows {piece:?}, a piece of the generated key:\n{out}\n--- text:\n{text}"
            );
        }
    }
}

/// An address element over 10.0.0.0-15 and 2001:db8::0-f.
#[derive(Arbitrary, Debug, Clone)]
pub enum FAddr {
    /// `any`.
    Any,
    /// One address.
    Single(u8, bool),
    /// A prefix: base, length 28..=32 (IPv6: 124..=128).
    Prefix(u8, u8, bool),
    /// A range `a-b` (ordered).
    Range(u8, u8, bool),
}

impl FAddr {
    fn text(&self) -> String {
        let a = |i: u8, six: bool| {
            let i = i % 16;
            if six {
                format!("2001:db8::{i:x}")
            } else {
                format!("10.0.0.{i}")
            }
        };
        match *self {
            FAddr::Any => "any".into(),
            FAddr::Single(i, six) => a(i, six),
            FAddr::Prefix(i, len, six) => {
                let len = 28 + len % 5;
                let block = 1u8 << (32 - len);
                let base = (i % 16) - (i % 16) % block;
                format!("{}/{}", a(base, six), if six { len + 96 } else { len })
            }
            FAddr::Range(x, y, six) => {
                let (x, y) = (x % 16, y % 16);
                format!("{}-{}", a(x.min(y), six), a(x.max(y), six))
            }
        }
    }
}

/// A port selector over 0..16.
#[derive(Arbitrary, Debug, Clone)]
pub enum FPort {
    /// Omitted.
    Omit,
    /// `"any"`.
    Any,
    /// One port.
    One(u8),
    /// `"a-b"`.
    Range(u8, u8),
}

/// One policy.
#[derive(Arbitrary, Debug, Clone)]
pub struct FPolicy {
    /// 0 outbound, 1 inbound, 2+ both.
    pub direction: u8,
    /// `local` (omitted if empty).
    pub local: Vec<FAddr>,
    /// `remote` (omitted if empty).
    pub remote: Vec<FAddr>,
    /// Index into any, tcp, udp, icmp, icmpv6, 50, sctp.
    pub protocol: u8,
    /// `local_port` (TCP/UDP/SCTP only).
    pub local_port: FPort,
    /// `remote_port` (TCP/UDP/SCTP only).
    pub remote_port: FPort,
    /// `icmp_type` and optional `icmp_code` (ICMP only).
    pub icmp: Option<(u8, Option<u8>)>,
    /// 0 protect, 1 bypass, 2+ discard.
    pub action: u8,
}

/// One flow over the same small space.
#[derive(Arbitrary, Debug, Clone)]
pub struct FFlow {
    outbound: bool,
    six: bool,
    src: u8,
    dst: u8,
    protocol: u8,
    ports: Option<(u8, u8)>,
    icmp: Option<(u8, u8)>,
}

/// Input of `spd_differential`.
#[derive(Arbitrary, Debug, Clone)]
pub struct SpdInput {
    /// The policies, in order.
    pub policies: Vec<FPolicy>,
    /// Flows to look up.
    pub flows: Vec<FFlow>,
    /// Raw packets: their selectors (if they parse) are looked up too.
    pub packets: Vec<Vec<u8>>,
}

const PROTOS: [&str; 7] = ["any", "tcp", "udp", "icmp", "icmpv6", "50", "sctp"];

fn port_text(p: &FPort) -> Option<String> {
    match *p {
        FPort::Omit => None,
        FPort::Any => Some("\"any\"".into()),
        FPort::One(x) => Some((x % 16).to_string()),
        FPort::Range(x, y) => {
            let (x, y) = (x % 16, y % 16);
            Some(format!("\"{}-{}\"", x.min(y), x.max(y)))
        }
    }
}

fn addr_list(v: &[FAddr]) -> String {
    let items: Vec<String> = v.iter().map(|a| format!("{:?}", a.text())).collect();
    if items.len() == 1 {
        items[0].clone()
    } else {
        format!("[{}]", items.join(", "))
    }
}

/// The policy file of `policies` (always valid).
pub fn to_toml(policies: &[FPolicy]) -> String {
    let mut s = String::from(SAS);
    for (i, p) in policies.iter().enumerate() {
        let dir = ["outbound", "inbound", "both"][usize::from(p.direction.min(2))];
        let _ = write!(s, "\n[[policy]]\nname = \"p{i}\"\ndirection = \"{dir}\"\n");
        if !p.local.is_empty() {
            let _ = writeln!(s, "local = {}", addr_list(&p.local[..p.local.len().min(4)]));
        }
        if !p.remote.is_empty() {
            let _ = writeln!(
                s,
                "remote = {}",
                addr_list(&p.remote[..p.remote.len().min(4)])
            );
        }
        let proto = PROTOS[usize::from(p.protocol) % PROTOS.len()];
        let _ = writeln!(s, "protocol = \"{proto}\"");
        if matches!(proto, "tcp" | "udp" | "sctp") {
            if let Some(v) = port_text(&p.local_port) {
                let _ = writeln!(s, "local_port = {v}");
            }
            if let Some(v) = port_text(&p.remote_port) {
                let _ = writeln!(s, "remote_port = {v}");
            }
        }
        if matches!(proto, "icmp" | "icmpv6")
            && let Some((t, c)) = p.icmp
        {
            let _ = writeln!(s, "icmp_type = {}", t % 8);
            if let Some(c) = c {
                let _ = writeln!(s, "icmp_code = {}", c % 4);
            }
        }
        let action = ["protect", "bypass", "discard"][usize::from(p.action.min(2))];
        let _ = writeln!(s, "action = \"{action}\"");
        if action == "protect" {
            s += match dir {
                "outbound" => "sa = \"o\"\n",
                "inbound" => "sa = \"i\"\n",
                _ => "sa = [\"o\", \"i\"]\n",
            };
        }
    }
    s
}

fn check(spd: &Spd, others: &[Spd], cache: &mut SpdCache<'_>, f: &Flow) {
    let naive = spd.lookup_linear(f);
    assert_eq!(spd.lookup(f), naive, "compiled != naive for {f:?}");
    for (i, o) in others.iter().enumerate() {
        assert_eq!(o.lookup(f), naive, "engine {i} != naive for {f:?}");
    }
    assert_eq!(cache.lookup(f), naive, "cache != naive for {f:?}");
    match naive.policy_index {
        Some(i) => assert!(spd.policies()[i].matches(f)),
        None => assert_eq!(naive.action, Action::Discard),
    }
    let frag = spd.lookup_non_first_fragment_linear(f);
    assert_eq!(
        spd.lookup_non_first_fragment(f),
        frag,
        "fragment query: compiled != naive for {f:?}"
    );
    for (i, o) in others.iter().enumerate() {
        assert_eq!(
            o.lookup_non_first_fragment(f),
            frag,
            "fragment query: engine {i} != naive for {f:?}"
        );
    }
    if let FragmentDecision::Decided(d) = frag {
        // Decided: whatever the ports, the whole packet gets the same answer.
        assert_eq!(
            naive, d,
            "decided fragment of {f:?} disagrees with the packet"
        );
    }
}

/// `lookup_packet` on a raw packet: whole packets and first fragments as `lookup`,
/// non-first fragments as the fragment query, and fragment drops only for fragments.
fn check_packet(spd: &Spd, dir: Direction, p: &[u8]) {
    let answer = spd.lookup_packet(dir, p);
    match Flow::from_packet_with_fragment(dir, p) {
        Err(m) => assert_eq!(answer, Err(Error::Malformed(m))),
        Ok((f, None)) => assert_eq!(answer, Ok(spd.lookup_linear(&f))),
        Ok((f, Some(frag))) => match frag.check_transport_header(f.protocol) {
            Err(e) => assert_eq!(answer, Err(Error::Fragment(e))),
            Ok(()) if frag.is_first() => assert_eq!(answer, Ok(spd.lookup_linear(&f))),
            Ok(()) => assert_eq!(
                answer,
                spd.lookup_non_first_fragment_linear(&f)
                    .into_result()
                    .map_err(Error::Fragment)
            ),
        },
    }
}

/// Fuzz target `spd_differential`.
pub fn spd_differential(input: &SpdInput) {
    let policies = &input.policies[..input.policies.len().min(64)];
    let text = to_toml(policies);
    let spd = Spd::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut cache = SpdCache::new(&spd, 8);
    // The alternative structures of the module docs must agree too, and the default
    // classifier with its lists in the filtered layout (which only large SPDs get).
    let others = [
        spd.recompiled(EngineKind::BitVector),
        spd.recompiled(EngineKind::Tree),
        spd.recompiled(EngineKind::PartitionedFiltered),
    ];
    let mut flows = Vec::new();
    for ff in input.flows.iter().take(256) {
        let addr = |i: u8| -> IpAddr {
            let i = i % 18; // 16 and 17 fall outside every prefix above
            if ff.six {
                format!("2001:db8::{i:x}").parse().expect("addr")
            } else {
                format!("10.0.0.{i}").parse().expect("addr")
            }
        };
        let dir = if ff.outbound {
            Direction::Outbound
        } else {
            Direction::Inbound
        };
        let proto = [6u8, 17, 1, 58, 50, 132, 0, 255][usize::from(ff.protocol % 8)];
        let mut f = Flow::new(dir, addr(ff.src), addr(ff.dst), proto);
        if let Some((a, b)) = ff.ports {
            f = f.ports(u16::from(a % 18), u16::from(b % 18));
        }
        if let Some((t, c)) = ff.icmp {
            f = f.icmp(t % 9, c % 5);
        }
        check(&spd, &others, &mut cache, &f);
        // The same flow twice: the cache answers from its slot.
        check(&spd, &others, &mut cache, &f);
        flows.push(f);
    }
    for p in input.packets.iter().take(16) {
        for dir in [Direction::Outbound, Direction::Inbound] {
            if let Ok(f) = Flow::from_packet(dir, p) {
                check(&spd, &others, &mut cache, &f);
                flows.push(f);
            }
            check_packet(&spd, dir, p);
        }
    }
    check_burst(&spd, &flows);
    for other in &others {
        check_burst(other, &flows);
    }
}

/// [`Spd::lookup_burst`] over `flows` (mixed directions and families, more than one
/// burst) and over each suffix of the first 40 (every burst length and alignment)
/// answers as the naive scan.
fn check_burst(spd: &Spd, flows: &[Flow]) {
    let mut out = vec![ipsec_core::Decision::NO_MATCH; flows.len()];
    spd.lookup_burst(flows, &mut out);
    for (f, d) in flows.iter().zip(&out) {
        assert_eq!(*d, spd.lookup_linear(f), "lookup_burst: flow {f:?}");
    }
    // The stages of the burst lookup (a classifier this small otherwise answers one
    // flow at a time).
    spd.lookup_burst_staged(flows, &mut out);
    for (f, d) in flows.iter().zip(&out) {
        assert_eq!(*d, spd.lookup_linear(f), "lookup_burst_staged: flow {f:?}");
    }
    for skip in 0..flows.len().min(40) {
        let part = &flows[skip..flows.len().min(skip + 40)];
        let out = &mut out[..part.len()];
        spd.lookup_burst_staged(part, out);
        for (f, d) in part.iter().zip(out.iter()) {
            assert_eq!(
                *d,
                spd.lookup_linear(f),
                "lookup_burst (from {skip}): flow {f:?}"
            );
        }
    }
}
