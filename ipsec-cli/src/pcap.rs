//! A small classic-pcap reader and writer (libpcap format, not pcapng), one record at a
//! time: a capture of any size is read and written in constant memory.
//!
//! Both byte orders and both the microsecond (`0xa1b2c3d4`) and nanosecond
//! (`0xa1b23c4d`) magic numbers are read; files are written in little-endian with the
//! input's timestamp resolution. Written by hand rather than taken from a crate: the
//! format is 40 lines of code and this keeps the tool free of a parser dependency.

use std::fmt;
use std::io::{self, Read, Write};
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
pub(crate) const MAX_RECORD: usize = 1 << 20;

/// One captured packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Record {
    /// Capture time since the Unix epoch.
    pub(crate) ts: Duration,
    /// The captured bytes.
    pub(crate) data: Vec<u8>,
    /// The packet's length on the wire (≥ `data.len()` when truncated by the snaplen).
    pub(crate) orig_len: u32,
}

/// Why a record could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The file is not a capture, or it breaks off or is corrupt at a record: what
    /// follows cannot be read.
    Format(String),
    /// The file could not be read.
    Io(io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Format(m) => f.write_str(m),
            ReadError::Io(e) => write!(f, "cannot read: {e}"),
        }
    }
}

/// Reads into `buf` until it is full or the input ends; the number of bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A pcap file read one record at a time.
pub(crate) struct Reader<R> {
    r: R,
    le: bool,
    /// Nanosecond timestamps (else microseconds).
    pub(crate) nanos: bool,
    /// The snapshot length of the header.
    pub(crate) snaplen: u32,
    /// The link type of every record.
    pub(crate) linktype: u32,
    /// Records read so far.
    index: usize,
    /// Bytes read so far.
    offset: u64,
}

impl<R: Read> Reader<R> {
    /// Reads the file header.
    pub(crate) fn new(mut r: R) -> Result<Reader<R>, ReadError> {
        let mut h = [0u8; 24];
        let n = read_full(&mut r, &mut h).map_err(ReadError::Io)?;
        if n < 24 {
            return Err(ReadError::Format(format!(
                "not a pcap file: {n} bytes, shorter than the 24-byte file header"
            )));
        }
        let magic = [h[0], h[1], h[2], h[3]];
        let (le, nanos) = match (u32::from_le_bytes(magic), u32::from_be_bytes(magic)) {
            (MAGIC_MICRO, _) => (true, false),
            (MAGIC_NANO, _) => (true, true),
            (_, MAGIC_MICRO) => (false, false),
            (_, MAGIC_NANO) => (false, true),
            _ if magic == *b"\x0a\x0d\x0d\x0a" => {
                return Err(ReadError::Format(
                    "pcapng files are not supported; convert with `editcap -F pcap`".into(),
                ));
            }
            _ => {
                return Err(ReadError::Format(format!(
                    "not a pcap file: bad magic {magic:02x?}"
                )));
            }
        };
        let u32_at = |at: usize| {
            let a = [h[at], h[at + 1], h[at + 2], h[at + 3]];
            if le {
                u32::from_le_bytes(a)
            } else {
                u32::from_be_bytes(a)
            }
        };
        Ok(Reader {
            snaplen: u32_at(16),
            linktype: u32_at(20) & 0x0fff_ffff,
            r,
            le,
            nanos,
            index: 0,
            offset: 24,
        })
    }

    /// Reads the next record into `rec` (reusing its buffer); `false` at the end of the
    /// file. After an error nothing more can be read.
    pub(crate) fn next_into(&mut self, rec: &mut Record) -> Result<bool, ReadError> {
        let index = self.index;
        let mut h = [0u8; 16];
        let n = read_full(&mut self.r, &mut h).map_err(ReadError::Io)?;
        if n == 0 {
            return Ok(false);
        }
        if n < 16 {
            return Err(ReadError::Format(format!(
                "packet {index}: record header truncated at byte offset {}",
                self.offset
            )));
        }
        let u32_at = |at: usize| {
            let a = [h[at], h[at + 1], h[at + 2], h[at + 3]];
            if self.le {
                u32::from_le_bytes(a)
            } else {
                u32::from_be_bytes(a)
            }
        };
        let (sec, frac, incl, orig_len) = (u32_at(0), u32_at(4), u32_at(8) as usize, u32_at(12));
        if incl > MAX_RECORD {
            return Err(ReadError::Format(format!(
                "packet {index}: record of {incl} bytes at byte offset {}: larger than the \
                 {} MiB limit (a corrupt file?)",
                self.offset,
                MAX_RECORD >> 20
            )));
        }
        rec.data.resize(incl, 0);
        let got = read_full(&mut self.r, &mut rec.data).map_err(ReadError::Io)?;
        if got < incl {
            return Err(ReadError::Format(format!(
                "packet {index}: record of {incl} bytes runs past the end of the file"
            )));
        }
        let sub_ns = if self.nanos {
            frac
        } else {
            frac.saturating_mul(1000)
        };
        rec.ts = Duration::from_secs(u64::from(sec)) + Duration::from_nanos(u64::from(sub_ns));
        rec.orig_len = orig_len;
        self.index += 1;
        self.offset += 16 + incl as u64;
        Ok(true)
    }
}

/// A pcap file written one record at a time (little-endian).
pub(crate) struct Writer<W: Write> {
    w: W,
    nanos: bool,
}

impl<W: Write> Writer<W> {
    /// Writes the file header.
    pub(crate) fn new(mut w: W, linktype: u32, nanos: bool, snaplen: u32) -> io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&(if nanos { MAGIC_NANO } else { MAGIC_MICRO }).to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&snaplen.max(65535).to_le_bytes());
        h.extend_from_slice(&linktype.to_le_bytes());
        w.write_all(&h)?;
        Ok(Writer { w, nanos })
    }

    /// Writes one record: `data` captured at `ts`, `orig_len` long on the wire (at
    /// least `data.len()`).
    pub(crate) fn write(&mut self, ts: Duration, data: &[u8], orig_len: u32) -> io::Result<()> {
        let sec = u32::try_from(ts.as_secs()).unwrap_or(u32::MAX);
        let frac = if self.nanos {
            ts.subsec_nanos()
        } else {
            ts.subsec_micros()
        };
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&sec.to_le_bytes());
        h[4..8].copy_from_slice(&frac.to_le_bytes());
        h[8..12].copy_from_slice(&len.to_le_bytes());
        h[12..].copy_from_slice(&orig_len.max(len).to_le_bytes());
        self.w.write_all(&h)?;
        self.w.write_all(data)
    }

    /// Flushes and gives the underlying writer back.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.w.flush()?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> Result<(Reader<&[u8]>, Vec<Record>), ReadError> {
        let mut r = Reader::new(bytes)?;
        let mut out = Vec::new();
        let mut rec = Record::default();
        while r.next_into(&mut rec)? {
            out.push(rec.clone());
        }
        Ok((r, out))
    }

    #[test]
    fn round_trip_and_big_endian() {
        let recs = vec![Record {
            ts: Duration::new(1_700_000_000, 123_456_789),
            data: vec![0x45, 1, 2, 3],
            orig_len: 4,
        }];
        let mut w = Writer::new(Vec::new(), LINKTYPE_RAW, true, 65535).unwrap();
        for r in &recs {
            w.write(r.ts, &r.data, r.orig_len).unwrap();
        }
        let bytes = w.finish().unwrap();
        let (back, got) = read_all(&bytes).unwrap();
        assert_eq!(got, recs);
        assert!(back.nanos);
        assert_eq!(back.linktype, LINKTYPE_RAW);
        // The same file in big-endian, microseconds.
        let mut be = Vec::new();
        be.extend_from_slice(&MAGIC_MICRO.to_be_bytes());
        be.extend_from_slice(&2u16.to_be_bytes());
        be.extend_from_slice(&4u16.to_be_bytes());
        for v in [0u32, 0, 65535, 1, 5, 7, 2, 2] {
            be.extend_from_slice(&v.to_be_bytes());
        }
        be.extend_from_slice(&[0xaa, 0xbb]);
        let (c, got) = read_all(&be).unwrap();
        assert_eq!(c.linktype, LINKTYPE_ETHERNET);
        assert_eq!(got[0].ts, Duration::new(5, 7_000));
        assert_eq!(got[0].data, vec![0xaa, 0xbb]);
        // Cut inside the record header, inside the record, or no pcap at all.
        for cut in [30, 41] {
            match read_all(&be[..cut]) {
                Err(ReadError::Format(m)) => assert!(m.starts_with("packet 0:"), "{m}"),
                other => panic!("{cut}: {:?}", other.map(|x| x.1)),
            }
        }
        assert!(read_all(b"garbage garbage garbage garbage").is_err());
        // A record larger than the limit is refused before anything is allocated.
        let mut big = be[..24].to_vec();
        for v in [0u32, 0, u32::MAX, u32::MAX] {
            big.extend_from_slice(&v.to_be_bytes());
        }
        assert!(matches!(read_all(&big), Err(ReadError::Format(_))));
    }
}
