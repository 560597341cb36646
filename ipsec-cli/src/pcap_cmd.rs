//! `ipsec pcap encrypt` and `ipsec pcap decrypt`.
//!
//! # Sequence numbers of `encrypt`
//!
//! The outbound SA starts after the SA file's `seq` (the last sequence number used), on
//! every run. With AES-GCM, ChaCha20-Poly1305 and AES-GMAC the sequence number is the
//! nonce, so two captures encrypted with one SA file (or one capture twice) repeat
//! nonces under one key, which exposes the XOR of their plaintexts and the
//! authentication key. So every run whose AEAD SA starts from the file's `seq` says so
//! on stderr, and two ways continue instead:
//!
//! * `--save-seq` writes the last sequence number used back into the SA file (only that
//!   SA's `seq`; see `seq_file`), so the file stays the one record of the SA's state
//!   and the next run continues after it. The default choice for a series of captures.
//! * `--seq-from N` starts after `N` without touching the file (for SA files that are
//!   read-only, shared or under version control, and for scripts that keep the count
//!   themselves). `N` below the file's `seq` is refused: those numbers were used.
//!
//! The summary names the last sequence number used, so that a run can be continued by
//! hand.
//!
//! `decrypt` puts ESP packets that were fragmented on the path back together first
//! (`ipsec_core::Reassembler`, on the capture's timestamps): a held fragment writes
//! nothing, the fragment that completes a datagram writes the decrypted datagram (with
//! its own link-layer header and timestamp), and the fragments of datagrams still
//! incomplete at the end of the capture are dropped as `fragment_timeout`.

use crate::netpkt::{LinkError, ip_offset};
use crate::output::{NewFile, Stdout, eprint_line};
use crate::pcap::{self, Record};
use crate::text::{clip, read_text_file};
use crate::{CliError, Outcome};
use ipsec_core::error::{Error, Malformed};
use ipsec_core::packet::{self, IpVersion, NAT_T_PORT};
use ipsec_core::sa_file::parse_sa_file;
use ipsec_core::{
    Direction, DropReason, PacketBuf, Reassembler, Reassembly, SecurityAssociation, SpareBuffers,
};
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Write as _};
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
    /// Where `encrypt` starts counting (ignored by `decrypt`).
    pub(crate) seq: SeqStart,
}

/// `encrypt`'s `--seq-from` and `--save-seq` (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SeqStart {
    /// Continue after this sequence number instead of the file's `seq`.
    pub(crate) from: Option<u64>,
    /// Write the last sequence number used back into the SA file.
    pub(crate) save: bool,
}

struct NamedSa {
    name: String,
    sa: SecurityAssociation,
}

/// Reads and parses the SA file; every problem is a configuration error (exit 2).
fn parse_sas(path: &Path) -> Result<Vec<ipsec_core::sa_file::NamedSa>, CliError> {
    // Wiped when dropped: the file holds the SA keys.
    let text = read_text_file(path).map_err(CliError::usage)?;
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

/// Opens the input capture (exit 2 when it cannot be read or is not a capture of a
/// supported link type).
pub(crate) fn open_capture(
    path: &Path,
) -> Result<pcap::Reader<BufReader<std::fs::File>>, CliError> {
    let shown = path.display().to_string();
    let shown = clip(&shown);
    let file = std::fs::File::open(path)
        .map_err(|e| CliError::usage(format!("{shown}: cannot read: {e}")))?;
    let reader = pcap::Reader::new(BufReader::with_capacity(1 << 16, file))
        .map_err(|e| CliError::usage(format!("{shown}: {e}")))?;
    if let Err(e @ LinkError::Unsupported(_)) = ip_offset(reader.linktype, &[]) {
        return Err(CliError::usage(format!(
            "{shown}: {e} (supported: 1 Ethernet, 101/12 raw IP, 228 IPv4, 229 IPv6)"
        )));
    }
    Ok(reader)
}

/// Runs one `pcap` subcommand.
///
/// The capture is streamed: one record is read, transformed and written before the
/// next is read, so memory does not grow with the capture (the reassembler of
/// `decrypt` holds a bounded number of fragments). The output goes to a temporary file
/// renamed into place at the end ([`NewFile`]): a capture that turns out to be corrupt
/// half-way leaves no output. Standard output may go away (`| head`): the output file
/// is still written in full ([`Stdout`]).
pub(crate) fn run(args: &PcapArgs<'_>) -> Result<Outcome, CliError> {
    let parsed = parse_sas(args.sa_file)?;
    let input_shown = args.input.display().to_string();
    let input_shown = clip(&input_shown);
    let mut reader = open_capture(args.input)?;
    let bad_capture = |e: pcap::ReadError| CliError::usage(format!("{input_shown}: {e}"));
    // The first record, read ahead: its time is the SAs' creation time.
    let mut rec = Record::default();
    let mut have = reader.next_into(&mut rec).map_err(bad_capture)?;
    let start = if have { rec.ts } else { Duration::ZERO };
    let mut sas = create_sas(args.sa_file, parsed, start)?;
    let want = match args.op {
        Op::Encrypt => Direction::Outbound,
        Op::Decrypt => Direction::Inbound,
    };
    let sa_path = args.sa_file.display().to_string();
    let sa_path = clip(&sa_path);
    let chosen: Vec<usize> = match args.name {
        Some(name) => {
            let i = sas.iter().position(|s| s.name == name).ok_or_else(|| {
                CliError::usage(format!("{sa_path}: no SA named {:?}", clip(name)))
            })?;
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
    let seq_start = match args.op {
        Op::Encrypt => Some(start_seq(args, &mut sas[chosen[0]], start)?),
        Op::Decrypt => None,
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
    let linktype = reader.linktype;
    let out_linktype = match linktype {
        pcap::LINKTYPE_IPV4 | pcap::LINKTYPE_IPV6 => pcap::LINKTYPE_RAW,
        other => other,
    };
    let output_shown = args.output.display().to_string();
    let output_shown = clip(&output_shown);
    let cannot_write =
        |e: std::io::Error| CliError::failure(format!("{output_shown}: cannot write: {e}"));
    let (new_file, file) = NewFile::create(args.output).map_err(cannot_write)?;
    let mut out = pcap::Writer::new(
        BufWriter::with_capacity(1 << 16, file),
        out_linktype,
        reader.nanos,
        reader.snaplen,
    )
    .map_err(cannot_write)?;
    let mut stdout = Stdout::new();
    let mut drops: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut fragmented = 0u64;
    let mut scratch = vec![0u8; 65536 + 512];
    let mut reassembler = Reassembler::default();
    let (mut n_in, mut n_out) = (0usize, 0usize);
    while have {
        let index = n_in;
        n_in += 1;
        let res = transform(
            args.op,
            &mut sas,
            &chosen,
            &by_spi,
            &nat_ports,
            linktype,
            &rec,
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
                    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                    out.write(rec.ts, &data, len).map_err(cannot_write)?;
                    n_out += 1;
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
            writeln!(stdout, "{line}").map_err(CliError::output)?;
        }
        have = reader.next_into(&mut rec).map_err(bad_capture)?;
    }
    // What is still held at the end of the capture never completed.
    reassembler.expire(Duration::MAX);
    for (reason, n) in reassembler.stats().drops() {
        if n > 0 && reason.as_str().starts_with("fragment_") {
            *drops.entry(reason.as_str()).or_default() += n;
        }
    }
    let n_dropped: u64 = drops.values().sum();
    out.finish()
        .and_then(|w| w.into_inner().map_err(std::io::IntoInnerError::into_error))
        .map_err(cannot_write)?;
    new_file.commit().map_err(cannot_write)?;

    let mut summary = format!(
        "{} {input_shown}: {n_in} packets in, {n_out} {} out to {output_shown}, {n_dropped} dropped",
        if args.op == Op::Encrypt {
            "encrypt"
        } else {
            "decrypt"
        },
        if args.op == Op::Encrypt {
            "encrypted"
        } else {
            "decrypted"
        },
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
    if let Some(first) = seq_start {
        summary.push_str(&finish_seq(args, &sas[chosen[0]], first)?);
    }
    if args.json {
        eprint_line(&summary);
    } else {
        writeln!(stdout, "{summary}").map_err(CliError::output)?;
    }
    stdout.flush().map_err(CliError::output)?;
    if args.strict && n_dropped > 0 {
        return Ok(Outcome::Failed(format!(
            "--strict: {n_dropped} of {n_in} packets failed"
        )));
    }
    Ok(Outcome::Ok)
}

/// Sets up where the encrypting SA `sa` starts (see the module docs): `--seq-from`
/// re-creates it from the SA file with that `seq`; starting from the file's `seq` with
/// an AEAD cipher warns on stderr. Returns (the sequence number it starts after, the
/// file's `seq`).
fn start_seq(args: &PcapArgs<'_>, sa: &mut NamedSa, now: Duration) -> Result<(u64, u64), CliError> {
    let path = args.sa_file.display();
    let file_seq = sa.sa.seq();
    if let Some(from) = args.seq.from {
        if from < file_seq {
            return Err(CliError::usage(format!(
                "{path}: --seq-from {from} is below sa {:?}'s seq = {file_seq}: the file says \
                 sequence numbers up to {file_seq} were used, and using them again repeats \
                 nonces",
                sa.name
            )));
        }
        let mut config = parse_sas(args.sa_file)?
            .into_iter()
            .find(|n| n.name == sa.name)
            .ok_or_else(|| CliError::usage(format!("{path}: sa {:?} disappeared", sa.name)))?
            .config;
        config.seq(from);
        sa.sa = SecurityAssociation::new(config, now).map_err(|e| {
            CliError::usage(format!("{path}: sa {:?}: --seq-from {from}: {e}", sa.name))
        })?;
        return Ok((from, file_seq));
    }
    if sa.sa.cipher().is_combined() {
        let cipher = sa.sa.cipher().name();
        let name = &sa.name;
        if args.seq.save {
            eprintln!(
                "ipsec: warning: sa {name:?} ({cipher}) starts after seq = {file_seq} from \
                 {path}; --save-seq records the last sequence number used in that file so that \
                 the next run continues after it (a copy of the old file would still repeat \
                 nonces)"
            );
        } else {
            eprintln!(
                "ipsec: warning: sa {name:?} ({cipher}) starts after seq = {file_seq} from \
                 {path}, as every run with this file does: its sequence numbers are its \
                 nonces, so encrypting another capture (or this one again) with this SA file \
                 repeats them under the same key, which exposes the XOR of the plaintexts; \
                 continue with --seq-from LAST (the summary names it) or let --save-seq \
                 record it in the file"
            );
        }
    }
    Ok((file_seq, file_seq))
}

/// The summary lines about the encrypting SA's sequence numbers, after saving the last
/// one with `--save-seq` (`first`, `file_seq`: as [`start_seq`] returned them).
fn finish_seq(
    args: &PcapArgs<'_>,
    sa: &NamedSa,
    (first, file_seq): (u64, u64),
) -> Result<String, CliError> {
    let last = sa.sa.seq();
    let path = args.sa_file.display();
    let mut out = if last == first {
        format!(
            "\n  sa {:?}: no sequence number used (still after {first})",
            sa.name
        )
    } else {
        format!(
            "\n  sa {:?}: sequence numbers {}..={last} used; last sequence number used: \
             {last} (continue with --seq-from {last})",
            sa.name,
            first + 1
        )
    };
    if args.seq.save && last != first {
        crate::seq_file::save(args.sa_file, &sa.name, file_seq, last).map_err(|e| {
            CliError::failure(format!(
                "{path}: --save-seq: could not record seq = {last} for sa {:?}: {e}; the next \
                 run must use --seq-from {last} or a new SA",
                sa.name
            ))
        })?;
        out.push_str(&format!(
            "\n  sa {:?}: seq = {last} saved to {path}",
            sa.name
        ));
    }
    Ok(out)
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
    let (ip_at, ethertype_at) =
        ip_offset(linktype, &rec.data).map_err(|e| malformed(e.to_string()))?;
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
