//! Body of the `reassembly` fuzz target: a [`Reassembler`] driven by a byte-coded
//! sequence of operations, checking its invariants after every one.
//!
//! # Input layout
//!
//! Byte 0 selects the limits (two bits each, low bits first): `max_datagrams` of
//! 1024 / 3 / 1 / 0, `max_fragments` of 64 / 4 / 1 / 0, `max_bytes` of 4 MiB / 70,000 /
//! 1,000 / 0, `lifetime` of 30 s / 1 s / 0 / 100 ms. Then operations, until the input
//! ends (a truncated operation reads zeros):
//!
//! | op byte % 6 | then                                     | does                          |
//! |-------------|------------------------------------------|-------------------------------|
//! | 0           | `len: u16`, `len` bytes                  | `insert` of those bytes       |
//! | 1           | `len: u16`, `len` bytes                  | the same, after fixing the IPv4 header checksum (so mutated headers get past it) |
//! | 2           | `dg: u8`, `offset8: u16`, `len: u16`, `flags: u8` | a fragment of synthetic datagram `dg` (below) |
//! | 3           | `ms: u16`                                | advances the clock            |
//! | 4           |                                          | `expire(now)`                 |
//! | 5           | `sel: u8`                                | `set_limits` (as byte 0)      |
//!
//! Synthetic datagrams: `dg & 3` is the identification, `dg & 4` selects IPv6 (with a
//! Hop-by-Hop header when `dg & 8`), protocol ESP; payload byte `i` is
//! `i * 13 + (dg & 7)`. A fragment carries `len % 9000` payload bytes from
//! `(offset8 & 0x1fff) * 8`; `flags` bit
//! 0 clears M (last fragment), bit 1 changes one payload byte, bit 2 hands it over with
//! `insert_in_place` in a buffer with `(flags >> 3) * 64` bytes of tailroom.
//!
//! # Invariants
//!
//! No panic; bytes held never above `max_bytes`, datagrams never above `max_datagrams`,
//! fragments never above `max_datagrams * max_fragments`; every refusal counted (the
//! drop counters grow); `packets` counts exactly the completed datagrams; a completed
//! datagram is a valid IP packet of exactly its length (IPv4: not a fragment, header
//! checksum correct; IPv6: no Fragment header in front of the upper layer); and when
//! only unaltered synthetic fragments were given, its payload is the synthetic
//! datagram's.

use core::time::Duration;
use ipsec_core::packet::{self, IpVersion};
use ipsec_core::{Error, PacketBuf, Reassembler, Reassembly, ReassemblyLimits};

/// The limits byte 0 (and op 5) select.
pub fn limits(sel: u8) -> ReassemblyLimits {
    let pick = |shift: u8| usize::from((sel >> shift) & 3);
    ReassemblyLimits::DEFAULT
        .with_max_datagrams([1024, 3, 1, 0][pick(0)])
        .with_max_fragments([64, 4, 1, 0][pick(2)])
        .with_max_bytes([4 << 20, 70_000, 1_000, 0][pick(4)])
        .with_lifetime(
            [
                Duration::from_secs(30),
                Duration::from_secs(1),
                Duration::ZERO,
                Duration::from_millis(100),
            ][pick(6)],
        )
}

/// Reads the input front to back; missing bytes read as zeros.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

/// Payload byte `i` of the synthetic datagrams with key bits `key` (`dg & 7`: the
/// identification and the IP version, what decides which datagram a fragment joins).
fn synthetic(key: u8, i: usize) -> u8 {
    (i as u8).wrapping_mul(13).wrapping_add(key)
}

/// A fragment of synthetic datagram `dg`.
pub fn synthetic_fragment(dg: u8, start: usize, len: usize, last: bool, alter: bool) -> Vec<u8> {
    let mut payload: Vec<u8> = (start..start + len).map(|i| synthetic(dg & 7, i)).collect();
    if alter && !payload.is_empty() {
        payload[len / 2] ^= 0x80;
    }
    let id = dg & 3;
    if dg & 4 == 0 {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        let total = (20 + len).min(0xffff) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[4..6].copy_from_slice(&u16::from(id).to_be_bytes());
        let frag = (start / 8) as u16 | if last { 0 } else { 0x2000 };
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[8] = 64;
        p[9] = packet::IPPROTO_ESP;
        p[12..16].copy_from_slice(&[192, 0, 2, 1]);
        p[16..20].copy_from_slice(&[198, 51, 100, 2]);
        packet::set_ipv4_checksum(&mut p[..20]);
        p.extend_from_slice(&payload);
        return p;
    }
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[7] = 64;
    p[8] = 0x20;
    p[24] = 0x20;
    p[39] = 2;
    if dg & 8 != 0 {
        p[6] = 0;
        p.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]);
    } else {
        p[6] = 44;
    }
    let off_m = ((start / 8) as u16) << 3 | u16::from(!last);
    p.extend_from_slice(&[packet::IPPROTO_ESP, 0]);
    p.extend_from_slice(&off_m.to_be_bytes());
    p.extend_from_slice(&u32::from(id).to_be_bytes());
    p.extend_from_slice(&payload);
    let plen = (p.len() - 40).min(0xffff) as u16;
    p[4..6].copy_from_slice(&plen.to_be_bytes());
    p
}

/// Checks a completed datagram; `pure`: only unaltered synthetic fragments were given.
fn check_complete(d: &[u8], pure: bool) {
    let ip = packet::parse_ip(d).expect("a completed datagram parses as IP");
    assert_eq!(ip.total_len, d.len(), "length field == datagram length");
    let payload_at = match ip.version {
        IpVersion::V4 => {
            assert!(!ip.is_fragment, "MF and offset cleared");
            assert!(
                packet::ipv4_checksum_ok(&d[..ip.header_len]),
                "header checksum"
            );
            ip.header_len
        }
        _ => {
            assert_eq!(
                packet::ipv6_fragment(d, d.len()),
                Ok(None),
                "no Fragment header left"
            );
            packet::ipv6_upper_layer(d, d.len())
                .expect("a walkable header chain")
                .0
        }
    };
    if pure {
        let keys = match ip.version {
            IpVersion::V4 => d[5] & 3..(d[5] & 3) + 1,
            _ => 4..8,
        };
        let payload = &d[payload_at..];
        assert!(
            keys.into_iter().any(|k| payload
                .iter()
                .enumerate()
                .all(|(i, &b)| synthetic(k, i) == b)),
            "the payload is not the synthetic datagram's"
        );
    }
}

/// Fuzz target `reassembly`.
pub fn reassembly(data: &[u8]) {
    let mut r = Reader(data);
    let mut lim = limits(r.u8());
    let mut re = Reassembler::new(lim);
    let mut now = Duration::from_secs(1);
    let mut completed = 0u64;
    let mut pure = true;
    let mut buf = vec![0u8; 16 + 65_535 + 4096];
    for _ in 0..4096 {
        if r.0.is_empty() {
            break;
        }
        let before = *re.stats();
        let op = r.u8() % 6;
        let result: Option<Result<Option<Vec<u8>>, Error>> = match op {
            0 | 1 => {
                pure = false;
                let len = usize::from(r.u16());
                let mut pkt = r.bytes(len).to_vec();
                if op == 1 && pkt.len() >= 20 && pkt[0] >> 4 == 4 {
                    let ihl = (usize::from(pkt[0] & 0x0f) * 4).clamp(20, pkt.len() & !3);
                    packet::set_ipv4_checksum(&mut pkt[..ihl]);
                }
                Some(
                    re.insert(&pkt, now)
                        .map(|a| complete_bytes(&a).map(<[u8]>::to_vec)),
                )
            }
            2 => {
                let dg = r.u8();
                let start = usize::from(r.u16() & 0x1fff) * 8;
                let len = usize::from(r.u16()) % 9000;
                let flags = r.u8();
                if flags & 2 != 0 {
                    pure = false;
                }
                let pkt = synthetic_fragment(dg, start, len, flags & 1 != 0, flags & 2 != 0);
                if flags & 4 != 0 {
                    let room = usize::from(flags >> 3) * 64;
                    let end = (16 + pkt.len() + room).min(buf.len());
                    buf[16..16 + pkt.len()].copy_from_slice(&pkt);
                    let mut p = PacketBuf::new(&mut buf[..end], 16, pkt.len()).expect("fits");
                    let res = re
                        .insert_in_place(&mut p, now)
                        .map(|a| complete_bytes(&a).map(<[u8]>::to_vec));
                    if !matches!(res, Ok(Some(_))) {
                        assert_eq!((p.offset(), p.len()), (16, pkt.len()), "untouched");
                    }
                    Some(res)
                } else {
                    Some(
                        re.insert(&pkt, now)
                            .map(|a| complete_bytes(&a).map(<[u8]>::to_vec)),
                    )
                }
            }
            3 => {
                now += Duration::from_millis(u64::from(r.u16()));
                None
            }
            4 => {
                let held = re.held_fragments();
                let n = re.expire(now);
                assert!(n <= held);
                assert_eq!(re.held_fragments(), held - n);
                None
            }
            _ => {
                lim = limits(r.u8());
                let held = re.held_fragments();
                let n = re.set_limits(lim);
                assert_eq!(re.held_fragments(), held - n);
                None
            }
        };
        let after = *re.stats();
        match result {
            Some(Ok(Some(d))) => {
                completed += 1;
                check_complete(&d, pure);
            }
            Some(Err(e)) => {
                assert!(
                    after.dropped(e.drop_reason()) > before.dropped(e.drop_reason()),
                    "{e:?} not counted"
                );
                assert!(!e.to_string().is_empty());
            }
            _ => {}
        }
        assert!(after.dropped_total() >= before.dropped_total());
        assert_eq!(after.packets, completed, "packets == datagrams completed");
        assert!(re.held_bytes() <= lim.max_bytes, "memory over the limit");
        assert!(re.datagrams() <= lim.max_datagrams);
        assert!(re.held_fragments() <= lim.max_datagrams * lim.max_fragments);
        assert_eq!(re.held_fragments() == 0, re.held_bytes() == 0);
    }
    // Everything left times out, and nothing is held afterwards.
    let left = re.held_fragments();
    assert_eq!(re.expire(Duration::MAX), left);
    assert_eq!((re.held_bytes(), re.datagrams()), (0, 0));
}

fn complete_bytes<'a>(a: &Reassembly<'a>) -> Option<&'a [u8]> {
    match *a {
        Reassembly::Complete(d) => Some(d),
        _ => None,
    }
}
