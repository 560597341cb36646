//! `ipsec pcap encrypt` and `ipsec pcap decrypt`.
//!
//! `decrypt` puts ESP packets that were fragmented on the path back together first
//! (`ipsec_core::Reassembler`, on the capture's timestamps): a held fragment writes
//! nothing, the fragment that completes a datagram writes the decrypted datagram (with
//! its own link-layer header and timestamp), and the fragments of datagrams still
//! incomplete at the end of the capture are dropped as `fragment_timeout`.

use crate::netpkt::ip_offset;
use crate::pcap::{self, Capture, Record};
use crate::{CliError, Outcome};
use ipsec_core::error::{Error, Malformed};
use ipsec_core::packet::{self, IpVersion, NAT_T_PORT};
use ipsec_core::sa_file::parse_sa_file;
use ipsec_core::{
    Direction, DropReason, PacketBuf, Reassembler, Reassembly, SecurityAssociation, SpareBuffers,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Which way the packets go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Encrypt,
    Decrypt,
}

/// Options of `ipsec pcap encrypt|decrypt`.
#[derive(Debug)]
pub(crate) struct PcapArgs<'a> {
    pub(crate) op: Op,
    pub(crate) sa_file: &'a Path,
    pub(crate) input: &'a Path,
    pub(crate) output: &'a Path,
    pub(crate) name: Option<&'a str>,
    pub(crate) json: bool,
    pub(crate) strict: bool,
}

struct NamedSa {
    name: String,
    sa: SecurityAssociation,
}

/// Reads and parses the SA file; every problem is a configuration error (exit 2).
fn parse_sas(path: &Path) -> Result<Vec<ipsec_core::sa_file::NamedSa>, CliError> {
    // Wiped when dropped: the file holds the SA keys.
    let text = ipsec_core::secret::read_file(path)
        .map_err(|e| CliError::usage(format!("{}: cannot read: {e}", path.display())))?;
    let parsed =
        parse_sa_file(&text).map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
    if parsed.is_empty() {
        return Err(CliError::usage(format!(
            "{}: no [[sa]] tables in the file",
            path.display()
        )));
    }
    Ok(parsed)
}

/// Creates the SAs (key lengths and algorithm combinations are checked here).
fn create_sas(
    path: &Path,
    parsed: Vec<ipsec_core::sa_file::NamedSa>,
    now: Duration,
) -> Result<Vec<NamedSa>, CliError> {
    parsed
        .into_iter()
        .map(|n| {
            let sa = SecurityAssociation::new(n.config, now).map_err(|e| {
                CliError::usage(format!("{}: sa {:?}: {e}", path.display(), n.name))
            })?;
            Ok(NamedSa { name: n.name, sa })
        })
        .collect()
}

/// Finds the SPI of an ESP or UDP-encapsulated ESP packet. `nat_ports` are the UDP
/// ports that carry ESP (4500, and those the SAs of the file encapsulate with).
pub(crate) fn find_spi(ip: &[u8], nat_ports: &[u16]) -> Result<u32, Error> {
    let pos = packet::locate_esp(ip, Some(nat_ports)).map_err(Error::Malformed)?;
    match ip[pos.esp..pos.ip.total_len].get(..8) {
        Some(h) => Ok(u32::from_be_bytes([h[0], h[1], h[2], h[3]])),
        None => Err(Error::Malformed(Malformed::Truncated)),
    }
}

/// Runs one `pcap` subcommand.
pub(crate) fn run(args: &PcapArgs<'_>) -> Result<Outcome, CliError> {
    let parsed = parse_sas(args.sa_file)?;
    let bytes = std::fs::read(args.input)
        .map_err(|e| CliError::usage(format!("{}: cannot read: {e}", args.input.display())))?;
    let cap = pcap::parse(&bytes)
        .map_err(|e| CliError::usage(format!("{}: {e}", args.input.display())))?;
    if let Err(e) = ip_offset(cap.linktype, &[])
        && e.contains("not supported")
    {
        return Err(CliError::usage(format!(
            "{}: {e} (supported: 1 Ethernet, 101/12 raw IP, 228 IPv4, 229 IPv6)",
            args.input.display()
        )));
    }
    let start = cap.records.first().map_or(Duration::ZERO, |r| r.ts);
    let mut sas = create_sas(args.sa_file, parsed, start)?;
    let want = match args.op {
        Op::Encrypt => Direction::Outbound,
        Op::Decrypt => Direction::Inbound,
    };
    let sa_path = args.sa_file.display();
    let chosen: Vec<usize> = match args.name {
        Some(name) => {
            let i = sas
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| CliError::usage(format!("{sa_path}: no SA named {name:?}")))?;
            if sas[i].sa.direction() != want {
                return Err(CliError::usage(format!(
                    "{sa_path}: sa {name:?} is {}, {} needs an {} SA",
                    sas[i].sa.direction().name(),
                    if args.op == Op::Encrypt {
                        "encrypt"
                    } else {
                        "decrypt"
                    },
                    want.name()
                )));
            }
            vec![i]
        }
        None => {
            let all: Vec<usize> = (0..sas.len())
                .filter(|&i| sas[i].sa.direction() == want)
                .collect();
            if all.is_empty() {
                return Err(CliError::usage(format!(
                    "{sa_path}: no {} SA in the file",
                    want.name()
                )));
            }
            match args.op {
                Op::Encrypt => all[..1].to_vec(),
                Op::Decrypt => all,
            }
        }
    };
    // Inbound SAs by SPI; a duplicate SPI would make the choice ambiguous.
    let mut by_spi: BTreeMap<u32, usize> = BTreeMap::new();
    let mut nat_ports = vec![NAT_T_PORT];
    if args.op == Op::Decrypt {
        for &i in &chosen {
            if let Some(&j) = by_spi.get(&sas[i].sa.spi()) {
                return Err(CliError::usage(format!(
                    "{sa_path}: inbound SAs {:?} and {:?} share SPI {:#x}",
                    sas[j].name,
                    sas[i].name,
                    sas[i].sa.spi()
                )));
            }
            by_spi.insert(sas[i].sa.spi(), i);
            if let Some((s, d)) = sas[i].sa.udp_encap() {
                nat_ports.extend([s, d]);
            }
        }
    }

    // Raw IPv4/IPv6 link types name one family; the result may be the other (tunnel
    // mode may change the family), so those files are written as plain raw IP.
    let out_linktype = match cap.linktype {
        pcap::LINKTYPE_IPV4 | pcap::LINKTYPE_IPV6 => pcap::LINKTYPE_RAW,
        other => other,
    };
    let mut out = Capture {
        linktype: out_linktype,
        nanos: cap.nanos,
        snaplen: cap.snaplen,
        records: Vec::with_capacity(cap.records.len()),
    };
    let mut drops: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut fragmented = 0u64;
    let mut scratch = vec![0u8; 65536 + 512];
    let mut reassembler = Reassembler::default();
    for (index, rec) in cap.records.iter().enumerate() {
        let res = transform(
            args.op,
            &mut sas,
            &chosen,
            &by_spi,
            &nat_ports,
            cap.linktype,
            rec,
            &mut scratch,
            &mut reassembler,
        );
        let (ok, error, detail, sa_name, reassembly) = match res {
            Ok(Done::Packet(frames, sa_i, reassembled)) => {
                // More than one frame: the packet was fragmented to fit the path MTU.
                if frames.len() > 1 {
                    fragmented += 1;
                }
                for data in frames {
                    out.records.push(Record {
                        ts: rec.ts,
                        orig_len: u32::try_from(data.len()).unwrap_or(u32::MAX),
                        data,
                    });
                }
                let reassembly = reassembled.then_some("complete");
                (true, None, None, Some(sas[sa_i].name.as_str()), reassembly)
            }
            Ok(Done::Held) => {
                let detail = Some("fragment held for reassembly".to_owned());
                (true, None, detail, None, Some("held"))
            }
            Err((reason, detail, sa_i)) => {
                // Fragment drops are counted by the reassembler (an overlap drops the
                // fragments it held too): added from its counters below.
                if !reason.starts_with("fragment_") {
                    *drops.entry(reason).or_default() += 1;
                }
                (
                    false,
                    Some(reason),
                    Some(detail),
                    sa_i.map(|i| sas[i].name.as_str()),
                    None,
                )
            }
        };
        if args.json {
            let line = serde_json::json!({
                "index": index,
                "ok": ok,
                "error": error,
                "detail": detail,
                "sa": sa_name,
                "reassembly": reassembly,
            });
            println!("{line}");
        }
    }
    // What is still held at the end of the capture never completed.
    reassembler.expire(Duration::MAX);
    for (reason, n) in reassembler.stats().drops() {
        if n > 0 && reason.as_str().starts_with("fragment_") {
            *drops.entry(reason.as_str()).or_default() += n;
        }
    }
    let n_dropped: u64 = drops.values().sum();
    std::fs::write(args.output, pcap::write(&out))
        .map_err(|e| CliError::failure(format!("{}: cannot write: {e}", args.output.display())))?;

    let n_in = cap.records.len();
    let n_out = out.records.len();
    let mut summary = format!(
        "{} {}: {n_in} packets in, {n_out} {} out to {}, {} dropped",
        if args.op == Op::Encrypt {
            "encrypt"
        } else {
            "decrypt"
        },
        args.input.display(),
        if args.op == Op::Encrypt {
            "encrypted"
        } else {
            "decrypted"
        },
        args.output.display(),
        n_dropped
    );
    if fragmented > 0 {
        summary.push_str(&format!(
            "\n  packets fragmented to fit the path MTU: {fragmented}"
        ));
    }
    let datagrams = reassembler.stats().packets;
    if datagrams > 0 {
        summary.push_str(&format!(
            "\n  datagrams reassembled from fragments: {datagrams}"
        ));
    }
    for (reason, n) in &drops {
        summary.push_str(&format!("\n  dropped {reason:<18} {n}"));
    }
    if args.json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    if args.strict && n_dropped > 0 {
        return Ok(Outcome::Failed(format!(
            "--strict: {n_dropped} of {n_in} packets failed"
        )));
    }
    Ok(Outcome::Ok)
}

type Failure = (&'static str, String, Option<usize>);

/// What became of a record that was not dropped.
enum Done {
    /// The output frames (more than one when encrypting fragmented the packet to fit the
    /// path MTU), the SA, and whether the packet was reassembled from fragments.
    Packet(Vec<Vec<u8>>, usize, bool),
    /// A fragment, held until its datagram is complete.
    Held,
}

/// An IPv4 fragment, or an IPv6 packet with a Fragment header that is not an atomic
/// fragment: what `decrypt` reassembles before looking for ESP.
fn is_fragment(ip: &[u8]) -> bool {
    match packet::parse_ip(ip) {
        Ok(info) if info.version == IpVersion::V4 => info.is_fragment,
        Ok(info) => matches!(
            packet::ipv6_fragment(ip, info.total_len),
            Ok(Some(f)) if !f.is_atomic()
        ),
        Err(_) => false,
    }
}

#[allow(clippy::too_many_arguments)]
fn transform(
    op: Op,
    sas: &mut [NamedSa],
    chosen: &[usize],
    by_spi: &BTreeMap<u32, usize>,
    nat_ports: &[u16],
    linktype: u32,
    rec: &Record,
    scratch: &mut [u8],
    reassembler: &mut Reassembler,
) -> Result<Done, Failure> {
    let malformed = |d: String| (DropReason::Malformed.as_str(), d, None);
    let (ip_at, ethertype_at) = ip_offset(linktype, &rec.data).map_err(malformed)?;
    let ip = &rec.data[ip_at..];
    if ip.is_empty() {
        return Err(malformed("no IP packet in the frame".into()));
    }
    let datagram: Vec<u8>;
    let reassembled = op == Op::Decrypt && is_fragment(ip);
    let ip = if reassembled {
        match reassembler.insert(ip, rec.ts) {
            Ok(Reassembly::Complete(d)) => {
                datagram = d.to_vec();
                &datagram[..]
            }
            Ok(Reassembly::Held) => return Ok(Done::Held),
            Ok(_) => ip,
            Err(e) => return Err((e.drop_reason().as_str(), e.to_string(), None)),
        }
    } else {
        ip
    };
    let sa_i = match op {
        Op::Encrypt => chosen[0],
        Op::Decrypt => {
            let spi = find_spi(ip, nat_ports)
                .map_err(|e| (e.drop_reason().as_str(), e.to_string(), None))?;
            *by_spi.get(&spi).ok_or_else(|| {
                let e = Error::UnknownSpi { spi };
                (e.drop_reason().as_str(), e.to_string(), None)
            })?
        }
    };
    let sa = &mut sas[sa_i].sa;
    let head = 256;
    let need = head + ip.len() + sa.tailroom_for(ip.len()) + 64;
    if ip.len() > 65535 || need > scratch.len() {
        return Err(malformed("packet larger than 65,535 bytes".into()));
    }
    scratch[head..head + ip.len()].copy_from_slice(ip);
    let mut pkt = PacketBuf::new(&mut scratch[..need], head, ip.len())
        .map_err(|e| (e.drop_reason().as_str(), e.to_string(), Some(sa_i)))?;
    let fail = |e: Error| (e.drop_reason().as_str(), e.to_string(), Some(sa_i));
    // Encrypting may split a packet that does not fit the SA's path MTU: spare
    // buffers for the extra packets, only when needed.
    let spares_needed = match op {
        Op::Encrypt => sa.spares_needed(ip, rec.ts),
        Op::Decrypt => 0,
    };
    let mut spare_store = vec![vec![0u8; need]; spares_needed];
    let mut spares = spare_store
        .iter_mut()
        .map(|b| PacketBuf::new(b, head, 0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let mut pool = SpareBuffers::new(&mut spares);
    let res = match op {
        Op::Encrypt => sa
            .encrypt_fragmenting(&mut pkt, &mut pool, rec.ts)
            .map(|_| ()),
        Op::Decrypt => sa.decrypt(&mut pkt, rec.ts),
    };
    res.map_err(fail)?;
    let frames = std::iter::once(pkt.data())
        .chain(pool.filled().iter().map(PacketBuf::data))
        .map(|result| frame_of(&rec.data[..ip_at], ethertype_at, result))
        .collect();
    Ok(Done::Packet(frames, sa_i, reassembled))
}

/// A capture frame: the link-layer header `link` (its EtherType fixed for the IP
/// version when `ethertype_at` says where it is), then the IP packet `ip`.
fn frame_of(link: &[u8], ethertype_at: Option<usize>, ip: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(link.len() + ip.len());
    frame.extend_from_slice(link);
    if let Some(at) = ethertype_at {
        let ty: u16 = if ip.first().is_some_and(|b| b >> 4 == 6) {
            0x86dd
        } else {
            0x0800
        };
        frame[at..at + 2].copy_from_slice(&ty.to_be_bytes());
    }
    frame.extend_from_slice(ip);
    frame
}
