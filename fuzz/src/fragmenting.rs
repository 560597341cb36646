//! Fuzz target `esp_fragmenting`: structured packets through an outbound SA with a path
//! MTU and a few spare buffers, then through the inbound SA.
//!
//! Whatever the packet, mode, suite, MTU and number of spares, the outcome is one of:
//! * success: every packet on the wire fits the path MTU, as many spares were used as
//!   reported, and the receiver gets the original back: each ESP packet decrypts (after
//!   a naive reassembly of outer fragments) and the inner fragments, reassembled naively,
//!   equal the original inner packet;
//! * `TooBig`: the packet may not be fragmented (DF set, or IPv6), its usable inner MTU
//!   is smaller than the packet, and the packet is unchanged;
//! * `NoSpareBuffers`: fewer spares than `spares_needed` said, packet unchanged;
//! * the refusals the plain encrypt also has (sequence overflow, transport-mode
//!   payloads the receiver would drop, IPv6 fragments in transport mode, IPv6 Routing
//!   headers that hide the final destination of a NAT-T checksum).
//!
//! Every failure is counted under its own reason.

use crate::{
    InnerPacket, RoundtripInput, SPI, SUITES, SaOpts, build_packet, make_sa, tunnel_addrs,
    with_valid_l4_checksum,
};
use arbitrary::Arbitrary;
use core::time::Duration;
use ipsec_core::packet::{self, IpVersion};
use ipsec_core::{Direction, Error, Malformed, Mode, PacketBuf, SpareBuffers};

/// One input of `esp_fragmenting`.
#[derive(Arbitrary, Debug)]
pub struct FragmentingInput {
    /// The SA and the packet (TFC padding and outer CE are not used here).
    pub base: RoundtripInput,
    /// Path MTU: mapped into 576..=1600 (1280..=1600 for an IPv6 outer path).
    pub path_mtu: u16,
    /// Clear DF on an IPv4 inner packet.
    pub clear_df: bool,
    /// Spare buffers given (modulo 8).
    pub spares: u8,
}

const T0: Duration = Duration::ZERO;
const HEAD: usize = 160;
const SPARE: usize = 2048;

/// The target body.
pub fn esp_fragmenting(input: &FragmentingInput) {
    let b = &input.base;
    let suite = &SUITES[usize::from(b.suite % 8)];
    let mode = if b.transport {
        Mode::Transport
    } else {
        Mode::Tunnel
    };
    let tunnel = mode == Mode::Tunnel;
    let outer_v6 = if tunnel { b.outer_v6 } else { b.inner.v6 };
    let min = if outer_v6 { 1280 } else { 576 };
    let mtu = min + usize::from(input.path_mtu) % (1601 - min);
    let seq = if b.esn {
        b.start_seq
    } else {
        b.start_seq & u64::from(u32::MAX)
    };
    let opts = SaOpts {
        spi: SPI,
        mode,
        esn: b.esn,
        seq,
        window: 64,
        tunnel: tunnel.then(|| tunnel_addrs(b.outer_v6)),
        nat_t: b.nat_t,
        tfc: None,
    };
    let mut out = make_sa(suite, Direction::Outbound, opts);
    out.set_path_mtu(Some(mtu as u16))
        .expect("the MTU is above the family's minimum");
    let mut inb = make_sa(suite, Direction::Inbound, opts);
    let original = with_df(build_packet(&b.inner), &b.inner, !input.clear_df);

    let mut buf = vec![0u8; HEAD + original.len() + 256];
    buf[HEAD..HEAD + original.len()].copy_from_slice(&original);
    let n_spares = usize::from(input.spares % 8);
    let mut stores = vec![vec![0u8; SPARE]; n_spares];
    let mut spares: Vec<PacketBuf<'_>> = stores
        .iter_mut()
        .map(|s| PacketBuf::new(s, HEAD, 0).expect("in bounds"))
        .collect();
    let mut pool = SpareBuffers::new(&mut spares);
    let needed = out.spares_needed(&original, T0);
    let mut pkt = PacketBuf::new(&mut buf, HEAD, original.len()).expect("in bounds");
    let before = out.stats();
    let res = out.encrypt_fragmenting(&mut pkt, &mut pool, T0);
    let after = out.stats();
    let used = pool.used();
    match res {
        Ok(k) => {
            assert_eq!(k, used);
            assert!(k <= needed, "used {k} spares, spares_needed said {needed}");
            let wire: Vec<Vec<u8>> = core::iter::once(pkt.data().to_vec())
                .chain(pool.filled().iter().map(|p| p.data().to_vec()))
                .collect();
            for w in &wire {
                assert!(w.len() <= mtu, "{} bytes on a {mtu}-byte path", w.len());
            }
            let back = receive(&mut inb, &wire, tunnel);
            // Transport mode in UDP: the receiver makes the inner checksum valid
            // (RFC 3948 §3.1.2); the builder leaves checksums 0 or wrong.
            let expected = if !tunnel && b.nat_t {
                with_valid_l4_checksum(&original)
            } else {
                original.clone()
            };
            assert_eq!(back, expected, "the receiver gets the original packet back");
        }
        Err(e) => {
            assert_eq!(pkt.offset(), HEAD, "{e:?}: the packet stays where it was");
            assert_eq!(pkt.data(), &original[..], "{e:?}: the packet is unchanged");
            assert_eq!(used, 0);
            assert_eq!(
                after.dropped(e.drop_reason()),
                before.dropped(e.drop_reason()) + 1
            );
            assert_eq!(after.packets, before.packets);
            match e {
                Error::TooBig { inner_mtu } => {
                    assert!(usize::from(inner_mtu) < original.len());
                    let v6 = b.inner.v6;
                    assert!(v6 || !input.clear_df, "DF clear IPv4 is fragmented");
                    if v6 && tunnel {
                        assert!(original.len() > 1280 && inner_mtu >= 1280);
                    }
                }
                Error::NoSpareBuffers {
                    needed: n,
                    available,
                } => {
                    assert_eq!(n, needed);
                    assert_eq!(available, n_spares);
                    assert!(n > n_spares);
                }
                Error::SequenceOverflow => {}
                Error::Malformed(Malformed::BadInnerPacket | Malformed::Fragment) => {
                    assert!(!tunnel);
                }
                // ESP in UDP over IPv6 needs the final destination for its checksum: a
                // Routing header it cannot read is refused (as the plain encrypt does).
                Error::Malformed(Malformed::BadExtensionHeader) => {
                    assert!(!tunnel && b.nat_t && b.inner.v6);
                }
                other => panic!("unexpected refusal: {other:?}"),
            }
        }
    }
}

/// The packet with DF set or cleared (IPv4; IPv6 has no DF).
fn with_df(mut p: Vec<u8>, inner: &InnerPacket, df: bool) -> Vec<u8> {
    if !inner.v6 {
        p[6] = if df { p[6] | 0x40 } else { p[6] & !0x40 };
        packet::set_ipv4_checksum(&mut p[..20]);
    }
    p
}

/// Decrypts what went on the wire and reassembles the inner fragments.
fn receive(inb: &mut ipsec_core::SecurityAssociation, wire: &[Vec<u8>], tunnel: bool) -> Vec<u8> {
    // More than one packet on the wire: fragments of the ESP packet (outer fragments),
    // or ESP packets each carrying an inner fragment. (A single packet may carry a
    // Fragment header of the sender's own in transport mode: it is not ours to join.)
    let outer_fragments = wire.len() > 1 && wire.iter().any(|w| is_fragment(w));
    let esp: Vec<Vec<u8>> = if outer_fragments {
        vec![reassemble(wire)]
    } else {
        wire.to_vec()
    };
    let mut inner = Vec::new();
    for e in &esp {
        let mut b = e.clone();
        let mut p = PacketBuf::new(&mut b, 0, e.len()).expect("in bounds");
        inb.decrypt(&mut p, T0)
            .unwrap_or_else(|err| panic!("decrypt of our own ESP packet: {err:?}"));
        inner.push(p.data().to_vec());
    }
    if inner.len() == 1 {
        inner.remove(0)
    } else {
        assert!(tunnel, "only tunnel mode pre-fragments");
        reassemble(&inner)
    }
}

fn is_fragment(p: &[u8]) -> bool {
    match packet::parse_ip(p).map(|i| i.version) {
        Ok(IpVersion::V4) => u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0,
        Ok(_) => contains_fragment_header(p),
        Err(_) => false,
    }
}

fn contains_fragment_header(p: &[u8]) -> bool {
    let mut nh = p[6];
    let mut off = 40;
    for _ in 0..16 {
        match nh {
            44 => return true,
            0 | 43 | 60 if off + 2 <= p.len() => {
                nh = p[off];
                off += (usize::from(p[off + 1]) + 1) * 8;
            }
            _ => return false,
        }
    }
    false
}

/// A naive reassembly of the fragments of one datagram (IPv4, or IPv6 whose Fragment
/// header follows the unfragmentable part).
fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut data = Vec::new();
    let v6 = frags[0][0] >> 4 == 6;
    let mut head = Vec::new();
    for f in frags {
        let (hdr_len, off, payload_at, nh) = if v6 {
            let (u, nh_at) = unfragmentable(f);
            let fo = usize::from(u16::from_be_bytes([f[u + 2], f[u + 3]]) & !7);
            (u, fo, u + 8, Some((nh_at, f[u])))
        } else {
            let hl = usize::from(f[0] & 15) * 4;
            let fo = usize::from(u16::from_be_bytes([f[6], f[7]]) & 0x1fff) * 8;
            (hl, fo, hl, None)
        };
        if off == 0 {
            head = f[..hdr_len].to_vec();
            if let Some((nh_at, first)) = nh {
                head[nh_at] = first;
            }
        }
        let chunk = &f[payload_at..];
        if data.len() < off + chunk.len() {
            data.resize(off + chunk.len(), 0);
        }
        data[off..off + chunk.len()].copy_from_slice(chunk);
    }
    if v6 {
        let plen = (head.len() - 40 + data.len()) as u16;
        head[4..6].copy_from_slice(&plen.to_be_bytes());
    } else {
        let total = (head.len() + data.len()) as u16;
        head[2..4].copy_from_slice(&total.to_be_bytes());
        head[6] &= 0x40;
        head[7] = 0;
        let hl = head.len();
        packet::set_ipv4_checksum(&mut head[..hl]);
    }
    head.extend(data);
    head
}

/// Length of an IPv6 fragment's unfragmentable part and where its next header 44 sits.
fn unfragmentable(p: &[u8]) -> (usize, usize) {
    let mut nh = p[6];
    let mut at = 6;
    let mut off = 40;
    while nh != 44 {
        at = off;
        nh = p[off];
        off += (usize::from(p[off + 1]) + 1) * 8;
    }
    (off, at)
}
