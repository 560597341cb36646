//! A small classic-pcap reader and writer (libpcap format, not pcapng).
//!
//! Both byte orders and both the microsecond (`0xa1b2c3d4`) and nanosecond
//! (`0xa1b23c4d`) magic numbers are read; files are written in little-endian with the
//! input's timestamp resolution. Written by hand rather than taken from a crate: the
//! format is 40 lines of code and this keeps the tool free of a parser dependency.

use std::time::Duration;

/// Ethernet (`LINKTYPE_ETHERNET`).
pub(crate) const LINKTYPE_ETHERNET: u32 = 1;
/// Raw IP (`LINKTYPE_RAW`).
pub(crate) const LINKTYPE_RAW: u32 = 101;
/// Raw IP as BSD's `DLT_RAW` numbers it in some files.
pub(crate) const LINKTYPE_RAW_BSD: u32 = 12;
/// Raw IPv4 (`LINKTYPE_IPV4`).
pub(crate) const LINKTYPE_IPV4: u32 = 228;
/// Raw IPv6 (`LINKTYPE_IPV6`).
pub(crate) const LINKTYPE_IPV6: u32 = 229;

const MAGIC_MICRO: u32 = 0xa1b2_c3d4;
const MAGIC_NANO: u32 = 0xa1b2_3c4d;
/// Larger records than this are refused as corrupt (pcap's own limit is 256 KiB).
const MAX_RECORD: usize = 1 << 20;

/// One captured packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    /// Capture time since the Unix epoch.
    pub(crate) ts: Duration,
    /// The captured bytes.
    pub(crate) data: Vec<u8>,
    /// The packet's length on the wire (≥ `data.len()` when truncated by the snaplen).
    pub(crate) orig_len: u32,
}

/// A whole pcap file in memory.
#[derive(Clone, Debug)]
pub(crate) struct Capture {
    /// The link type of every record.
    pub(crate) linktype: u32,
    /// Nanosecond timestamps (else microseconds).
    pub(crate) nanos: bool,
    /// The snapshot length of the header.
    pub(crate) snaplen: u32,
    /// The packets.
    pub(crate) records: Vec<Record>,
}

fn u32_at(b: &[u8], at: usize, le: bool) -> u32 {
    let a = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    if le {
        u32::from_le_bytes(a)
    } else {
        u32::from_be_bytes(a)
    }
}

/// Parses a classic pcap file.
pub(crate) fn parse(bytes: &[u8]) -> Result<Capture, String> {
    if bytes.len() < 24 {
        return Err(format!(
            "not a pcap file: {} bytes, shorter than the 24-byte file header",
            bytes.len()
        ));
    }
    let (le, nanos) = match (
        u32::from_le_bytes(bytes[..4].try_into().expect("4")),
        u32::from_be_bytes(bytes[..4].try_into().expect("4")),
    ) {
        (MAGIC_MICRO, _) => (true, false),
        (MAGIC_NANO, _) => (true, true),
        (_, MAGIC_MICRO) => (false, false),
        (_, MAGIC_NANO) => (false, true),
        _ if &bytes[..4] == b"\x0a\x0d\x0d\x0a" => {
            return Err("pcapng files are not supported; convert with `editcap -F pcap`".into());
        }
        _ => return Err(format!("not a pcap file: bad magic {:02x?}", &bytes[..4])),
    };
    let snaplen = u32_at(bytes, 16, le);
    let linktype = u32_at(bytes, 20, le) & 0x0fff_ffff;
    let mut records = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let index = records.len();
        if bytes.len() - at < 16 {
            return Err(format!(
                "packet {index}: record header truncated at byte offset {at}"
            ));
        }
        let sec = u32_at(bytes, at, le);
        let frac = u32_at(bytes, at + 4, le);
        let incl = u32_at(bytes, at + 8, le) as usize;
        let orig_len = u32_at(bytes, at + 12, le);
        at += 16;
        if incl > MAX_RECORD || bytes.len() - at < incl {
            return Err(format!(
                "packet {index}: record of {incl} bytes runs past the end of the file"
            ));
        }
        let sub_ns = if nanos {
            frac
        } else {
            frac.saturating_mul(1000)
        };
        let ts = Duration::from_secs(u64::from(sec)) + Duration::from_nanos(u64::from(sub_ns));
        records.push(Record {
            ts,
            data: bytes[at..at + incl].to_vec(),
            orig_len,
        });
        at += incl;
    }
    Ok(Capture {
        linktype,
        nanos,
        snaplen,
        records,
    })
}

/// Serializes a capture (little-endian).
pub(crate) fn write(cap: &Capture) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(24 + cap.records.iter().map(|r| 16 + r.data.len()).sum::<usize>());
    out.extend_from_slice(&(if cap.nanos { MAGIC_NANO } else { MAGIC_MICRO }).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&cap.snaplen.max(65535).to_le_bytes());
    out.extend_from_slice(&cap.linktype.to_le_bytes());
    for r in &cap.records {
        let sec = u32::try_from(r.ts.as_secs()).unwrap_or(u32::MAX);
        let frac = if cap.nanos {
            r.ts.subsec_nanos()
        } else {
            r.ts.subsec_micros()
        };
        let len = u32::try_from(r.data.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&sec.to_le_bytes());
        out.extend_from_slice(&frac.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&r.orig_len.max(len).to_le_bytes());
        out.extend_from_slice(&r.data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_big_endian() {
        let cap = Capture {
            linktype: LINKTYPE_RAW,
            nanos: true,
            snaplen: 65535,
            records: vec![Record {
                ts: Duration::new(1_700_000_000, 123_456_789),
                data: vec![0x45, 1, 2, 3],
                orig_len: 4,
            }],
        };
        let bytes = write(&cap);
        let back = parse(&bytes).unwrap();
        assert_eq!(back.records, cap.records);
        assert!(back.nanos);
        // The same file in big-endian, microseconds.
        let mut be = Vec::new();
        be.extend_from_slice(&MAGIC_MICRO.to_be_bytes());
        be.extend_from_slice(&2u16.to_be_bytes());
        be.extend_from_slice(&4u16.to_be_bytes());
        for v in [0u32, 0, 65535, 1, 5, 7, 2, 2] {
            be.extend_from_slice(&v.to_be_bytes());
        }
        be.extend_from_slice(&[0xaa, 0xbb]);
        let c = parse(&be).unwrap();
        assert_eq!(c.linktype, LINKTYPE_ETHERNET);
        assert_eq!(c.records[0].ts, Duration::new(5, 7_000));
        assert_eq!(c.records[0].data, vec![0xaa, 0xbb]);
        assert!(parse(&be[..30]).is_err());
        assert!(parse(b"garbage garbage garbage garbage").is_err());
    }
}
