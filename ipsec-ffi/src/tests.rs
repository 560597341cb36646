//! Unit tests of the entry points, called as C would call them (raw pointers). They also
//! run under Miri (`cargo +nightly miri test -p ipsec-ffi --no-default-features --lib`),
//! which checks the pointer handling of this crate for undefined behaviour.

use core::ffi::{CStr, c_char};
use core::ptr::{null, null_mut};

use ipsec_core::DropReason;

use crate::boundary::boundary;
use crate::*;

const KEY: [u8; 20] = [7; 20];
const T0: u64 = 1_000_000_000;

fn last_error() -> String {
    let mut buf = [0 as c_char; 512];
    let mut n = 0usize;
    // SAFETY: buf has 512 writable bytes; n is a valid usize.
    let st = unsafe { ipsec_last_error(buf.as_mut_ptr(), buf.len(), &mut n) };
    assert_eq!(st, ipsec_status::IPSEC_OK);
    // SAFETY: ipsec_last_error wrote a NUL-terminated string on success.
    let s = unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(s.len(), n);
    s
}

fn config(spi: u32, direction: ipsec_direction) -> ipsec_sa_config {
    let mut c = core::mem::MaybeUninit::<ipsec_sa_config>::uninit();
    // SAFETY: c is writable; init fills every field.
    let st = unsafe { ipsec_sa_config_init(c.as_mut_ptr()) };
    assert_eq!(st, ipsec_status::IPSEC_OK);
    // SAFETY: initialised by ipsec_sa_config_init.
    let mut c = unsafe { c.assume_init() };
    c.spi = spi;
    c.direction = direction as u32;
    c.mode = ipsec_mode::IPSEC_MODE_TUNNEL as u32;
    c.cipher = ipsec_cipher::IPSEC_CIPHER_AES_128_GCM as u32;
    c.key = KEY.as_ptr();
    c.key_len = KEY.len();
    if direction == ipsec_direction::IPSEC_DIRECTION_OUTBOUND {
        c.tunnel_src = c"192.0.2.1".as_ptr();
        c.tunnel_dst = c"192.0.2.2".as_ptr();
    }
    c
}

fn new_sa(c: &ipsec_sa_config) -> *mut ipsec_sa {
    let mut sa = null_mut();
    // SAFETY: c is initialised with valid pointers; sa is writable.
    let st = unsafe { ipsec_sa_new(c, T0, &mut sa) };
    assert_eq!(st, ipsec_status::IPSEC_OK);
    assert!(!sa.is_null());
    sa
}

/// A 60-byte IPv4/UDP packet at `buf[off..]`.
fn put_packet(buf: &mut [u8], off: usize) -> usize {
    let len = 60;
    let p = &mut buf[off..off + len];
    p.fill(0x5a);
    p[..28].copy_from_slice(&[
        0x45, 0, 0, 60, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 1, 0, 1, 0x13, 0x88, 0x13, 0x89,
        0, 40, 0, 0,
    ]);
    len
}

fn stats(sa: *const ipsec_sa) -> ipsec_sa_stats {
    let mut s = core::mem::MaybeUninit::uninit();
    // SAFETY: sa is live; s is writable.
    let st = unsafe { ipsec_sa_get_stats(sa, s.as_mut_ptr()) };
    assert_eq!(st, ipsec_status::IPSEC_OK);
    // SAFETY: written on success.
    unsafe { s.assume_init() }
}

#[test]
fn status_numbers_follow_the_drop_counters() {
    use core::mem::offset_of;
    let counter = |r: DropReason| match r {
        DropReason::AuthFailed => offset_of!(ipsec_sa_stats, auth_failed),
        DropReason::Replay => offset_of!(ipsec_sa_stats, replay),
        DropReason::TooOld => offset_of!(ipsec_sa_stats, too_old),
        DropReason::Malformed => offset_of!(ipsec_sa_stats, malformed),
        DropReason::BadPadding => offset_of!(ipsec_sa_stats, bad_padding),
        DropReason::BadNextHeader => offset_of!(ipsec_sa_stats, bad_next_header),
        DropReason::UnknownSpi => offset_of!(ipsec_sa_stats, unknown_spi),
        DropReason::PolicyMismatch => offset_of!(ipsec_sa_stats, policy_mismatch),
        DropReason::LifetimeExpired => offset_of!(ipsec_sa_stats, lifetime_expired),
        DropReason::SequenceOverflow => offset_of!(ipsec_sa_stats, sequence_overflow),
        DropReason::Dummy => offset_of!(ipsec_sa_stats, dummy),
        DropReason::NoBufferSpace => offset_of!(ipsec_sa_stats, no_buffer_space),
        DropReason::PolicyDiscard => offset_of!(ipsec_sa_stats, policy_discard),
        DropReason::NatKeepalive => offset_of!(ipsec_sa_stats, nat_keepalive),
        DropReason::EcnCeOnNotEct => offset_of!(ipsec_sa_stats, ecn_ce_not_ect),
        DropReason::WrongDirection => offset_of!(ipsec_sa_stats, wrong_direction),
        DropReason::TooBig => offset_of!(ipsec_sa_stats, too_big),
        DropReason::FragmentTimeout => offset_of!(ipsec_sa_stats, fragment_timeout),
        DropReason::FragmentOverlap => offset_of!(ipsec_sa_stats, fragment_overlap),
        DropReason::FragmentDuplicate => offset_of!(ipsec_sa_stats, fragment_duplicate),
        DropReason::FragmentLimit => offset_of!(ipsec_sa_stats, fragment_limit),
        DropReason::FragmentInvalid => offset_of!(ipsec_sa_stats, fragment_invalid),
        DropReason::FragmentTooShort => offset_of!(ipsec_sa_stats, fragment_too_short),
        DropReason::FragmentUnresolved => offset_of!(ipsec_sa_stats, fragment_unresolved),
        _ => usize::MAX,
    };
    for r in DropReason::ALL {
        // Status 300 + n is counted in the n-th counter after `bytes`; a packet given
        // to an SA of the other direction is a misuse (104), counted all the same.
        let status = if r == DropReason::WrongDirection {
            ipsec_status::IPSEC_ERR_WRONG_DIRECTION as u32
        } else {
            300 + r.index() as u32
        };
        assert_eq!(ipsec_status::of_drop(r) as u32, status, "{r}");
        assert_eq!(
            counter(r),
            offset_of!(ipsec_sa_stats, bytes) + 8 * (1 + r.index()),
            "{r}"
        );
    }
    assert_eq!(size_of::<ipsec_sa_stats>(), 256);
    let text = |n: u32| {
        // SAFETY: ipsec_status_str returns static NUL-terminated strings.
        unsafe { CStr::from_ptr(ipsec_status_str(n)) }
            .to_str()
            .unwrap()
    };
    assert!(text(301).starts_with("IPSEC_ERR_REPLAY"));
    assert!(text(0).starts_with("IPSEC_OK"));
    assert_eq!(text(299), "unknown ipsec_status value");
    assert_eq!(text(u32::MAX), "unknown ipsec_status value");
}

#[test]
fn a_panic_becomes_a_status_and_a_message() {
    let st: ipsec_status = boundary(|| panic!("deliberate test panic"));
    assert_eq!(st, ipsec_status::IPSEC_ERR_PANIC);
    assert!(
        last_error().contains("deliberate test panic"),
        "{}",
        last_error()
    );
    let n: usize = boundary(|| panic!("{}", String::from("formatted")));
    assert_eq!(n, 0);
    assert!(last_error().contains("formatted"));
}

#[test]
fn encrypt_then_decrypt_in_place_and_count() {
    let out = new_sa(&config(0x1000, ipsec_direction::IPSEC_DIRECTION_OUTBOUND));
    let inb = new_sa(&config(0x1000, ipsec_direction::IPSEC_DIRECTION_INBOUND));
    let mut oh = ipsec_overhead::default();
    // SAFETY: out is live; oh writable.
    let st = unsafe { ipsec_sa_overhead(out, 60, &mut oh) };
    assert_eq!(st, ipsec_status::IPSEC_OK);
    assert_eq!(oh.headroom, 36);

    let mut buf = [0u8; 256];
    let (mut off, mut len) = (oh.headroom, put_packet(&mut buf, oh.headroom));
    let original = buf[off..off + len].to_vec();
    let cap = off + len + oh.tailroom;
    // SAFETY: buf has at least `cap` bytes; off/len are valid usizes.
    let st = unsafe { ipsec_sa_encrypt(out, buf.as_mut_ptr(), cap, &mut off, &mut len, T0) };
    assert_eq!(st, ipsec_status::IPSEC_OK);
    assert_eq!(
        (off, len),
        (0, cap),
        "the ESP packet uses exactly the room asked for"
    );
    assert_eq!(buf[9], 50);
    let wire = buf;
    // SAFETY: as above.
    let st = unsafe { ipsec_sa_decrypt(inb, buf.as_mut_ptr(), cap, &mut off, &mut len, T0) };
    assert_eq!(st, ipsec_status::IPSEC_OK);
    assert_eq!(&buf[off..off + len], &original[..]);

    // Replayed: refused, counted, descriptor unchanged.
    let mut buf = wire;
    let (mut off2, mut len2) = (0, cap);
    // SAFETY: as above.
    let st = unsafe { ipsec_sa_decrypt(inb, buf.as_mut_ptr(), cap, &mut off2, &mut len2, T0) };
    assert_eq!(st, ipsec_status::IPSEC_ERR_REPLAY);
    assert_eq!((off2, len2), (0, cap));
    assert!(last_error().contains("replay"), "{}", last_error());
    let s = stats(inb);
    assert_eq!((s.packets, s.replay, s.auth_failed), (1, 1, 0));

    // A descriptor beyond the buffer is refused before anything is touched.
    let (mut o, mut l) = (250usize, 10usize);
    // SAFETY: buf has 256 bytes.
    let st = unsafe { ipsec_sa_encrypt(out, buf.as_mut_ptr(), 256, &mut o, &mut l, T0) };
    assert_eq!(st, ipsec_status::IPSEC_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("offset 250 + length 10 exceeds capacity 256"));
    assert_eq!(stats(out).packets, 1);

    // SAFETY: both live, freed once; NULL is accepted.
    unsafe {
        ipsec_sa_free(out);
        ipsec_sa_free(inb);
        ipsec_sa_free(null_mut());
    }
}

/// Descriptors over `bufs`, each holding a 60-byte packet at `offset`.
fn packets_at(bufs: &mut [Vec<u8>], offset: usize) -> Vec<ipsec_packet> {
    bufs.iter_mut()
        .map(|b| ipsec_packet {
            buf: b.as_mut_ptr(),
            capacity: b.len(),
            offset,
            length: put_packet(b, offset),
            status: 999,
            fragments: 0,
        })
        .collect()
}

/// The C bursts (which hand groups of 32 to the SA's burst code) give what one packet
/// at a time gives, for AES-GCM and AES-CBC + HMAC, over several groups: tampered,
/// replayed and malformed packets among good ones get the same statuses, windows,
/// bytes and counters, and descriptors sharing one buffer work too.
#[test]
fn c_bursts_equal_one_packet_at_a_time() {
    static HMAC_KEY: [u8; 32] = [0x33; 32];
    // Under Miri (which checks the group path's borrows) only CBC, whose bursts are
    // grouped, and two groups: interpreted AES is slow.
    let suites: &[bool] = if cfg!(miri) { &[true] } else { &[false, true] };
    for &cbc in suites {
        let cfg = |dir| {
            let mut c = config(0x2000, dir);
            if cbc {
                c.cipher = ipsec_cipher::IPSEC_CIPHER_AES_128_CBC as u32;
                c.key_len = 16;
                c.integrity = ipsec_integrity::IPSEC_INTEGRITY_HMAC_SHA256_128 as u32;
                c.integrity_key = HMAC_KEY.as_ptr();
                c.integrity_key_len = HMAC_KEY.len();
            }
            c
        };
        let out = new_sa(&cfg(ipsec_direction::IPSEC_DIRECTION_OUTBOUND));
        let n = if cfg!(miri) { 34 } else { 75 };
        // A replay in a later group than its original (inside the window), a packet
        // cut short.
        let (replayed, cut) = ((n - 2).min(40), n - 1);
        let mut bufs = vec![vec![0u8; 200]; n];
        let mut pkts = packets_at(&mut bufs, 80);
        // SAFETY: every descriptor's buffer is valid for its capacity.
        let ok = unsafe { ipsec_sa_encrypt_burst(out, pkts.as_mut_ptr(), n, T0) };
        assert_eq!(ok, n, "cbc {cbc}");
        let mut wire: Vec<Vec<u8>> = bufs
            .iter()
            .zip(&pkts)
            .map(|(b, p)| b[p.offset..p.offset + p.length].to_vec())
            .collect();
        // Damage: a flipped ICV bit, a replay of an earlier packet, a cut one.
        wire[5].last_mut().map(|b| *b ^= 1).expect("bytes");
        wire[replayed] = wire[7].clone();
        wire[cut].truncate(30);
        let run = |burst: bool| {
            let inb = new_sa(&cfg(ipsec_direction::IPSEC_DIRECTION_INBOUND));
            let mut bufs: Vec<Vec<u8>> = wire.clone();
            let mut pkts: Vec<ipsec_packet> = bufs
                .iter_mut()
                .map(|b| ipsec_packet {
                    buf: b.as_mut_ptr(),
                    capacity: b.len(),
                    offset: 0,
                    length: b.len(),
                    status: 999,
                    fragments: 0,
                })
                .collect();
            // One descriptor beyond its buffer.
            pkts[20].length += 1;
            let ok = if burst {
                // SAFETY: as above.
                unsafe { ipsec_sa_decrypt_burst(inb, pkts.as_mut_ptr(), n, T0) }
            } else {
                pkts.iter_mut()
                    // SAFETY: as above.
                    .map(|p| unsafe { ipsec_sa_decrypt_burst(inb, p, 1, T0) })
                    .sum()
            };
            let seen: Vec<(u32, usize, usize)> = pkts
                .iter()
                .map(|p| (p.status, p.offset, p.length))
                .collect();
            let st = stats(inb);
            // SAFETY: live, freed once.
            unsafe { ipsec_sa_free(inb) };
            (
                ok,
                seen,
                bufs,
                (st.packets, st.auth_failed, st.replay, st.malformed),
            )
        };
        let (burst, single) = (run(true), run(false));
        assert_eq!(burst.0, n - 4, "cbc {cbc}");
        assert_eq!(burst, single, "cbc {cbc}");
        assert_eq!(burst.1[5].0, ipsec_status::IPSEC_ERR_AUTH_FAILED as u32);
        assert_eq!(burst.1[replayed].0, ipsec_status::IPSEC_ERR_REPLAY as u32);
        assert_eq!(
            burst.1[20].0,
            ipsec_status::IPSEC_ERR_INVALID_ARGUMENT as u32
        );

        // Four packets side by side in one buffer: still each encrypted and opened.
        let mut shared = vec![0u8; 4 * 200];
        let base = shared.as_mut_ptr();
        let mut pkts: Vec<ipsec_packet> = (0..4)
            .map(|i| {
                let len = put_packet(&mut shared[i * 200..(i + 1) * 200], 80);
                ipsec_packet {
                    // SAFETY: within `shared`.
                    buf: unsafe { base.add(i * 200) },
                    capacity: 200,
                    offset: 80,
                    length: len,
                    status: 999,
                    fragments: 0,
                }
            })
            .collect();
        let inb = new_sa(&cfg(ipsec_direction::IPSEC_DIRECTION_INBOUND));
        // SAFETY: the descriptors lie in `shared`, one 200-byte window each.
        unsafe {
            assert_eq!(ipsec_sa_encrypt_burst(out, pkts.as_mut_ptr(), 4, T0), 4);
            assert_eq!(ipsec_sa_decrypt_burst(inb, pkts.as_mut_ptr(), 4, T0), 4);
        }
        let mut plain = [0u8; 200];
        put_packet(&mut plain, 0);
        for (i, p) in pkts.iter().enumerate() {
            let at = i * 200 + p.offset;
            assert_eq!(
                &shared[at..at + p.length],
                &plain[..60],
                "cbc {cbc} packet {i}"
            );
        }
        // SAFETY: live, freed once.
        unsafe {
            ipsec_sa_free(inb);
            ipsec_sa_free(out);
        }
    }
}

#[test]
fn bursts_report_a_status_per_packet() {
    let out = new_sa(&config(0x1000, ipsec_direction::IPSEC_DIRECTION_OUTBOUND));
    let mut bufs = [[0u8; 160]; 3];
    let mut pkts: Vec<ipsec_packet> = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| {
            // The second packet has too little headroom.
            let offset = if i == 1 { 10 } else { 40 };
            let len = put_packet(b, offset);
            ipsec_packet {
                buf: b.as_mut_ptr(),
                capacity: b.len(),
                offset,
                length: len,
                status: 999,
                fragments: 0,
            }
        })
        .collect();
    pkts[2].buf = null_mut();
    // SAFETY: every descriptor's buffer is valid for its capacity (or NULL).
    let ok = unsafe { ipsec_sa_encrypt_burst(out, pkts.as_mut_ptr(), pkts.len(), T0) };
    assert_eq!(ok, 1);
    assert_eq!(pkts[0].status, 0);
    assert_eq!(
        pkts[1].status,
        ipsec_status::IPSEC_ERR_NO_BUFFER_SPACE as u32
    );
    assert_eq!(
        pkts[2].status,
        ipsec_status::IPSEC_ERR_INVALID_ARGUMENT as u32
    );
    assert_eq!((pkts[0].offset, pkts[1].offset), (4, 10));
    // NULL SA: every packet says so.
    // SAFETY: as above.
    let st = unsafe { ipsec_sa_decrypt_burst(null_mut(), pkts.as_mut_ptr(), 2, T0) };
    assert_eq!(st, 0);
    assert_eq!(
        pkts[0].status,
        ipsec_status::IPSEC_ERR_INVALID_ARGUMENT as u32
    );
    // SAFETY: NULL with count 0 is allowed; NULL with count 2 is refused.
    unsafe {
        assert_eq!(ipsec_sa_encrypt_burst(out, null_mut(), 0, T0), 0);
        assert_eq!(ipsec_sa_encrypt_burst(out, null_mut(), 2, T0), 0);
        ipsec_sa_free(out);
    }
}

#[test]
fn out_of_range_enums_and_reserved_fields_are_refused() {
    let mut c = config(0x1000, ipsec_direction::IPSEC_DIRECTION_OUTBOUND);
    let mut sa = null_mut();
    for (field, set) in [
        (
            "direction 9",
            (|c: &mut ipsec_sa_config| c.direction = 9) as fn(&mut _),
        ),
        ("mode 3", |c| c.mode = 3),
        ("cipher 0", |c| c.cipher = 0),
        ("integrity 77", |c| c.integrity = 77),
        ("padding 4", |c| c.padding = 4),
        ("reserved", |c| c.reserved[2] = 1),
        ("reserved32", |c| c.reserved32 = 1),
        ("df 3", |c| c.df = 3),
        ("lookup 4", |c| c.lookup = 4),
    ] {
        let mut bad = c;
        set(&mut bad);
        // SAFETY: bad has valid pointers; sa writable.
        let st = unsafe { ipsec_sa_new(&bad, T0, &mut sa) };
        assert_eq!(st, ipsec_status::IPSEC_ERR_INVALID_ARGUMENT, "{field}");
        assert!(last_error().contains(field), "{field}: {}", last_error());
        assert!(sa.is_null(), "nothing written on failure");
    }
    c.spi = 7;
    // SAFETY: as above.
    let st = unsafe { ipsec_sa_new(&c, T0, &mut sa) };
    assert_eq!(st, ipsec_status::IPSEC_ERR_CONFIG);
    assert!(last_error().starts_with("spi:"));
    // SAFETY: NULL config / out.
    unsafe {
        assert_eq!(
            ipsec_sa_new(null(), T0, &mut sa),
            ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ipsec_sa_new(&c, T0, null_mut()),
            ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
        );
    }
}

#[test]
fn sa_from_toml_picks_by_name() {
    let text = "[[sa]]\nname = \"a\"\nspi = 4096\ndirection = \"inbound\"\nmode = \"tunnel\"\n\
                cipher = \"aes-128-gcm\"\nkey = \"0707070707070707070707070707070707070707\"\n";
    let mut sa = null_mut();
    // SAFETY: text is valid for its length; names are NUL-terminated.
    unsafe {
        let st = ipsec_sa_from_toml(text.as_ptr().cast(), text.len(), c"b".as_ptr(), T0, &mut sa);
        assert_eq!(st, ipsec_status::IPSEC_ERR_NOT_FOUND);
        assert!(last_error().contains("\"b\""));
        let st = ipsec_sa_from_toml(text.as_ptr().cast(), text.len(), c"a".as_ptr(), T0, &mut sa);
        assert_eq!(st, ipsec_status::IPSEC_OK);
        let mut info = core::mem::MaybeUninit::uninit();
        assert_eq!(
            ipsec_sa_get_info(sa, info.as_mut_ptr()),
            ipsec_status::IPSEC_OK
        );
        let info = info.assume_init();
        assert_eq!(info.spi, 4096);
        assert_eq!(
            info.direction,
            ipsec_direction::IPSEC_DIRECTION_INBOUND as u32
        );
        assert_eq!(info.replay_window, 64);
        ipsec_sa_free(sa);
    }
}

/// Issue 11, item 2: a key that serves two SAs is refused by every C loader (SA files,
/// SPDs, gateways) with `IPSEC_ERR_CONFIG` and a last error naming both SAs, never the
/// key; nothing is written to `out`.
#[test]
fn a_key_shared_by_two_sas_is_refused_by_every_loader() {
    let sas = "[[sa]]\nname = \"out\"\nspi = 4097\ndirection = \"outbound\"\nmode = \
               \"tunnel\"\ncipher = \"aes-128-gcm\"\nkey = \"5a5b5c5d5e5f60616263646566676869\
               01020304\"\ntunnel_src = \"192.0.2.1\"\ntunnel_dst = \"198.51.100.2\"\n\n\
               [[sa]]\nname = \"out-copy\"\nspi = 4098\ndirection = \"outbound\"\nmode = \
               \"tunnel\"\ncipher = \"aes-128-gcm\"\nkey = \"5a5b5c5d5e5f60616263646566676869\
               01020304\"\ntunnel_src = \"192.0.2.1\"\ntunnel_dst = \"198.51.100.3\"\n";
    let policy = format!(
        "[[policy]]\nname = \"p\"\ndirection = \"outbound\"\naction = \"protect\"\n\
         sa = \"out\"\n\n{sas}"
    );
    let refused = |what: &str| {
        let e = last_error();
        assert!(
            e.starts_with("sa \"out-copy\": key: the same key as the key of sa \"out\""),
            "{what}: {e}"
        );
        assert!(e.contains("nonces repeat"), "{what}: {e}");
        assert!(!e.contains("5a5b5c"), "{what}: key bytes in {e}");
    };
    // SAFETY: the texts are valid for their lengths; the names NUL-terminated; the out
    // pointers writable.
    unsafe {
        let mut sa = null_mut();
        let st = ipsec_sa_from_toml(sas.as_ptr().cast(), sas.len(), c"out".as_ptr(), T0, &mut sa);
        assert_eq!(st, ipsec_status::IPSEC_ERR_CONFIG);
        assert!(sa.is_null());
        refused("ipsec_sa_from_toml");
        let mut spd = null_mut();
        let st = ipsec_spd_from_toml(policy.as_ptr().cast(), policy.len(), &mut spd);
        assert_eq!(st, ipsec_status::IPSEC_ERR_CONFIG);
        assert!(spd.is_null());
        refused("ipsec_spd_from_toml");
        let mut gw = null_mut();
        let st = ipsec_gateway_new(policy.as_ptr().cast(), policy.len(), T0, &mut gw);
        assert_eq!(st, ipsec_status::IPSEC_ERR_CONFIG);
        assert!(gw.is_null());
        refused("ipsec_gateway_new");
    }
}

#[test]
fn lifetime_events_are_polled_with_the_callers_time() {
    let mut c = config(0x1000, ipsec_direction::IPSEC_DIRECTION_OUTBOUND);
    c.soft_lifetime.seconds = 1;
    c.hard_lifetime.seconds = 2;
    let sa = new_sa(&c);
    let poll = |t: u64| {
        let mut ev = core::mem::MaybeUninit::uninit();
        // SAFETY: sa is live; ev writable.
        let st = unsafe { ipsec_sa_poll_event(sa, t, ev.as_mut_ptr()) };
        assert_eq!(st, ipsec_status::IPSEC_OK);
        // SAFETY: written on success.
        let ev = unsafe { ev.assume_init() };
        (ev.kind, ev.limit)
    };
    assert_eq!(poll(T0), (0, 0));
    assert_eq!(poll(T0 + 1_500_000_000), (1, 3));
    assert_eq!(poll(T0 + 1_600_000_000), (0, 0), "reported once");
    assert_eq!(poll(T0 + 2_000_000_000), (2, 3));
    // SAFETY: live, freed once.
    unsafe { ipsec_sa_free(sa) };
}

#[test]
fn last_error_copy_out_writes_only_when_it_fits() {
    // SAFETY: NULL SA refused.
    let st = unsafe { ipsec_sa_get_stats(null(), null_mut()) };
    assert_eq!(st, ipsec_status::IPSEC_ERR_INVALID_ARGUMENT);
    let needed = ipsec_last_error_length();
    assert_eq!(needed, last_error().len() + 1);
    let mut small = [1 as c_char; 4];
    let mut n = 77usize;
    // SAFETY: small has 4 writable bytes.
    let st = unsafe { ipsec_last_error(small.as_mut_ptr(), small.len(), &mut n) };
    assert_eq!(st, ipsec_status::IPSEC_ERR_BUFFER_TOO_SMALL);
    assert_eq!((small, n), ([1; 4], 77), "nothing written");
    // SAFETY: NULL buffer refused without replacing the message.
    let st = unsafe { ipsec_last_error(null_mut(), 10, &mut n) };
    assert_eq!(st, ipsec_status::IPSEC_ERR_INVALID_ARGUMENT);
    assert_eq!(ipsec_last_error_length(), needed);
}

#[test]
fn replay_window_on_its_own() {
    let mut w = null_mut();
    // SAFETY: w writable; the window is used and freed once.
    unsafe {
        assert_eq!(
            ipsec_replay_window_new(10, false, &mut w),
            ipsec_status::IPSEC_ERR_CONFIG
        );
        assert_eq!(
            ipsec_replay_window_new(32, false, &mut w),
            ipsec_status::IPSEC_OK
        );
        assert_eq!(ipsec_replay_window_accept(w, 3), ipsec_status::IPSEC_OK);
        assert_eq!(
            ipsec_replay_window_check(w, 3),
            ipsec_status::IPSEC_ERR_REPLAY
        );
        assert_eq!(
            ipsec_replay_window_accept(w, 3),
            ipsec_status::IPSEC_ERR_REPLAY
        );
        assert_eq!(ipsec_replay_window_accept(w, 100), ipsec_status::IPSEC_OK);
        assert_eq!(
            ipsec_replay_window_accept(w, 50),
            ipsec_status::IPSEC_ERR_TOO_OLD
        );
        assert_eq!(ipsec_replay_window_accept(w, 69), ipsec_status::IPSEC_OK);
        let mut h = 0u64;
        assert_eq!(
            ipsec_replay_window_highest(w, &mut h),
            ipsec_status::IPSEC_OK
        );
        assert_eq!(h, 100);
        ipsec_replay_window_free(w);
    }
}

const POLICY: &str = r#"
[[policy]]
name = "rdp"
direction = "both"
local = "10.0.0.10"
remote = "10.1.0.0/24"
protocol = "tcp"
local_port = 3389
action = "protect"
sa = ["out", "in"]

[[policy]]
name = "rest"
direction = "both"
action = "discard"

[[sa]]
name = "out"
spi = 4097
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "0707070707070707070707070707070707070707"
tunnel_src = "192.0.2.1"
tunnel_dst = "198.51.100.2"

[[sa]]
name = "in"
spi = 8193
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "0808080808080808080808080808080808080808"
"#;

fn c_text(p: *const c_char) -> Option<&'static str> {
    // SAFETY: the strings handed out live as long as their owner (a gateway's names:
    // while their SA or policy is installed, then until the next successful control
    // call), which the checks in these tests respect.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_str().unwrap())
}

#[test]
fn spd_lookups_lint_and_firewall() {
    let mut spd = null_mut();
    // SAFETY: POLICY valid for its length; spd writable; every result freed once.
    unsafe {
        assert_eq!(
            ipsec_spd_from_toml(POLICY.as_ptr().cast(), POLICY.len(), &mut spd),
            ipsec_status::IPSEC_OK
        );
        let mut flow = ipsec_flow {
            direction: ipsec_direction::IPSEC_DIRECTION_OUTBOUND as u32,
            family: ipsec_family::IPSEC_FAMILY_IPV4 as u32,
            src: [0; 16],
            dst: [0; 16],
            protocol: 6,
            has_ports: true,
            src_port: 3389,
            dst_port: 50000,
            has_icmp: false,
            icmp_type: 0,
            icmp_code: 0,
        };
        flow.src[..4].copy_from_slice(&[10, 0, 0, 10]);
        flow.dst[..4].copy_from_slice(&[10, 1, 0, 7]);
        let mut d = core::mem::MaybeUninit::uninit();
        assert_eq!(
            ipsec_spd_lookup(spd, &flow, d.as_mut_ptr()),
            ipsec_status::IPSEC_OK
        );
        let d = d.assume_init();
        assert_eq!(d.action, ipsec_action::IPSEC_ACTION_PROTECT as u32);
        assert_eq!(
            (c_text(d.policy), c_text(d.sa), d.policy_index),
            (Some("rdp"), Some("out"), 0)
        );

        // The same flow as a packet, inbound (reversed): the inbound SA.
        let mut pkt = [0u8; 40];
        pkt[..20].copy_from_slice(&[
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 1, 0, 7, 10, 0, 0, 10,
        ]);
        pkt[20..24].copy_from_slice(&[0xc3, 0x50, 0x0d, 0x3d]); // 50000 -> 3389
        pkt[32] = 0x50;
        let mut d = core::mem::MaybeUninit::uninit();
        let st = ipsec_spd_lookup_packet(spd, 2, pkt.as_ptr(), pkt.len(), d.as_mut_ptr());
        assert_eq!(st, ipsec_status::IPSEC_OK);
        let d = d.assume_init();
        assert_eq!((c_text(d.policy), c_text(d.sa)), (Some("rdp"), Some("in")));

        flow.src_port = 23;
        let mut d = core::mem::MaybeUninit::uninit();
        assert_eq!(
            ipsec_spd_lookup(spd, &flow, d.as_mut_ptr()),
            ipsec_status::IPSEC_OK
        );
        let d = d.assume_init();
        assert_eq!(d.action, ipsec_action::IPSEC_ACTION_DISCARD as u32);
        assert_eq!((c_text(d.policy), c_text(d.sa)), (Some("rest"), None));

        let mut lint = null_mut();
        assert_eq!(ipsec_spd_lint(spd, &mut lint), ipsec_status::IPSEC_OK);
        let mut codes = Vec::new();
        for i in 0..ipsec_lint_count(lint) {
            let mut f = core::mem::MaybeUninit::uninit();
            assert_eq!(
                ipsec_lint_get(lint, i, f.as_mut_ptr()),
                ipsec_status::IPSEC_OK
            );
            codes.push(c_text(f.assume_init().code).unwrap().to_string());
        }
        let mut f = core::mem::MaybeUninit::uninit();
        let past = ipsec_lint_count(lint);
        assert_eq!(
            ipsec_lint_get(lint, past, f.as_mut_ptr()),
            ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
        );
        ipsec_lint_free(lint);
        // The final catch-all discards IKE: the linter says so.
        assert!(codes.iter().any(|c| c == "ike-blocked"), "{codes:?}");

        let mut fw = null_mut();
        assert_eq!(
            ipsec_spd_firewall_openings(spd, &mut fw),
            ipsec_status::IPSEC_OK
        );
        let mut esp = 0;
        for i in 0..ipsec_firewall_count(fw) {
            let mut o = core::mem::MaybeUninit::uninit();
            assert_eq!(
                ipsec_firewall_get(fw, i, o.as_mut_ptr()),
                ipsec_status::IPSEC_OK
            );
            let o = o.assume_init();
            if o.protocol == 50 {
                assert!(!o.has_port);
                esp += 1;
            }
        }
        assert_eq!(esp, 2, "ESP both ways");
        ipsec_firewall_free(fw);
        ipsec_spd_free(spd);
    }
}

#[test]
fn gateway_allocates_spis_outside_its_inbound_sas_until_the_range_is_full() {
    let mut gw = null_mut();
    // SAFETY: POLICY valid; out-pointers valid; freed once.
    unsafe {
        assert_eq!(
            ipsec_gateway_new(POLICY.as_ptr().cast(), POLICY.len(), T0, &mut gw),
            ipsec_status::IPSEC_OK
        );
        // The inbound SA has SPI 0x2001.
        assert_eq!(
            ipsec_gateway_set_spi_range(gw, 0x2000, 0x2002),
            ipsec_status::IPSEC_OK
        );
        let mut got = [0u32; 2];
        for spi in &mut got {
            assert_eq!(
                ipsec_gateway_allocate_spi(gw, T0, spi),
                ipsec_status::IPSEC_OK
            );
        }
        got.sort_unstable();
        assert_eq!(got, [0x2000, 0x2002]);
        let mut spi = 7;
        assert_eq!(
            ipsec_gateway_allocate_spi(gw, T0, &mut spi),
            ipsec_status::IPSEC_ERR_SPI_EXHAUSTED
        );
        assert_eq!(spi, 7, "nothing written on failure");
        assert!(last_error().contains("no free SPI"), "{}", last_error());
        assert_eq!(
            ipsec_gateway_set_spi_range(gw, 0x2002, 0x2000),
            ipsec_status::IPSEC_ERR_CONFIG
        );
        assert!(last_error().starts_with("spi_max"), "{}", last_error());
        ipsec_gateway_free(gw);
    }
}

#[test]
fn gateway_protects_and_discards() {
    let mut gw = null_mut();
    // SAFETY: POLICY valid; buffers valid for their capacity; freed once.
    unsafe {
        assert_eq!(
            ipsec_gateway_new(POLICY.as_ptr().cast(), POLICY.len(), T0, &mut gw),
            ipsec_status::IPSEC_OK
        );
        assert_eq!(ipsec_gateway_sa_count(gw), 2);
        let mut buf = [0u8; 200];
        buf[64..104].copy_from_slice(&[0u8; 40]);
        buf[64..84].copy_from_slice(&[
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 10, 10, 1, 0, 7,
        ]);
        buf[84..88].copy_from_slice(&[0x0d, 0x3d, 0xc3, 0x50]); // 3389 -> 50000
        buf[96] = 0x50;
        let template = buf;
        let (mut off, mut len) = (64usize, 40usize);
        let mut r = core::mem::MaybeUninit::uninit();
        let st = ipsec_gateway_outbound(
            gw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut off,
            &mut len,
            T0,
            r.as_mut_ptr(),
        );
        assert_eq!(st, ipsec_status::IPSEC_OK);
        let r = r.assume_init();
        assert_eq!(r.verdict, ipsec_verdict::IPSEC_VERDICT_PROTECTED as u32);
        assert_eq!(c_text(r.sa), Some("out"));
        assert_eq!(buf[off + 9], 50);

        let mut buf = template;
        buf[84..86].copy_from_slice(&[0, 23]); // from port 23, not 3389
        let (mut off, mut len) = (64usize, 40usize);
        let mut r = core::mem::MaybeUninit::uninit();
        let st = ipsec_gateway_outbound(
            gw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut off,
            &mut len,
            T0,
            r.as_mut_ptr(),
        );
        assert_eq!(st, ipsec_status::IPSEC_ERR_POLICY_DISCARD);
        let mut s = core::mem::MaybeUninit::uninit();
        assert_eq!(
            ipsec_gateway_get_stats(gw, s.as_mut_ptr()),
            ipsec_status::IPSEC_OK
        );
        assert_eq!(s.assume_init().policy_discard, 1);
        let mut e = core::mem::MaybeUninit::uninit();
        assert_eq!(
            ipsec_gateway_get_sa(gw, 0, e.as_mut_ptr()),
            ipsec_status::IPSEC_OK
        );
        let e = e.assume_init();
        assert_eq!(
            (c_text(e.name), e.stats.packets, e.info.spi),
            (Some("out"), 1, 4097)
        );
        let mut ev = core::mem::MaybeUninit::uninit();
        let st = ipsec_gateway_poll_event(gw, T0, ev.as_mut_ptr());
        assert_eq!(st, ipsec_status::IPSEC_OK);
        let ev = ev.assume_init();
        assert_eq!(
            (ev.sa, ev.event.kind),
            (null(), 0),
            "no lifetimes: nothing due"
        );
        ipsec_gateway_free(gw);
    }
}

/// An IPv4 TCP fragment 10.0.0.10 -> 10.1.0.7 (outbound under `POLICY`) of datagram
/// 0x77 at `offset`, with `data`, placed at byte 64 of a 200-byte buffer.
fn fragment(offset: u16, more: bool, data: &[u8]) -> ([u8; 200], usize) {
    let mut buf = [0u8; 200];
    let len = 20 + data.len();
    let flags = (offset / 8) | if more { 0x2000 } else { 0 };
    buf[64..84].copy_from_slice(&[
        0x45,
        0,
        0,
        len as u8,
        0,
        0x77,
        (flags >> 8) as u8,
        flags as u8,
        64,
        6,
        0,
        0,
        10,
        0,
        0,
        10,
        10,
        1,
        0,
        7,
    ]);
    ipsec_core::packet::set_ipv4_checksum(&mut buf[64..84]);
    buf[84..84 + data.len()].copy_from_slice(data);
    (buf, len)
}

#[test]
fn gateway_fragments_statuses_counters_and_limits() {
    // The issue's policy: PROTECT tcp/3389, then BYPASS the rest.
    let policy = POLICY.replace(
        "name = \"rest\"\ndirection = \"both\"\naction = \"discard\"",
        "name = \"rest\"\ndirection = \"both\"\naction = \"bypass\"",
    );
    assert_ne!(policy, POLICY);
    let mut gw = null_mut();
    let run = |gw: *mut ipsec_gateway, offset: u16, more: bool, data: &[u8]| {
        let (mut buf, len) = fragment(offset, more, data);
        let (mut off, mut len) = (64usize, len);
        let mut r = core::mem::MaybeUninit::uninit();
        // SAFETY: a live gateway; the buffer is valid for its capacity.
        let st = unsafe {
            ipsec_gateway_outbound(
                gw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut off,
                &mut len,
                T0,
                r.as_mut_ptr(),
            )
        };
        // SAFETY: written on success.
        (
            st,
            (st == ipsec_status::IPSEC_OK).then(|| unsafe { r.assume_init() }.verdict),
        )
    };
    let mut tcp = [0u8; 24];
    tcp[..4].copy_from_slice(&[0x0d, 0x3d, 0xc3, 0x50]); // 3389 -> 50000
    tcp[12] = 0x50;
    // SAFETY: the policy text is valid; every handle freed once.
    unsafe {
        assert_eq!(
            ipsec_gateway_new(policy.as_ptr().cast(), policy.len(), T0, &mut gw),
            ipsec_status::IPSEC_OK
        );
        // A later fragment whose first fragment was not seen: not bypassed.
        assert_eq!(
            run(gw, 24, false, &[0; 16]).0,
            ipsec_status::IPSEC_ERR_FRAGMENT_UNRESOLVED
        );
        // A tiny first fragment, and a fragment at offset 8.
        assert_eq!(
            run(gw, 0, true, &tcp[..8]).0,
            ipsec_status::IPSEC_ERR_FRAGMENT_TOO_SHORT
        );
        assert_eq!(
            run(gw, 8, true, &[0; 16]).0,
            ipsec_status::IPSEC_ERR_FRAGMENT_OVERLAP
        );
        // The first fragment, then its later one: both encrypted.
        let protected = Some(ipsec_verdict::IPSEC_VERDICT_PROTECTED as u32);
        assert_eq!(run(gw, 0, true, &tcp), (ipsec_status::IPSEC_OK, protected));
        assert_eq!(
            run(gw, 24, false, &[0; 16]),
            (ipsec_status::IPSEC_OK, protected)
        );
        let mut s = core::mem::MaybeUninit::uninit();
        assert_eq!(
            ipsec_gateway_get_stats(gw, s.as_mut_ptr()),
            ipsec_status::IPSEC_OK
        );
        let s = s.assume_init();
        assert_eq!(
            (
                s.fragment_unresolved,
                s.fragment_too_short,
                s.fragment_overlap
            ),
            (1, 1, 1)
        );
        // Limits: too many is a configuration error; none turns the memory off.
        assert_eq!(
            ipsec_gateway_set_fragment_limits(gw, (1 << 20) + 1, 1_000_000_000),
            ipsec_status::IPSEC_ERR_CONFIG
        );
        assert!(last_error().contains("max_datagrams"), "{}", last_error());
        assert_eq!(
            ipsec_gateway_set_fragment_limits(gw, 0, 1_000_000_000),
            ipsec_status::IPSEC_OK
        );
        assert_eq!(run(gw, 0, true, &tcp), (ipsec_status::IPSEC_OK, protected));
        assert_eq!(
            run(gw, 24, false, &[0; 16]).0,
            ipsec_status::IPSEC_ERR_FRAGMENT_UNRESOLVED
        );
        assert_eq!(
            ipsec_gateway_set_fragment_limits(null_mut(), 16, 0),
            ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
        );
        ipsec_gateway_free(gw);
    }
}

#[test]
fn bool_fields_holding_other_bytes_are_refused_not_read() {
    let mut raw =
        core::mem::MaybeUninit::new(config(0x1000, ipsec_direction::IPSEC_DIRECTION_OUTBOUND));
    let at = core::mem::offset_of!(ipsec_sa_config, udp_encap);
    // SAFETY: one byte inside the struct: what a C caller's memset could leave there.
    unsafe { raw.as_mut_ptr().cast::<u8>().add(at).write(7) };
    let mut sa = null_mut();
    // SAFETY: the struct's pointers are valid; the bool byte is checked before any read.
    let st = unsafe { ipsec_sa_new(raw.as_ptr(), T0, &mut sa) };
    assert_eq!(st, ipsec_status::IPSEC_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("udp_encap is 7"), "{}", last_error());
    assert!(sa.is_null());
}

/// Fragment `index` (of two, 32 payload bytes each) of an 84-byte IPv4 ESP datagram.
fn esp_fragment(index: usize) -> [u8; 52] {
    let mut f = [0u8; 52];
    f[0] = 0x45;
    f[3] = 52;
    f[5] = 0x42; // identification
    f[6] = if index == 0 { 0x20 } else { 0 }; // MF on the first
    f[7] = if index == 0 { 0 } else { 4 }; // offset 32 / 8
    f[8] = 64;
    f[9] = 50;
    f[12..16].copy_from_slice(&[192, 0, 2, 1]);
    f[16..20].copy_from_slice(&[198, 51, 100, 2]);
    ipsec_core::packet::set_ipv4_checksum(&mut f[..20]);
    for (i, b) in f[20..].iter_mut().enumerate() {
        *b = (index * 32 + i) as u8;
    }
    f
}

#[test]
fn reassembler_puts_fragments_back_together_in_place() {
    let mut r = null_mut();
    // SAFETY: every pointer is valid for its use; the handle is freed once.
    unsafe {
        let mut limits = core::mem::MaybeUninit::uninit();
        assert_eq!(
            ipsec_reassembly_limits_init(limits.as_mut_ptr()),
            ipsec_status::IPSEC_OK
        );
        let mut limits = limits.assume_init();
        assert_eq!(
            (limits.max_bytes, limits.max_datagrams, limits.max_fragments),
            (4 << 20, 1024, 64)
        );
        assert_eq!(limits.lifetime_ns, 30_000_000_000);
        limits.reserved[1] = 1;
        assert_eq!(
            ipsec_reassembler_new(&limits, &mut r),
            ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("reserved"), "{}", last_error());
        assert!(r.is_null());
        assert_eq!(
            ipsec_reassembler_new(null(), &mut r),
            ipsec_status::IPSEC_OK
        );

        let mut buf = [0u8; 200];
        let insert = |buf: &mut [u8; 200], frag: &[u8], cap: usize, now: u64| {
            buf[16..16 + frag.len()].copy_from_slice(frag);
            let (mut off, mut len, mut what) = (16usize, frag.len(), 0u32);
            let st = ipsec_reassembler_insert(
                r,
                buf.as_mut_ptr(),
                cap,
                &mut off,
                &mut len,
                now,
                &mut what,
            );
            (st, off, len, what)
        };
        let (st, off, len, what) = insert(&mut buf, &esp_fragment(0), 200, T0);
        assert_eq!(st, ipsec_status::IPSEC_OK);
        assert_eq!(what, ipsec_reassembly::IPSEC_REASSEMBLY_HELD as u32);
        assert_eq!((off, len), (16, 52));
        // Too little room for the 84-byte datagram: refused, not taken.
        let (st, off, len, what) = insert(&mut buf, &esp_fragment(1), 16 + 83, T0);
        assert_eq!(st, ipsec_status::IPSEC_ERR_NO_BUFFER_SPACE);
        assert_eq!((off, len, what), (16, 52, 0));
        let (st, off, len, what) = insert(&mut buf, &esp_fragment(1), 200, T0);
        assert_eq!(st, ipsec_status::IPSEC_OK);
        assert_eq!(what, ipsec_reassembly::IPSEC_REASSEMBLY_COMPLETE as u32);
        assert_eq!((off, len), (16, 84));
        assert_eq!(&buf[16..18], &[0x45, 0], "an IPv4 header");
        assert_eq!(&buf[18..20], &84u16.to_be_bytes());
        assert!(buf[36..100].iter().enumerate().all(|(i, &b)| b == i as u8));
        // A new datagram, then an exact copy of its fragment.
        assert_eq!(insert(&mut buf, &esp_fragment(1), 200, T0).3, 2);
        let (st, ..) = insert(&mut buf, &esp_fragment(1), 200, T0);
        assert_eq!(st, ipsec_status::IPSEC_ERR_FRAGMENT_DUPLICATE);
        // A whole packet.
        let mut whole = esp_fragment(1);
        whole[7] = 0;
        ipsec_core::packet::set_ipv4_checksum(&mut whole[..20]);
        let (st, _, _, what) = insert(&mut buf, &whole, 200, T0);
        assert_eq!(st, ipsec_status::IPSEC_OK);
        assert_eq!(what, ipsec_reassembly::IPSEC_REASSEMBLY_NOT_FRAGMENT as u32);

        let mut dropped = 9usize;
        assert_eq!(
            ipsec_reassembler_expire(r, T0 + 30_000_000_000, &mut dropped),
            ipsec_status::IPSEC_OK
        );
        assert_eq!(dropped, 1);
        let mut s = core::mem::MaybeUninit::uninit();
        assert_eq!(
            ipsec_reassembler_get_stats(r, s.as_mut_ptr()),
            ipsec_status::IPSEC_OK
        );
        let s = s.assume_init();
        assert_eq!((s.packets, s.bytes), (1, 84));
        assert_eq!(
            (s.no_buffer_space, s.fragment_duplicate, s.fragment_timeout),
            (1, 1, 1)
        );
        assert_eq!(
            ipsec_reassembler_expire(null_mut(), T0, &mut dropped),
            ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ipsec_reassembler_get_stats(r, null_mut()),
            ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
        );
        ipsec_reassembler_free(r);
        ipsec_reassembler_free(null_mut());
    }
}

#[test]
fn gateway_holds_outer_esp_fragments_as_reassembling() {
    let mut gw = null_mut();
    // SAFETY: POLICY valid; buffers valid for their capacity; freed once.
    unsafe {
        assert_eq!(
            ipsec_gateway_new(POLICY.as_ptr().cast(), POLICY.len(), T0, &mut gw),
            ipsec_status::IPSEC_OK
        );
        let mut buf = [0u8; 200];
        let frag = esp_fragment(0);
        buf[16..68].copy_from_slice(&frag);
        let (mut off, mut len) = (16usize, 52usize);
        let mut r = core::mem::MaybeUninit::uninit();
        let st = ipsec_gateway_inbound(
            gw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut off,
            &mut len,
            T0,
            r.as_mut_ptr(),
        );
        assert_eq!(st, ipsec_status::IPSEC_OK);
        let r = r.assume_init();
        assert_eq!(r.verdict, ipsec_verdict::IPSEC_VERDICT_REASSEMBLING as u32);
        assert_eq!((r.sa, r.policy, off, len), (null(), null(), 16, 52));
        let mut dropped = 9usize;
        assert_eq!(
            ipsec_gateway_expire_fragments(gw, T0, &mut dropped),
            ipsec_status::IPSEC_OK
        );
        assert_eq!(dropped, 0);
        let mut limits = core::mem::MaybeUninit::uninit();
        ipsec_reassembly_limits_init(limits.as_mut_ptr());
        let mut limits = limits.assume_init();
        limits.max_datagrams = 0;
        assert_eq!(
            ipsec_gateway_set_reassembly_limits(gw, &limits, &mut dropped),
            ipsec_status::IPSEC_OK
        );
        assert_eq!(dropped, 1);
        let mut s = core::mem::MaybeUninit::uninit();
        assert_eq!(
            ipsec_gateway_get_stats(gw, s.as_mut_ptr()),
            ipsec_status::IPSEC_OK
        );
        assert_eq!(s.assume_init().fragment_limit, 1);
        assert_eq!(
            ipsec_gateway_set_reassembly_limits(gw, null(), &mut dropped),
            ipsec_status::IPSEC_OK,
            "NULL: the defaults"
        );
        ipsec_gateway_free(gw);
    }
}

#[test]
fn nat_t_config_fields_come_from_the_reserved_words() {
    let c = config(0x1000, ipsec_direction::IPSEC_DIRECTION_OUTBOUND);
    assert_eq!(c.df, ipsec_df::IPSEC_DF_COPY as u32);
    assert_eq!(c.nat_keepalive_interval, 20);
    assert!(c.nat_original_src.is_null() && c.nat_original_dst.is_null());
    assert_eq!((c.path_mtu, c.soft_lifetime_jitter), (0, 10));
    assert_eq!((c.lookup, c.reserved32), (0, 0));
    assert_eq!(c.reserved, [0; 3]);
    #[cfg(target_pointer_width = "64")]
    {
        // The layout before these fields: 216 bytes, reserved[8] at 152; the last
        // reserved word keeps its offset.
        assert_eq!(core::mem::size_of::<ipsec_sa_config>(), 216);
        assert_eq!(core::mem::offset_of!(ipsec_sa_config, df), 152);
        assert_eq!(
            core::mem::offset_of!(ipsec_sa_config, reserved) + 2 * 8,
            152 + 7 * 8
        );
    }
}

/// An outbound tunnel SA with NAT-T: DF policy on the wire, keepalives polled.
#[test]
fn df_and_keepalives_through_the_c_api() {
    let mut c = config(0x1000, ipsec_direction::IPSEC_DIRECTION_OUTBOUND);
    c.udp_encap = true;
    c.udp_src_port = 4500;
    c.udp_dst_port = 4500;
    c.df = ipsec_df::IPSEC_DF_CLEAR as u32;
    c.nat_keepalive_interval = 5;
    let sa = new_sa(&c);
    let mut buf = [0u8; 256];
    let (mut off, mut len) = (128usize, put_packet(&mut buf, 128));
    buf[128 + 6] = 0x40; // inner DF set: cleared outside by policy
    // SAFETY: sa live; buf valid for its length; outputs writable; freed once.
    unsafe {
        let st = ipsec_sa_encrypt(sa, buf.as_mut_ptr(), buf.len(), &mut off, &mut len, T0);
        assert_eq!(st, ipsec_status::IPSEC_OK);
        assert_eq!(buf[off + 6] & 0x40, 0, "DF cleared by policy");

        let mut due = 0u64;
        assert_eq!(
            ipsec_sa_next_keepalive(sa, &mut due),
            ipsec_status::IPSEC_OK
        );
        assert_eq!(due, T0 + 5_000_000_000);
        let mut ka = [0u8; IPSEC_NAT_KEEPALIVE_MAX_LEN];
        let mut n = 99usize;
        let st = ipsec_sa_poll_keepalive(sa, due - 1, ka.as_mut_ptr(), ka.len(), &mut n);
        assert_eq!((st, n), (ipsec_status::IPSEC_OK, 0), "not due yet");
        let st = ipsec_sa_poll_keepalive(sa, due, ka.as_mut_ptr(), ka.len(), &mut n);
        assert_eq!((st, n), (ipsec_status::IPSEC_OK, 29));
        assert_eq!(&ka[20..28], &[0x11, 0x94, 0x11, 0x94, 0, 9, ka[26], ka[27]]);
        assert_eq!(ka[28], 0xff);
        assert_eq!(ka[9], 17);
        assert_eq!(
            ipsec_sa_next_keepalive(sa, &mut due),
            ipsec_status::IPSEC_OK
        );
        assert_eq!(due, T0 + 10_000_000_000);

        // Too small a buffer: refused, nothing written, nothing marked sent.
        let mut small = [0u8; 48];
        n = 7;
        let st = ipsec_sa_poll_keepalive(sa, due, small.as_mut_ptr(), small.len(), &mut n);
        assert_eq!(st, ipsec_status::IPSEC_ERR_BUFFER_TOO_SMALL);
        assert_eq!(n, 7);
        assert!(last_error().contains("IPSEC_NAT_KEEPALIVE_MAX_LEN"));
        // NULL arguments.
        assert_eq!(
            ipsec_sa_poll_keepalive(null_mut(), due, ka.as_mut_ptr(), ka.len(), &mut n),
            ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ipsec_sa_poll_keepalive(sa, due, null_mut(), ka.len(), &mut n),
            ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ipsec_sa_poll_keepalive(sa, due, ka.as_mut_ptr(), ka.len(), null_mut()),
            ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ipsec_sa_next_keepalive(sa, null_mut()),
            ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
        );
        ipsec_sa_free(sa);

        // Keepalives off: never due.
        c.nat_keepalive_interval = 0;
        let sa = new_sa(&c);
        assert_eq!(
            ipsec_sa_next_keepalive(sa, &mut due),
            ipsec_status::IPSEC_OK
        );
        assert_eq!(due, u64::MAX);
        ipsec_sa_free(sa);
    }
}

#[test]
fn nat_original_addresses_are_checked() {
    let mut c = config(0x1000, ipsec_direction::IPSEC_DIRECTION_INBOUND);
    c.mode = ipsec_mode::IPSEC_MODE_TRANSPORT as u32;
    c.udp_encap = true;
    (c.udp_src_port, c.udp_dst_port) = (4500, 4500);
    c.nat_original_src = c"10.0.0.5".as_ptr();
    let mut sa = null_mut();
    // SAFETY: c's pointers are valid C strings; sa writable; freed once.
    unsafe {
        assert_eq!(
            ipsec_sa_new(&c, T0, &mut sa),
            ipsec_status::IPSEC_ERR_CONFIG
        );
        assert!(
            last_error().contains("nat_original_dst"),
            "{}",
            last_error()
        );
        c.nat_original_dst = c"198.51.100.500".as_ptr();
        assert_eq!(
            ipsec_sa_new(&c, T0, &mut sa),
            ipsec_status::IPSEC_ERR_CONFIG
        );
        assert!(
            last_error().contains("nat_original_dst"),
            "{}",
            last_error()
        );
        c.nat_original_dst = c"198.51.100.2".as_ptr();
        let ok = new_sa(&c);
        ipsec_sa_free(ok);
        c.mode = ipsec_mode::IPSEC_MODE_TUNNEL as u32;
        assert_eq!(
            ipsec_sa_new(&c, T0, &mut sa),
            ipsec_status::IPSEC_ERR_CONFIG
        );
        assert!(
            last_error().contains("nat_original_addresses"),
            "{}",
            last_error()
        );
    }
}

const NATT_POLICY: &str = r#"
[[policy]]
name = "rdp"
direction = "both"
local = "10.0.0.10"
remote = "10.1.0.0/24"
action = "protect"
sa = ["out", "in"]

[[sa]]
name = "out"
spi = 4097
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "0707070707070707070707070707070707070707"
tunnel_src = "2001:db8::1"
tunnel_dst = "2001:db8::2"
udp_encap = [4500, 4500]
nat_keepalive_interval = 30

[[sa]]
name = "in"
spi = 8193
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "0808080808080808080808080808080808080808"
"#;

#[test]
fn gateway_keepalives_through_the_c_api() {
    let mut gw = null_mut();
    // SAFETY: NATT_POLICY valid; buffers valid for their capacity; freed once.
    unsafe {
        assert_eq!(
            ipsec_gateway_new(NATT_POLICY.as_ptr().cast(), NATT_POLICY.len(), T0, &mut gw),
            ipsec_status::IPSEC_OK
        );
        let mut due = 0u64;
        assert_eq!(
            ipsec_gateway_next_keepalive(gw, &mut due),
            ipsec_status::IPSEC_OK
        );
        assert_eq!(due, T0 + 30_000_000_000);
        let mut ka = [0u8; 64];
        let (mut n, mut name) = (0usize, null());
        let st =
            ipsec_gateway_poll_keepalive(gw, due, ka.as_mut_ptr(), ka.len(), &mut n, &mut name);
        assert_eq!((st, n), (ipsec_status::IPSEC_OK, 49));
        assert_eq!(c_text(name), Some("out"));
        assert_eq!((ka[0] >> 4, ka[6], ka[48]), (6, 17, 0xff));
        assert_ne!(&ka[46..48], &[0, 0], "UDP checksum over IPv6");
        let st =
            ipsec_gateway_poll_keepalive(gw, due, ka.as_mut_ptr(), ka.len(), &mut n, &mut name);
        assert_eq!((st, n), (ipsec_status::IPSEC_OK, 0));
        assert!(name.is_null());
        assert_eq!(
            ipsec_gateway_poll_keepalive(gw, due, ka.as_mut_ptr(), 10, &mut n, &mut name),
            ipsec_status::IPSEC_ERR_BUFFER_TOO_SMALL
        );
        assert_eq!(
            ipsec_gateway_poll_keepalive(gw, due, ka.as_mut_ptr(), ka.len(), &mut n, null_mut()),
            ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
        );
        ipsec_gateway_free(gw);
    }
}

/// `ipsec_sa_new(c)` must fail with `IPSEC_ERR_CONFIG` and a message starting with
/// `field` (the key name, as in the TOML files and the Python keywords).
fn refused(c: &ipsec_sa_config, field: &str) {
    let mut sa = null_mut();
    // SAFETY: c's pointers are valid; sa writable.
    let st = unsafe { ipsec_sa_new(c, T0, &mut sa) };
    assert_eq!(st, ipsec_status::IPSEC_ERR_CONFIG, "{field}");
    assert!(sa.is_null());
    let msg = last_error();
    assert!(msg.starts_with(&format!("{field}: ")), "{field}: {msg}");
}

#[test]
fn configurations_that_cannot_work_are_refused_naming_the_field() {
    let out = || config(0x1000, ipsec_direction::IPSEC_DIRECTION_OUTBOUND);

    let mut c = out();
    c.udp_encap = true;
    (c.udp_src_port, c.udp_dst_port) = (0, 4500);
    refused(&c, "udp_encap");
    (c.udp_src_port, c.udp_dst_port) = (4500, 0);
    refused(&c, "udp_encap");

    let mut c = out();
    c.soft_lifetime.bytes = 2000;
    c.hard_lifetime.bytes = 1000;
    refused(&c, "soft_lifetime.bytes");
    let mut c = out();
    c.soft_lifetime.packets = 10;
    c.hard_lifetime.packets = 10;
    refused(&c, "soft_lifetime.packets");
    let mut jittery = out();
    jittery.soft_lifetime_jitter = 101;
    refused(&jittery, "soft_lifetime_jitter");
    // 0 is "no limit" in the C struct: a soft limit under no hard one is fine.
    c.hard_lifetime.packets = 0;
    // SAFETY: freed once.
    unsafe { ipsec_sa_free(new_sa(&c)) };

    // An outbound SA has no replay window; the struct's defaults (64, 0) mean "unset".
    let mut c = out();
    c.replay_window = 1024;
    refused(&c, "replay_window");
    for default in [0, 64] {
        c.replay_window = default;
        // SAFETY: freed once.
        unsafe { ipsec_sa_free(new_sa(&c)) };
    }

    let mut c = out();
    c.tfc_pad_to = u16::MAX;
    refused(&c, "tfc_pad_to");
    c.tfc_pad_to = 65_470;
    // SAFETY: freed once.
    unsafe { ipsec_sa_free(new_sa(&c)) };

    let mut c = out();
    c.key = null();
    c.key_len = 0;
    refused(&c, "key");
    assert!(last_error().starts_with("key: missing"), "{}", last_error());
}

#[test]
fn outer_ttl_zero_is_refused_in_c_too() {
    // As in every layer: a TTL of 0 would be dropped by the first router.
    // `ipsec_sa_config_init` sets 64, which is what a packet then carries.
    let mut c = config(0x1000, ipsec_direction::IPSEC_DIRECTION_OUTBOUND);
    c.outer_ttl = 0;
    refused(&c, "outer_ttl");
    c.outer_ttl = 1;
    // SAFETY: freed once.
    unsafe { ipsec_sa_free(new_sa(&c)) };
    let sa = new_sa(&config(0x1000, ipsec_direction::IPSEC_DIRECTION_OUTBOUND));
    let mut buf = [0u8; 256];
    let (mut off, mut len) = (64, put_packet(&mut buf, 64));
    // SAFETY: buf has 256 writable bytes; sa live, freed once.
    unsafe {
        let st = ipsec_sa_encrypt(sa, buf.as_mut_ptr(), buf.len(), &mut off, &mut len, T0);
        assert_eq!(st, ipsec_status::IPSEC_OK);
        ipsec_sa_free(sa);
    }
    // The outer IPv4 header's TTL.
    assert_eq!(buf[off + 8], ipsec_core::SaConfig::DEFAULT_OUTER_TTL);
}

#[test]
fn sa_files_take_64_bit_sequence_numbers_as_strings() {
    let text = "[[sa]]\nname = \"a\"\nspi = 4096\ndirection = \"inbound\"\nmode = \"tunnel\"\n\
                cipher = \"aes-128-gcm\"\nkey = \"0707070707070707070707070707070707070707\"\n\
                esn = true\nseq = \"0x8765432100000006\"\n\
                [[sa]]\nname = \"b\"\nspi = 4097\ndirection = \"outbound\"\nmode = \"tunnel\"\n\
                cipher = \"aes-128-gcm\"\nkey = \"0808080808080808080808080808080808080808\"\n\
                tunnel_src = \"192.0.2.1\"\ntunnel_dst = \"192.0.2.2\"\n\
                hard_lifetime = { bytes = -1 }\n";
    let mut sa = null_mut();
    // SAFETY: text is valid for its length; names are NUL-terminated; sa freed once.
    unsafe {
        let st = ipsec_sa_from_toml(text.as_ptr().cast(), text.len(), c"a".as_ptr(), T0, &mut sa);
        // The file's first bad table is reported, whichever SA is asked for.
        assert_eq!(st, ipsec_status::IPSEC_ERR_CONFIG);
        assert!(
            last_error().starts_with("sa \"b\": hard_lifetime.bytes: "),
            "{}",
            last_error()
        );
        let good = &text[..text.find("hard_lifetime").unwrap()];
        let st = ipsec_sa_from_toml(good.as_ptr().cast(), good.len(), c"a".as_ptr(), T0, &mut sa);
        assert_eq!(st, ipsec_status::IPSEC_OK, "{}", last_error());
        let mut info = core::mem::MaybeUninit::uninit();
        assert_eq!(
            ipsec_sa_get_info(sa, info.as_mut_ptr()),
            ipsec_status::IPSEC_OK
        );
        assert_eq!(info.assume_init().seq, 0x8765_4321_0000_0006);
        ipsec_sa_free(sa);
    }
}

/// `n` descriptors of 60-byte packets with 64 bytes of headroom in `bufs`.
fn descriptors(bufs: &mut [[u8; 256]]) -> Vec<ipsec_packet> {
    bufs.iter_mut()
        .map(|b| {
            let length = put_packet(b, 64);
            ipsec_packet {
                buf: b.as_mut_ptr(),
                capacity: b.len(),
                offset: 64,
                length,
                status: 999,
                fragments: 7,
            }
        })
        .collect()
}

fn statuses(pkts: &[ipsec_packet]) -> Vec<u32> {
    pkts.iter().map(|p| p.status).collect()
}

const POISONED: ipsec_status = ipsec_status::IPSEC_ERR_POISONED;

#[test]
fn a_panic_poisons_the_sa_and_every_later_call_says_so() {
    let sa = new_sa(&config(0x1000, ipsec_direction::IPSEC_DIRECTION_OUTBOUND));
    let other = new_sa(&config(0x1001, ipsec_direction::IPSEC_DIRECTION_OUTBOUND));
    let mut buf = [0u8; 256];
    let (mut off, mut len) = (64, put_packet(&mut buf, 64));
    // SAFETY: buf valid for its length; out-pointers valid; each SA freed once.
    unsafe {
        // Before: a packet goes through.
        let st = ipsec_sa_encrypt(sa, buf.as_mut_ptr(), buf.len(), &mut off, &mut len, T0);
        assert_eq!(st, ipsec_status::IPSEC_OK);
        let (mut off, mut len) = (64, put_packet(&mut buf, 64));
        test_hooks::ipsec_test_panic_after(1);
        let st = ipsec_sa_encrypt(sa, buf.as_mut_ptr(), buf.len(), &mut off, &mut len, T0);
        assert_eq!(st, ipsec_status::IPSEC_ERR_PANIC);
        assert_eq!((off, len), (64, 60), "outputs written only on success");
        let msg = last_error();
        assert!(msg.contains("deliberate panic"), "{msg}");
        assert!(msg.contains("IPSEC_ERR_POISONED"), "{msg}");

        // After: every call on it answers IPSEC_ERR_POISONED, and says why.
        let mut stats = core::mem::MaybeUninit::uninit();
        let mut info = core::mem::MaybeUninit::uninit();
        let mut oh = core::mem::MaybeUninit::uninit();
        let mut ev = core::mem::MaybeUninit::uninit();
        let (mut n, mut t, mut m1, mut m2) = (0usize, 0u64, 0u32, 0u32);
        let p = buf.as_mut_ptr();
        let calls: [(&str, ipsec_status); 16] = [
            // A half-changed SA must not be carried to a standby either.
            ("snapshot_size", ipsec_sa_snapshot_size(sa, T0, &mut n)),
            ("snapshot", ipsec_sa_snapshot(sa, T0, p, 256, &mut n)),
            (
                "encrypt",
                ipsec_sa_encrypt(sa, p, 256, &mut off, &mut len, T0),
            ),
            (
                "decrypt",
                ipsec_sa_decrypt(sa, p, 256, &mut off, &mut len, T0),
            ),
            ("get_stats", ipsec_sa_get_stats(sa, stats.as_mut_ptr())),
            ("get_info", ipsec_sa_get_info(sa, info.as_mut_ptr())),
            ("overhead", ipsec_sa_overhead(sa, 60, oh.as_mut_ptr())),
            ("poll_event", ipsec_sa_poll_event(sa, T0, ev.as_mut_ptr())),
            (
                "poll_keepalive",
                ipsec_sa_poll_keepalive(sa, T0, p, 256, &mut n),
            ),
            ("next_keepalive", ipsec_sa_next_keepalive(sa, &mut t)),
            ("set_path_mtu", ipsec_sa_set_path_mtu(sa, 1400)),
            (
                "get_path_mtu",
                ipsec_sa_get_path_mtu(sa, T0, &mut m1, &mut m2),
            ),
            ("handle_icmp", ipsec_sa_handle_icmp(sa, p, 60, T0, &mut m1)),
            (
                "spares_needed",
                ipsec_sa_spares_needed(sa, p, 60, T0, &mut n),
            ),
            (
                "encrypt_fragmenting",
                ipsec_sa_encrypt_fragmenting(
                    sa,
                    p,
                    256,
                    &mut off,
                    &mut len,
                    T0,
                    null_mut(),
                    0,
                    &mut n,
                ),
            ),
            (
                "too_big_reply",
                ipsec_sa_too_big_reply(sa, p, 60, c"192.0.2.1".as_ptr(), T0, p, 256, &mut n),
            ),
        ];
        for (name, st) in calls {
            assert_eq!(st, POISONED, "{name}");
        }
        assert!(last_error().contains("panic"), "{}", last_error());
        let mut bufs = [[0u8; 256]; 2];
        let mut pkts = descriptors(&mut bufs);
        assert_eq!(ipsec_sa_encrypt_burst(sa, pkts.as_mut_ptr(), 2, T0), 0);
        assert_eq!(statuses(&pkts), [POISONED as u32; 2]);
        assert_eq!(ipsec_sa_decrypt_burst(sa, pkts.as_mut_ptr(), 2, T0), 0);
        assert_eq!(statuses(&pkts), [POISONED as u32; 2]);
        let n =
            ipsec_sa_encrypt_burst_fragmenting(sa, pkts.as_mut_ptr(), 2, T0, null_mut(), 0, &mut n);
        assert_eq!(n, 0);
        assert_eq!(statuses(&pkts), [POISONED as u32; 2]);

        // Another SA is not affected; the poisoned one is freed as usual.
        let (mut off, mut len) = (64, put_packet(&mut buf, 64));
        let st = ipsec_sa_encrypt(other, buf.as_mut_ptr(), 256, &mut off, &mut len, T0);
        assert_eq!(st, ipsec_status::IPSEC_OK);
        ipsec_sa_free(sa);
        ipsec_sa_free(other);
    }
}

#[test]
fn a_burst_that_panics_part_way_reports_what_it_did() {
    let sa = new_sa(&config(0x1000, ipsec_direction::IPSEC_DIRECTION_OUTBOUND));
    let mut bufs = [[0u8; 256]; 5];
    let mut pkts = descriptors(&mut bufs);
    // SAFETY: every descriptor is valid for its buffer; sa freed once.
    unsafe {
        test_hooks::ipsec_test_panic_after(3);
        let ok = ipsec_sa_encrypt_burst(sa, pkts.as_mut_ptr(), pkts.len(), T0);
        assert_eq!(ok, 2, "the two packets before the panic");
        let (ok_, panic, poisoned) = (
            ipsec_status::IPSEC_OK as u32,
            ipsec_status::IPSEC_ERR_PANIC as u32,
            POISONED as u32,
        );
        assert_eq!(statuses(&pkts), [ok_, ok_, panic, poisoned, poisoned]);
        // The first two were encrypted (ESP in front), the last two left alone.
        let spans: Vec<(usize, usize)> = pkts.iter().map(|p| (p.offset, p.length)).collect();
        assert!(spans[0].0 < 64 && spans[0].1 > 60, "{spans:?}");
        assert_eq!(spans[0], spans[1]);
        assert_eq!(&spans[3..], [(64, 60), (64, 60)]);
        assert!(last_error().contains("deliberate panic"));
        let mut info = core::mem::MaybeUninit::uninit();
        assert_eq!(ipsec_sa_get_info(sa, info.as_mut_ptr()), POISONED);
        ipsec_sa_free(sa);

        // The fragmenting burst: the same report, and the spares the packets before
        // the panic used (none: they fit).
        let sa = new_sa(&config(0x1000, ipsec_direction::IPSEC_DIRECTION_OUTBOUND));
        let mut bufs = [[0u8; 256]; 3];
        let mut pkts = descriptors(&mut bufs);
        let mut used = 99usize;
        test_hooks::ipsec_test_panic_after(2);
        let ok = ipsec_sa_encrypt_burst_fragmenting(
            sa,
            pkts.as_mut_ptr(),
            3,
            T0,
            null_mut(),
            0,
            &mut used,
        );
        assert_eq!((ok, used), (1, 0));
        assert_eq!(statuses(&pkts), [ok_, panic, poisoned]);
        assert_eq!(pkts.iter().map(|p| p.fragments).collect::<Vec<_>>(), [0; 3]);
        ipsec_sa_free(sa);
    }
}

#[test]
fn every_kind_of_handle_is_poisoned_by_a_panic_while_in_use() {
    use crate::handle::{borrow, borrow_mut};
    /// A panic inside an entry point while `h` is borrowed (as C cannot cause one).
    fn panic_with<T>(use_it: impl FnOnce() -> T) {
        let st: ipsec_status = boundary(|| {
            let _borrowed = use_it();
            panic!("deliberate test panic")
        });
        assert_eq!(st, ipsec_status::IPSEC_ERR_PANIC);
    }
    // SAFETY: every handle is live until freed once at the end; out-pointers valid.
    unsafe {
        let mut spd = null_mut();
        let st = ipsec_spd_from_toml(POLICY.as_ptr().cast(), POLICY.len(), &mut spd);
        assert_eq!(st, ipsec_status::IPSEC_OK);
        let (mut lint, mut fw) = (null_mut(), null_mut());
        assert_eq!(ipsec_spd_lint(spd, &mut lint), ipsec_status::IPSEC_OK);
        assert_eq!(
            ipsec_spd_firewall_openings(spd, &mut fw),
            ipsec_status::IPSEC_OK
        );
        let mut gw = null_mut();
        let st = ipsec_gateway_new(POLICY.as_ptr().cast(), POLICY.len(), T0, &mut gw);
        assert_eq!(st, ipsec_status::IPSEC_OK);
        let mut w = null_mut();
        assert_eq!(
            ipsec_replay_window_new(64, false, &mut w),
            ipsec_status::IPSEC_OK
        );
        let mut r = null_mut();
        assert_eq!(
            ipsec_reassembler_new(null(), &mut r),
            ipsec_status::IPSEC_OK
        );
        assert!(ipsec_lint_count(lint) > 0 && ipsec_firewall_count(fw) > 0);
        assert_eq!(ipsec_gateway_sa_count(gw), 2);

        // A shared (const) handle is poisoned too: it may be half-built.
        panic_with(|| borrow(spd, "spd").ok());
        panic_with(|| borrow(lint, "lint").ok());
        panic_with(|| borrow(fw, "firewall").ok());
        panic_with(|| borrow_mut(gw, "gateway").ok());
        panic_with(|| borrow_mut(w, "window").ok());
        panic_with(|| borrow_mut(r, "reassembler").ok());

        let mut pkt = [0u8; 60];
        put_packet(&mut pkt, 0);
        let mut decision = core::mem::MaybeUninit::uninit();
        let mut stats = core::mem::MaybeUninit::uninit();
        let (mut n, mut highest) = (0usize, 0u64);
        let mut out_lint = null_mut();
        let outbound = ipsec_direction::IPSEC_DIRECTION_OUTBOUND as u32;
        let calls: [(&str, ipsec_status); 7] = [
            (
                "spd_lookup_packet",
                ipsec_spd_lookup_packet(spd, outbound, pkt.as_ptr(), 60, decision.as_mut_ptr()),
            ),
            ("spd_lint", ipsec_spd_lint(spd, &mut out_lint)),
            (
                "gateway_get_stats",
                ipsec_gateway_get_stats(gw, stats.as_mut_ptr()),
            ),
            ("replay_window_check", ipsec_replay_window_check(w, 5)),
            ("replay_window_accept", ipsec_replay_window_accept(w, 5)),
            (
                "replay_window_highest",
                ipsec_replay_window_highest(w, &mut highest),
            ),
            (
                "reassembler_expire",
                ipsec_reassembler_expire(r, T0, &mut n),
            ),
        ];
        for (name, st) in calls {
            assert_eq!(st, POISONED, "{name}");
        }
        assert!(out_lint.is_null(), "no output on failure");
        // Counts cannot answer a status: 0, with the last error saying why.
        assert_eq!(ipsec_lint_count(lint), 0);
        assert_eq!(ipsec_firewall_count(fw), 0);
        assert_eq!(ipsec_gateway_sa_count(gw), 0);
        assert!(last_error().contains("panic"), "{}", last_error());

        ipsec_lint_free(lint);
        ipsec_firewall_free(fw);
        ipsec_spd_free(spd);
        ipsec_gateway_free(gw);
        ipsec_replay_window_free(w);
        ipsec_reassembler_free(r);
    }
}

#[test]
fn snapshot_and_restore_as_c_calls_them() {
    let out = new_sa(&config(0x2000, ipsec_direction::IPSEC_DIRECTION_OUTBOUND));
    let mut buf = [0u8; 256];
    // SAFETY: every pointer is valid for the length given; each SA freed once.
    unsafe {
        for _ in 0..3 {
            let (mut off, mut len) = (64, put_packet(&mut buf, 64));
            let st = ipsec_sa_encrypt(out, buf.as_mut_ptr(), 256, &mut off, &mut len, T0);
            assert_eq!(st, ipsec_status::IPSEC_OK);
        }
        let mut need = 0usize;
        assert_eq!(
            ipsec_sa_snapshot_size(out, T0, &mut need),
            ipsec_status::IPSEC_OK
        );
        let mut snap = vec![0u8; need];
        let mut len = 12345usize;
        // Too small: nothing written.
        assert_eq!(
            ipsec_sa_snapshot(out, T0, snap.as_mut_ptr(), need - 1, &mut len),
            ipsec_status::IPSEC_ERR_BUFFER_TOO_SMALL
        );
        assert_eq!(len, 12345);
        assert!(last_error().contains("ipsec_sa_snapshot_size"));
        assert_eq!(
            ipsec_sa_snapshot(out, T0, null_mut(), need, &mut len),
            ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ipsec_sa_snapshot(out, T0, snap.as_mut_ptr(), need, &mut len),
            ipsec_status::IPSEC_OK
        );
        assert_eq!(len, need);

        let mut opts = core::mem::MaybeUninit::uninit();
        assert_eq!(
            ipsec_restore_options_init(opts.as_mut_ptr()),
            ipsec_status::IPSEC_OK
        );
        let mut opts = opts.assume_init();
        assert_eq!(opts.seq_margin, IPSEC_DEFAULT_SEQ_MARGIN);
        opts.seq_margin = 10;
        let mut restored = null_mut();
        assert_eq!(
            ipsec_sa_restore(snap.as_ptr(), len, &opts, T0, &mut restored),
            ipsec_status::IPSEC_OK
        );
        let mut info = core::mem::MaybeUninit::uninit();
        assert_eq!(
            ipsec_sa_get_info(restored, info.as_mut_ptr()),
            ipsec_status::IPSEC_OK
        );
        assert_eq!(info.assume_init().seq, 13);
        assert_eq!(stats(restored).packets, 3);
        ipsec_sa_free(restored);

        // Refused restores: typed statuses, nothing written.
        let mut untouched = null_mut();
        opts.not_below = 14;
        assert_eq!(
            ipsec_sa_restore(snap.as_ptr(), len, &opts, T0, &mut untouched),
            ipsec_status::IPSEC_ERR_SNAPSHOT_REFUSED
        );
        assert!(last_error().contains("14 was already used"));
        opts.not_below = 0;
        opts.seq_margin = u64::MAX;
        assert_eq!(
            ipsec_sa_restore(snap.as_ptr(), len, &opts, T0, &mut untouched),
            ipsec_status::IPSEC_ERR_SNAPSHOT_REFUSED
        );
        opts.seq_margin = 1;
        opts.reserved[3] = 1;
        assert_eq!(
            ipsec_sa_restore(snap.as_ptr(), len, &opts, T0, &mut untouched),
            ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ipsec_sa_restore(snap.as_ptr(), len - 1, null(), T0, &mut untouched),
            ipsec_status::IPSEC_ERR_BAD_SNAPSHOT
        );
        assert!(last_error().contains("truncated"));
        snap[0] = b'x';
        assert_eq!(
            ipsec_sa_restore(snap.as_ptr(), len, null(), T0, &mut untouched),
            ipsec_status::IPSEC_ERR_BAD_SNAPSHOT
        );
        assert_eq!(
            ipsec_sa_restore(snap.as_ptr(), len, null(), T0, null_mut()),
            ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
        );
        assert!(untouched.is_null());
        ipsec_sa_free(out);
    }
}

#[test]
fn control_errors_have_one_status_each() {
    use ipsec_core::{ConfigError, ControlError};
    let s = |x: &str| x.to_string();
    let cases = [
        (
            ControlError::DuplicateName { name: s("a") },
            230,
            "IPSEC_ERR_DUPLICATE_NAME",
        ),
        (
            ControlError::DuplicateSpi {
                spi: 0x1000,
                sa: s("a"),
            },
            231,
            "IPSEC_ERR_DUPLICATE_SPI",
        ),
        (
            ControlError::UnknownSa { name: s("a") },
            232,
            "IPSEC_ERR_UNKNOWN_SA",
        ),
        (
            ControlError::SaInUse {
                sa: s("a"),
                policy: s("p"),
            },
            233,
            "IPSEC_ERR_SA_IN_USE",
        ),
        (
            ControlError::MissingSa {
                policy: s("p"),
                sa: s("a"),
            },
            234,
            "IPSEC_ERR_MISSING_SA",
        ),
        (
            ControlError::DirectionMismatch {
                sa: s("b"),
                replaces: s("a"),
            },
            235,
            "IPSEC_ERR_DIRECTION_MISMATCH",
        ),
        (
            ControlError::DuplicatePolicy { name: s("p") },
            236,
            "IPSEC_ERR_DUPLICATE_POLICY",
        ),
        (
            ControlError::UnknownPolicy { name: s("p") },
            237,
            "IPSEC_ERR_UNKNOWN_POLICY",
        ),
        (ControlError::StalePolicies, 238, "IPSEC_ERR_STALE_POLICIES"),
        (
            ControlError::Config(ConfigError::new("key", "too short")),
            200,
            "IPSEC_ERR_CONFIG",
        ),
    ];
    for (e, number, name) in cases {
        assert_eq!(ipsec_status::of_control(&e) as u32, number, "{e:?}");
        // SAFETY: ipsec_status_str returns static NUL-terminated strings.
        let text = unsafe { CStr::from_ptr(ipsec_status_str(number)) }
            .to_str()
            .unwrap();
        assert!(text.starts_with(&format!("{name}: ")), "{text}");
    }
}

/// An AES-128-GCM tunnel SA config with its own key (an installed SA's key is refused).
fn keyed(spi: u32, direction: ipsec_direction, key: &[u8; 20]) -> ipsec_sa_config {
    let mut c = config(spi, direction);
    c.key = key.as_ptr();
    c
}

/// The names `ipsec_gateway_get_sa` lists, sorted.
fn gateway_sa_names(gw: *const ipsec_gateway) -> Vec<&'static str> {
    // SAFETY: gw is live for the caller.
    let n = unsafe { ipsec_gateway_sa_count(gw) };
    let mut names: Vec<&str> = (0..n)
        .map(|i| {
            let mut e = core::mem::MaybeUninit::uninit();
            // SAFETY: gw is live; e is writable.
            let st = unsafe { ipsec_gateway_get_sa(gw, i, e.as_mut_ptr()) };
            assert_eq!(st, ipsec_status::IPSEC_OK);
            // SAFETY: written on success.
            c_text(unsafe { e.assume_init() }.name).unwrap()
        })
        .collect();
    names.sort_unstable();
    names
}

#[test]
fn gateway_control_calls_keep_names_coherent_and_refusals_change_nothing() {
    use ipsec_core::ControlError;
    use ipsec_direction::{IPSEC_DIRECTION_INBOUND as IN, IPSEC_DIRECTION_OUTBOUND as OUT};
    use ipsec_status::*;
    const DENY: &str = "[[policy]]\nname = \"deny\"\naction = \"discard\"\n";
    let (k1, k2, k3, k4) = ([1u8; 20], [2u8; 20], [3u8; 20], [4u8; 20]);
    let mut gw = null_mut();
    // SAFETY: DENY valid for its length; every pointer below is valid for its call;
    // name strings are read only while the gateway promises them (see ipsec_gateway).
    unsafe {
        assert_eq!(
            ipsec_gateway_new(DENY.as_ptr().cast(), DENY.len(), T0, &mut gw),
            IPSEC_OK
        );
        assert_eq!(ipsec_gateway_sa_count(gw), 0);
        let add = |name: &CStr, c: &ipsec_sa_config| ipsec_gateway_add_sa(gw, name.as_ptr(), c, T0);
        assert_eq!(add(c"out", &keyed(0x1000, OUT, &k1)), IPSEC_OK);
        assert_eq!(add(c"in", &keyed(0x2000, IN, &k2)), IPSEC_OK);
        assert_eq!(gateway_sa_names(gw), ["in", "out"]);

        // Refused: the status of its reason, the core's message, nothing changed.
        assert_eq!(
            add(c"in", &keyed(0x3000, IN, &k3)),
            IPSEC_ERR_DUPLICATE_NAME
        );
        let want = ControlError::DuplicateName { name: "in".into() };
        assert_eq!(last_error(), want.to_string());
        assert_eq!(add(c"dup", &keyed(0x3000, IN, &k1)), IPSEC_ERR_CONFIG);
        assert!(last_error().contains("sa \"out\""), "{}", last_error());
        assert_eq!(add(c"", &keyed(0x3000, IN, &k3)), IPSEC_ERR_CONFIG);
        assert_eq!(gateway_sa_names(gw), ["in", "out"]);

        let rdp = c"name = \"rdp\"\nremote = \"10.1.0.0/24\"\naction = \"protect\"\nsa = [\"out\", \"in\"]\n";
        assert_eq!(
            ipsec_gateway_install_policy(gw, rdp.as_ptr(), c"deny".as_ptr()),
            IPSEC_OK
        );
        assert_eq!(
            ipsec_gateway_delete_sa(gw, c"in".as_ptr(), null_mut()),
            IPSEC_ERR_SA_IN_USE
        );
        let want = ControlError::SaInUse {
            sa: "in".into(),
            policy: "rdp".into(),
        };
        assert_eq!(last_error(), want.to_string());

        // Make-before-break on the inbound side, then the old SA goes.
        let c3 = keyed(0x3000, IN, &k3);
        assert_eq!(
            ipsec_gateway_rekey_sa(gw, c"in".as_ptr(), c"in-2".as_ptr(), &c3, T0),
            IPSEC_OK
        );
        assert_eq!(gateway_sa_names(gw), ["in", "in-2", "out"]);
        let old = (0..ipsec_gateway_sa_count(gw))
            .map(|i| {
                let mut e = core::mem::MaybeUninit::uninit();
                assert_eq!(ipsec_gateway_get_sa(gw, i, e.as_mut_ptr()), IPSEC_OK);
                e.assume_init().name
            })
            .find(|&p| c_text(p) == Some("in"))
            .unwrap();
        // A misaligned final_stats is refused before anything is done.
        let mut raw = [0u64; 40];
        let misaligned = raw.as_mut_ptr().cast::<u8>().wrapping_add(1).cast();
        assert_eq!(
            ipsec_gateway_delete_sa(gw, c"in".as_ptr(), misaligned),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(ipsec_gateway_sa_count(gw), 3);
        let mut st = core::mem::MaybeUninit::<ipsec_sa_stats>::uninit();
        assert_eq!(
            ipsec_gateway_delete_sa(gw, c"in".as_ptr(), st.as_mut_ptr()),
            IPSEC_OK
        );
        assert_eq!(st.assume_init().packets, 0);
        assert_eq!(gateway_sa_names(gw), ["in-2", "out"]);
        // The deleted SA's string stays valid until the next control call that
        // succeeds; a refused one does not free it.
        assert_eq!(c_text(old), Some("in"));
        assert_eq!(
            ipsec_gateway_delete_sa(gw, c"in".as_ptr(), null_mut()),
            IPSEC_ERR_UNKNOWN_SA
        );
        assert_eq!(c_text(old), Some("in"));

        // A retired SA leaves the list when poll_event deletes it at its time.
        assert_eq!(add(c"spare", &keyed(0x4000, IN, &k4)), IPSEC_OK);
        assert_eq!(
            ipsec_gateway_retire_sa(gw, c"spare".as_ptr(), T0 + 10),
            IPSEC_OK
        );
        let mut ev = core::mem::MaybeUninit::uninit();
        assert_eq!(
            ipsec_gateway_poll_event(gw, T0 + 9, ev.as_mut_ptr()),
            IPSEC_OK
        );
        assert_eq!(gateway_sa_names(gw), ["in-2", "out", "spare"]);
        assert_eq!(
            ipsec_gateway_poll_event(gw, T0 + 10, ev.as_mut_ptr()),
            IPSEC_OK
        );
        assert_eq!(gateway_sa_names(gw), ["in-2", "out"]);
        assert_eq!(
            ipsec_gateway_retire_sa(gw, c"spare".as_ptr(), T0 + 20),
            IPSEC_ERR_UNKNOWN_SA
        );

        // Policies: removed, then the SAs may go.
        assert_eq!(ipsec_gateway_remove_policy(gw, c"rdp".as_ptr()), IPSEC_OK);
        assert_eq!(
            ipsec_gateway_remove_policy(gw, c"rdp".as_ptr()),
            IPSEC_ERR_UNKNOWN_POLICY
        );
        assert_eq!(
            last_error(),
            ControlError::UnknownPolicy { name: "rdp".into() }.to_string()
        );
        for name in [c"in-2", c"out"] {
            assert_eq!(
                ipsec_gateway_delete_sa(gw, name.as_ptr(), null_mut()),
                IPSEC_OK
            );
        }
        assert_eq!(ipsec_gateway_sa_count(gw), 0);
        ipsec_gateway_free(gw);
    }
}

fn lane_stats(lane: *const ipsec_sa_lane) -> ipsec_sa_stats {
    let mut s = core::mem::MaybeUninit::uninit();
    // SAFETY: lane is live; s is writable.
    let st = unsafe { ipsec_sa_lane_get_stats(lane, s.as_mut_ptr()) };
    assert_eq!(st, ipsec_status::IPSEC_OK);
    // SAFETY: written on success.
    unsafe { s.assume_init() }
}

fn shared_stats(shared: *const ipsec_shared_sa) -> ipsec_sa_stats {
    let mut s = core::mem::MaybeUninit::uninit();
    // SAFETY: shared is live; s is writable.
    let st = unsafe { ipsec_shared_sa_get_stats(shared, s.as_mut_ptr()) };
    assert_eq!(st, ipsec_status::IPSEC_OK);
    // SAFETY: written on success.
    unsafe { s.assume_init() }
}

#[test]
fn shared_sa_lanes_lease_sequence_numbers_and_share_one_replay_window() {
    use ipsec_direction::{IPSEC_DIRECTION_INBOUND as IN, IPSEC_DIRECTION_OUTBOUND as OUT};
    use ipsec_status::*;
    let mut shared = null_mut();
    let mut lanes = [null_mut(); 2];
    // SAFETY: every pointer is valid for its call; each handle is freed once.
    unsafe {
        assert_eq!(
            ipsec_shared_sa_new(
                &config(0x4242, OUT),
                2,
                2,
                T0,
                &mut shared,
                lanes.as_mut_ptr()
            ),
            IPSEC_OK
        );
        assert_eq!(ipsec_shared_sa_seq(shared), 0);
        // Three packets per lane, interleaved, blocks of 2: lane 0 sends 1, 2, 5 (of 5-6),
        // lane 1 3, 4, 7 (of 7-8); 6 and 8 are leased, unsent.
        let mut wire = Vec::new();
        for i in 0..6 {
            let mut buf = [0u8; 256];
            let mut len = put_packet(&mut buf, 64);
            let mut off = 64;
            let lane = lanes[i % 2];
            let st =
                ipsec_sa_lane_encrypt(lane, buf.as_mut_ptr(), buf.len(), &mut off, &mut len, T0);
            assert_eq!(st, IPSEC_OK);
            wire.push((buf, off, len));
        }
        let seq = |w: &([u8; 256], usize, usize)| {
            u32::from_be_bytes(w.0[w.1 + 24..w.1 + 28].try_into().unwrap())
        };
        let seqs: Vec<u32> = wire.iter().map(seq).collect();
        assert_eq!(seqs, [1, 3, 2, 4, 5, 7]);
        assert_eq!(ipsec_shared_sa_seq(shared), 8);
        assert_eq!(lane_stats(lanes[0]).packets, 3);
        // Published at each lease only (before the block's packets).
        assert!(shared_stats(shared).packets < 6);
        assert_eq!(ipsec_sa_lane_publish(lanes[0]), IPSEC_OK);
        assert_eq!(ipsec_sa_lane_publish(lanes[1]), IPSEC_OK);
        assert_eq!(shared_stats(shared).packets, 6);
        let mut ev = core::mem::MaybeUninit::uninit();
        assert_eq!(
            ipsec_sa_lane_poll_event(lanes[0], T0, ev.as_mut_ptr()),
            IPSEC_OK
        );
        assert_eq!(
            ev.assume_init().kind,
            ipsec_event_kind::IPSEC_EVENT_NONE as u32
        );
        // A lane is an outbound SA: decrypt is the wrong direction (counted).
        let (mut buf, mut off, mut len) = wire[0];
        assert_eq!(
            ipsec_sa_lane_decrypt(
                lanes[0],
                buf.as_mut_ptr(),
                buf.len(),
                &mut off,
                &mut len,
                T0
            ),
            IPSEC_ERR_WRONG_DIRECTION
        );
        // The shared part first, then the lanes: any order.
        ipsec_shared_sa_free(shared);
        ipsec_sa_lane_free(lanes[0]);
        ipsec_sa_lane_free(lanes[1]);

        // Inbound: two lanes, each given every packet: each accepted exactly once.
        let mut rx = null_mut();
        let mut rl = [null_mut(); 2];
        assert_eq!(
            ipsec_shared_sa_new(&config(0x4242, IN), 2, 0, T0, &mut rx, rl.as_mut_ptr()),
            IPSEC_OK
        );
        let mut accepted = 0;
        for w in &wire {
            for &lane in &rl {
                let (mut buf, mut off, mut len) = *w;
                match ipsec_sa_lane_decrypt(
                    lane,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut off,
                    &mut len,
                    T0,
                ) {
                    IPSEC_OK => accepted += 1,
                    st => assert_eq!(st, IPSEC_ERR_REPLAY),
                }
            }
        }
        assert_eq!(accepted, 6);
        assert_eq!(ipsec_shared_sa_seq(rx), 7);
        // Lanes publish when freed: free them first, then read the sum.
        ipsec_sa_lane_free(rl[0]);
        ipsec_sa_lane_free(rl[1]);
        let sum = shared_stats(rx);
        assert_eq!((sum.packets, sum.replay), (6, 6));
        ipsec_shared_sa_free(rx);
    }
}

#[test]
fn shared_sa_arguments_are_checked() {
    use ipsec_direction::IPSEC_DIRECTION_OUTBOUND as OUT;
    use ipsec_status::*;
    let c = config(0x4242, OUT);
    let mut shared = null_mut();
    let mut lanes = [null_mut(); 2];
    // SAFETY: pointers valid or NULL as each case says; nothing is created.
    unsafe {
        assert_eq!(
            ipsec_shared_sa_new(&c, 0, 0, T0, &mut shared, lanes.as_mut_ptr()),
            IPSEC_ERR_CONFIG
        );
        assert!(last_error().contains("lanes"), "{}", last_error());
        assert_eq!(
            ipsec_shared_sa_new(&c, 2, 2048, T0, &mut shared, lanes.as_mut_ptr()),
            IPSEC_ERR_CONFIG
        );
        assert!(last_error().contains("block"), "{}", last_error());
        assert_eq!(
            ipsec_shared_sa_new(null(), 2, 0, T0, &mut shared, lanes.as_mut_ptr()),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ipsec_shared_sa_new(&c, 2, 0, T0, null_mut(), lanes.as_mut_ptr()),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ipsec_shared_sa_new(&c, 2, 0, T0, &mut shared, null_mut()),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ipsec_shared_sa_new(&c, usize::MAX, 0, T0, &mut shared, lanes.as_mut_ptr()),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        assert!(shared.is_null() && lanes.iter().all(|l| l.is_null()));
        assert_eq!(ipsec_shared_sa_seq(null()), 0);
        let mut s = core::mem::MaybeUninit::uninit();
        assert_eq!(
            ipsec_shared_sa_get_stats(null(), s.as_mut_ptr()),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ipsec_sa_lane_get_stats(null(), s.as_mut_ptr()),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ipsec_sa_lane_publish(null_mut()),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        let (mut off, mut len) = (0usize, 0usize);
        let mut buf = [0u8; 8];
        assert_eq!(
            ipsec_sa_lane_encrypt(null_mut(), buf.as_mut_ptr(), 8, &mut off, &mut len, T0),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        ipsec_shared_sa_free(null_mut());
        ipsec_sa_lane_free(null_mut());
    }
}

/// The status and the policy string of the outbound verdict of a TCP packet
/// 10.0.0.10:3389 -> 10.1.0.7:50000 under `POLICY` (NULL when refused).
fn rdp_outbound_raw(gw: *mut ipsec_gateway) -> (ipsec_status, *const c_char) {
    let mut buf = [0u8; 200];
    buf[64..84].copy_from_slice(&[
        0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 10, 10, 1, 0, 7,
    ]);
    buf[84..88].copy_from_slice(&[0x0d, 0x3d, 0xc3, 0x50]);
    buf[96] = 0x50;
    let (mut off, mut len) = (64usize, 40usize);
    let mut r = core::mem::MaybeUninit::<ipsec_gateway_result>::uninit();
    // SAFETY: gw is live; the buffer and out-pointers are valid.
    let st = unsafe {
        ipsec_gateway_outbound(
            gw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut off,
            &mut len,
            T0,
            r.as_mut_ptr(),
        )
    };
    if st != ipsec_status::IPSEC_OK {
        return (st, null());
    }
    // SAFETY: written on success.
    (st, unsafe { r.assume_init() }.policy)
}

/// [`rdp_outbound_raw`] with the policy's name.
fn rdp_outbound(gw: *mut ipsec_gateway) -> (ipsec_status, Option<&'static str>) {
    let (st, p) = rdp_outbound_raw(gw);
    (st, c_text(p))
}

#[test]
fn policy_edits_compile_apart_and_commit_or_are_refused_as_stale() {
    use ipsec_status::*;
    let bypass = c"name = \"rdp-clear\"\nlocal = \"10.0.0.10\"\nprotocol = \"tcp\"\nlocal_port = 3389\naction = \"bypass\"\n";
    let mut gw = null_mut();
    let mut other = null_mut();
    // SAFETY: every pointer is valid for its call; each handle is freed or consumed once;
    // name strings are read while the gateway promises them.
    unsafe {
        assert_eq!(
            ipsec_gateway_new(POLICY.as_ptr().cast(), POLICY.len(), T0, &mut gw),
            IPSEC_OK
        );
        assert_eq!(
            ipsec_gateway_new(POLICY.as_ptr().cast(), POLICY.len(), T0, &mut other),
            IPSEC_OK
        );
        assert_eq!(rdp_outbound(gw), (IPSEC_OK, Some("rdp")));
        let old_rdp = rdp_outbound_raw(gw).1;

        let mut edit = null_mut();
        assert_eq!(ipsec_gateway_edit_policies(gw, &mut edit), IPSEC_OK);
        assert_eq!(ipsec_policy_edit_count(edit), 2);
        assert_eq!(
            ipsec_policy_edit_install(edit, bypass.as_ptr(), c"rdp".as_ptr()),
            IPSEC_OK
        );
        assert_eq!(ipsec_policy_edit_remove(edit, c"rdp".as_ptr()), IPSEC_OK);
        // Refused edit calls change nothing in the edit.
        assert_eq!(
            ipsec_policy_edit_remove(edit, c"rdp".as_ptr()),
            IPSEC_ERR_UNKNOWN_POLICY
        );
        assert_eq!(
            ipsec_policy_edit_install(edit, bypass.as_ptr(), null()),
            IPSEC_ERR_DUPLICATE_POLICY
        );
        let missing = c"name = \"x\"\naction = \"protect\"\nsa = [\"nope\", \"in\"]\n";
        assert_eq!(
            ipsec_policy_edit_install(edit, missing.as_ptr(), null()),
            IPSEC_ERR_MISSING_SA
        );
        assert_eq!(
            ipsec_policy_edit_replace(edit, c"name = \"zz\"\naction = \"bypass\"\n".as_ptr()),
            IPSEC_ERR_UNKNOWN_POLICY
        );
        assert_eq!(ipsec_policy_edit_count(edit), 2);
        let mut compiled = null_mut();
        assert_eq!(ipsec_policy_edit_compile(edit, &mut compiled), IPSEC_OK);
        // Not yet committed: the gateway is unchanged.
        assert_eq!(rdp_outbound(gw), (IPSEC_OK, Some("rdp")));
        // Committed to another gateway: refused, consumed.
        assert_eq!(
            ipsec_gateway_commit_policies(other, compiled, null_mut()),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(rdp_outbound(other), (IPSEC_OK, Some("rdp")));

        // Again, this time on the right gateway.
        assert_eq!(ipsec_gateway_edit_policies(gw, &mut edit), IPSEC_OK);
        let mut stale_edit = null_mut();
        assert_eq!(ipsec_gateway_edit_policies(gw, &mut stale_edit), IPSEC_OK);
        assert_eq!(
            ipsec_policy_edit_install(edit, bypass.as_ptr(), c"rdp".as_ptr()),
            IPSEC_OK
        );
        assert_eq!(ipsec_policy_edit_compile(edit, &mut compiled), IPSEC_OK);
        // The replaced policies come back, to be freed after the gateway's lock.
        let mut retired: *mut ipsec_retired_policies = null_mut();
        assert_eq!(
            ipsec_gateway_commit_policies(gw, compiled, &mut retired),
            IPSEC_OK
        );
        assert!(!retired.is_null());
        ipsec_retired_policies_free(retired);
        ipsec_retired_policies_free(null_mut());
        assert_eq!(rdp_outbound(gw).0, IPSEC_OK);
        let clear = rdp_outbound_raw(gw).1;
        assert_eq!(c_text(clear), Some("rdp-clear"));
        // "rdp" is still installed: its string is the same one.
        assert_eq!(c_text(old_rdp), Some("rdp"));

        // The other edit was taken before that commit: stale, nothing changed.
        assert_eq!(
            ipsec_policy_edit_remove(stale_edit, c"rdp".as_ptr()),
            IPSEC_OK
        );
        assert_eq!(
            ipsec_policy_edit_compile(stale_edit, &mut compiled),
            IPSEC_OK
        );
        assert_eq!(
            ipsec_gateway_commit_policies(gw, compiled, null_mut()),
            IPSEC_ERR_STALE_POLICIES
        );
        assert_eq!(
            last_error(),
            ipsec_core::ControlError::StalePolicies.to_string()
        );
        assert_eq!(rdp_outbound(gw).1, Some("rdp-clear"));

        // Consumed arguments: NULL refused; a consumed edit even when `out` is NULL.
        assert_eq!(
            ipsec_gateway_commit_policies(gw, null_mut(), null_mut()),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ipsec_policy_edit_compile(null_mut(), &mut compiled),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(ipsec_gateway_edit_policies(gw, &mut edit), IPSEC_OK);
        assert_eq!(
            ipsec_policy_edit_compile(edit, null_mut()),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(ipsec_gateway_edit_policies(gw, &mut edit), IPSEC_OK);
        assert_eq!(ipsec_policy_edit_compile(edit, &mut compiled), IPSEC_OK);
        assert_eq!(
            ipsec_gateway_commit_policies(null_mut(), compiled, null_mut()),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ipsec_gateway_edit_policies(null(), &mut edit),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ipsec_gateway_edit_policies(gw, null_mut()),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        // Freed unused.
        assert_eq!(ipsec_gateway_edit_policies(gw, &mut edit), IPSEC_OK);
        ipsec_policy_edit_free(edit);
        assert_eq!(ipsec_gateway_edit_policies(gw, &mut edit), IPSEC_OK);
        assert_eq!(ipsec_policy_edit_compile(edit, &mut compiled), IPSEC_OK);
        ipsec_compiled_policies_free(compiled);
        ipsec_policy_edit_free(null_mut());
        ipsec_compiled_policies_free(null_mut());

        // A commit that removes a policy: its string lives until the next control call.
        assert_eq!(ipsec_gateway_edit_policies(gw, &mut edit), IPSEC_OK);
        assert_eq!(
            ipsec_policy_edit_remove(edit, c"rdp-clear".as_ptr()),
            IPSEC_OK
        );
        assert_eq!(ipsec_policy_edit_compile(edit, &mut compiled), IPSEC_OK);
        assert_eq!(
            ipsec_gateway_commit_policies(gw, compiled, null_mut()),
            IPSEC_OK
        );
        assert_eq!(c_text(clear), Some("rdp-clear"));
        assert_eq!(rdp_outbound(gw), (IPSEC_OK, Some("rdp")));

        // Net name changes of a batch: a policy removed and installed again keeps its
        // name string (its name never left); one installed and removed leaves none (the
        // unit-test build checks the name cache against the policies after each commit).
        let rdp_string = rdp_outbound_raw(gw).1;
        let rdp = c"name = \"rdp\"\ndirection = \"both\"\nlocal = \"10.0.0.10\"\nremote = \"10.1.0.0/24\"\nprotocol = \"tcp\"\nlocal_port = 3389\naction = \"protect\"\nsa = [\"out\", \"in\"]\n";
        assert_eq!(ipsec_gateway_edit_policies(gw, &mut edit), IPSEC_OK);
        assert_eq!(ipsec_policy_edit_remove(edit, c"rdp".as_ptr()), IPSEC_OK);
        assert_eq!(
            ipsec_policy_edit_install(edit, rdp.as_ptr(), c"rest".as_ptr()),
            IPSEC_OK
        );
        assert_eq!(
            ipsec_policy_edit_install(edit, bypass.as_ptr(), null()),
            IPSEC_OK
        );
        assert_eq!(
            ipsec_policy_edit_remove(edit, c"rdp-clear".as_ptr()),
            IPSEC_OK
        );
        assert_eq!(
            ipsec_policy_edit_install(
                edit,
                c"name = \"late\"\naction = \"bypass\"\n".as_ptr(),
                c"rdp".as_ptr()
            ),
            IPSEC_OK
        );
        assert_eq!(ipsec_policy_edit_compile(edit, &mut compiled), IPSEC_OK);
        assert_eq!(
            ipsec_gateway_commit_policies(gw, compiled, null_mut()),
            IPSEC_OK
        );
        // "late" (any traffic, bypass) now comes first.
        assert_eq!(rdp_outbound(gw), (IPSEC_OK, Some("late")));
        assert_eq!(rdp_outbound_raw(gw).1, rdp_outbound_raw(gw).1);
        assert_eq!(c_text(rdp_string), Some("rdp"));
        assert_eq!(ipsec_gateway_remove_policy(gw, c"late".as_ptr()), IPSEC_OK);
        assert_eq!(rdp_outbound_raw(gw).1, rdp_string);

        ipsec_gateway_free(gw);
        ipsec_gateway_free(other);
    }
}

#[test]
fn spd_cache_is_set_and_counted() {
    use ipsec_status::*;
    let mut gw = null_mut();
    // SAFETY: every pointer is valid for its call; the gateway is freed once.
    unsafe {
        assert_eq!(
            ipsec_gateway_new(POLICY.as_ptr().cast(), POLICY.len(), T0, &mut gw),
            IPSEC_OK
        );
        let (mut cap, mut hits, mut misses) = (7usize, 7u64, 7u64);
        assert_eq!(
            ipsec_gateway_get_spd_cache_stats(gw, &mut cap, &mut hits, &mut misses),
            IPSEC_OK
        );
        assert_eq!((cap, hits, misses), (0, 0, 0));
        assert_eq!(ipsec_gateway_set_spd_cache(gw, 100), IPSEC_OK);
        for _ in 0..3 {
            assert_eq!(rdp_outbound(gw).0, IPSEC_OK);
        }
        assert_eq!(
            ipsec_gateway_get_spd_cache_stats(gw, &mut cap, &mut hits, &mut misses),
            IPSEC_OK
        );
        assert_eq!((cap, hits, misses), (128, 2, 1));
        assert_eq!(
            ipsec_gateway_set_spd_cache(gw, IPSEC_SPD_CACHE_MAX_FLOWS + 1),
            IPSEC_ERR_CONFIG
        );
        assert!(last_error().contains("capacity"), "{}", last_error());
        assert_eq!(
            ipsec_gateway_get_spd_cache_stats(gw, &mut cap, &mut hits, &mut misses),
            IPSEC_OK
        );
        assert_eq!(cap, 128);
        assert_eq!(
            ipsec_gateway_set_spd_cache(null_mut(), 1),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        for (c, h, m) in [
            (null_mut(), &mut hits as *mut u64, &mut misses as *mut u64),
            (&mut cap as *mut usize, null_mut(), &mut misses as *mut u64),
            (&mut cap as *mut usize, &mut hits as *mut u64, null_mut()),
        ] {
            assert_eq!(
                ipsec_gateway_get_spd_cache_stats(gw, c, h, m),
                IPSEC_ERR_INVALID_ARGUMENT
            );
        }
        assert_eq!(
            ipsec_gateway_get_spd_cache_stats(null(), &mut cap, &mut hits, &mut misses),
            IPSEC_ERR_INVALID_ARGUMENT
        );
        assert_eq!(ipsec_gateway_set_spd_cache(gw, 0), IPSEC_OK);
        ipsec_gateway_free(gw);
    }
}

/// The policies and SAs of the gateway burst tests: AES-128-GCM, AES-128-CBC + HMAC and
/// a short-lived AES-256-GCM SA protecting three remote networks, IKE bypassed, one
/// network blocked, the rest discarded.
const BURST_POLICY: &str = r#"
[[policy]]
name = "ike"
protocol = "udp"
remote_port = 500
action = "bypass"

[[policy]]
name = "blocked"
remote = "10.3.0.0/16"
action = "discard"

[[policy]]
name = "to-gcm"
direction = "outbound"
remote = "10.1.0.0/16"
action = "protect"
sa = "gcm"

[[policy]]
name = "to-cbc"
direction = "outbound"
remote = "10.2.0.0/16"
action = "protect"
sa = "cbc"

[[policy]]
name = "to-short"
direction = "outbound"
remote = "10.4.0.0/16"
action = "protect"
sa = "short"

[[policy]]
name = "rest"
action = "discard"

[[sa]]
name = "gcm"
spi = 4097
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "0707070707070707070707070707070707070707"
tunnel_src = "192.0.2.1"
tunnel_dst = "198.51.100.2"
path_mtu = 400

[[sa]]
name = "cbc"
spi = 4098
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-cbc"
key = "09090909090909090909090909090909"
integrity = "hmac-sha256-128"
integrity_key = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a"
tunnel_src = "192.0.2.1"
tunnel_dst = "198.51.100.3"

[[sa]]
name = "short"
spi = 4099
direction = "outbound"
mode = "tunnel"
cipher = "aes-256-gcm"
key = "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0c0c0c0c"
tunnel_src = "192.0.2.1"
tunnel_dst = "198.51.100.4"
hard_lifetime = { packets = 10 }
"#;

fn burst_gateway() -> *mut ipsec_gateway {
    let mut gw = null_mut();
    // SAFETY: the policy text is valid for its length; `gw` is writable.
    let st = unsafe {
        ipsec_gateway_new(
            BURST_POLICY.as_ptr().cast(),
            BURST_POLICY.len(),
            T0,
            &mut gw,
        )
    };
    assert_eq!(st, ipsec_status::IPSEC_OK, "{}", last_error());
    gw
}

/// An IPv4/UDP packet from 10.0.0.1 to `dst`:`dport` at `buf[off..]`; its length.
fn udp_to(buf: &mut [u8], off: usize, dst: [u8; 4], dport: u16) -> usize {
    udp_sized(buf, off, dst, dport, 60)
}

/// [`udp_to`] with `len` bytes.
fn udp_sized(buf: &mut [u8], off: usize, dst: [u8; 4], dport: u16, len: usize) -> usize {
    let p = &mut buf[off..off + len];
    p.fill(0x5a);
    p[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 0, 0, 0, 0,
    ]);
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[16..20].copy_from_slice(&dst);
    p[20..28].copy_from_slice(&[0x13, 0x88, 0, 0, 0, 0, 0, 0]);
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    ipsec_core::packet::set_ipv4_checksum(&mut p[..20]);
    len
}

/// Everything a gateway burst leaves behind: the value returned, each packet's
/// (status, verdict, offset, length), the buffers, the gateway's counters, each SA's
/// (name, counters) and the last error.
type BurstOutcome = (
    usize,
    Vec<(u32, u32, usize, usize)>,
    Vec<Vec<u8>>,
    ipsec_sa_stats,
    Vec<(String, ipsec_sa_stats)>,
    String,
);

/// Runs `bufs` (described by `pkts`) through a fresh gateway, as one
/// `ipsec_gateway_outbound_burst` call (`burst`) or one `ipsec_gateway_outbound` call
/// per packet.
fn gateway_outbound_run(bufs: Vec<Vec<u8>>, pkts: &[(usize, usize)], burst: bool) -> BurstOutcome {
    gateway_run(BURST_POLICY, bufs, pkts, burst, false)
}

/// Runs `bufs` (described by `pkts`) through a fresh gateway of `policy`, outbound or
/// `inbound`, as one burst call (`burst`) or one `ipsec_gateway_outbound` /
/// `ipsec_gateway_inbound` call per packet.
fn gateway_run(
    policy: &str,
    mut bufs: Vec<Vec<u8>>,
    pkts: &[(usize, usize)],
    burst: bool,
    inbound: bool,
) -> BurstOutcome {
    let mut gw = null_mut();
    // SAFETY: the policy text is valid for its length; `gw` is writable.
    let st = unsafe { ipsec_gateway_new(policy.as_ptr().cast(), policy.len(), T0, &mut gw) };
    assert_eq!(st, ipsec_status::IPSEC_OK, "{}", last_error());
    let n = pkts.len();
    let mut descs: Vec<ipsec_packet> = bufs
        .iter_mut()
        .zip(pkts)
        .map(|(b, &(offset, length))| ipsec_packet {
            buf: b.as_mut_ptr(),
            capacity: b.len(),
            offset,
            length,
            status: 999,
            fragments: 0,
        })
        .collect();
    let mut verdicts = vec![999u32; n];
    // SAFETY: every descriptor's buffer is valid for its capacity; `verdicts` has `n`
    // writable entries; the gateway is live and freed once.
    unsafe {
        let (one, many) = if inbound {
            (
                ipsec_gateway_inbound as GatewayOne,
                ipsec_gateway_inbound_burst as GatewayMany,
            )
        } else {
            (
                ipsec_gateway_outbound as GatewayOne,
                ipsec_gateway_outbound_burst as GatewayMany,
            )
        };
        let ok = if burst {
            many(gw, descs.as_mut_ptr(), n, T0, verdicts.as_mut_ptr())
        } else {
            let mut ok = 0;
            for (d, v) in descs.iter_mut().zip(verdicts.iter_mut()) {
                let mut r = core::mem::MaybeUninit::uninit();
                let st = one(
                    gw,
                    d.buf,
                    d.capacity,
                    &mut d.offset,
                    &mut d.length,
                    T0,
                    r.as_mut_ptr(),
                );
                d.status = st as u32;
                *v = if st == ipsec_status::IPSEC_OK {
                    ok += 1;
                    r.assume_init().verdict
                } else {
                    0
                };
            }
            ok
        };
        let seen = descs
            .iter()
            .zip(&verdicts)
            .map(|(d, &v)| (d.status, v, d.offset, d.length))
            .collect();
        let (gateway_stats, sas, error) = gateway_counters(gw);
        ipsec_gateway_free(gw);
        (ok, seen, bufs, gateway_stats, sas, error)
    }
}

/// `ipsec_gateway_outbound` / `ipsec_gateway_inbound`.
type GatewayOne = unsafe extern "C" fn(
    *mut ipsec_gateway,
    *mut u8,
    usize,
    *mut usize,
    *mut usize,
    u64,
    *mut ipsec_gateway_result,
) -> ipsec_status;
/// `ipsec_gateway_outbound_burst` / `ipsec_gateway_inbound_burst`.
type GatewayMany =
    unsafe extern "C" fn(*mut ipsec_gateway, *mut ipsec_packet, usize, u64, *mut u32) -> usize;

/// A live gateway's counters, each SA's (name, counters), and this thread's last error.
fn gateway_counters(
    gw: *mut ipsec_gateway,
) -> (ipsec_sa_stats, Vec<(String, ipsec_sa_stats)>, String) {
    let mut s = core::mem::MaybeUninit::uninit();
    // SAFETY: `gw` is live (caller); the out-pointers are writable.
    unsafe {
        assert_eq!(
            ipsec_gateway_get_stats(gw, s.as_mut_ptr()),
            ipsec_status::IPSEC_OK
        );
        let sas = (0..ipsec_gateway_sa_count(gw))
            .map(|i| {
                let mut e = core::mem::MaybeUninit::uninit();
                assert_eq!(
                    ipsec_gateway_get_sa(gw, i, e.as_mut_ptr()),
                    ipsec_status::IPSEC_OK
                );
                let e = e.assume_init();
                (c_text(e.name).unwrap_or("").to_string(), e.stats)
            })
            .collect();
        (s.assume_init(), sas, last_error())
    }
}

/// `ipsec_gateway_outbound_burst` (groups of 32 through `Gateway::outbound_burst`)
/// gives what `ipsec_gateway_outbound` gives one packet at a time, over several groups:
/// protected by three SAs (one of which reaches its hard packet lifetime part-way),
/// bypassed, discarded by a policy and by the final deny-all, malformed, and a
/// descriptor beyond its buffer; the same statuses, verdicts, bytes, the gateway's and
/// every SA's counters and the last error. Descriptors sharing one buffer work too.
#[test]
fn c_gateway_bursts_equal_one_packet_at_a_time() {
    const OFF: usize = 96;
    // Under Miri (which checks the group path's borrows) one short group: interpreted
    // AES is slow.
    let (n, bad, cut) = if cfg!(miri) {
        (15, 8, 13)
    } else {
        (75, 20, 29)
    };
    let mut bufs = vec![vec![0u8; 640]; n];
    let mut pkts: Vec<(usize, usize)> = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| {
            let k = i as u8;
            let (dst, dport) = match i % 7 {
                0 | 1 => ([10, 1, 0, k], 5001),
                2 => ([10, 2, 0, k], 5001),
                3 => ([10, 4, 0, k], 5001),
                4 => ([10, 9, 0, k], 500),
                5 => ([10, 3, 0, k], 5001),
                _ => ([10, 8, 0, k], 5001),
            };
            (OFF, udp_to(b, OFF, dst, dport))
        })
        .collect();
    // A descriptor beyond its buffer; a packet cut inside its IP header; one beyond
    // its SA's path MTU (400), which may be fragmented but has no spare buffers.
    pkts[bad].1 = 640;
    pkts[cut].1 = 12;
    let big = 7;
    pkts[big].1 = udp_sized(&mut bufs[big], OFF, [10, 1, 0, 7], 5001, 500);
    let (burst, single) = (
        gateway_outbound_run(bufs.clone(), &pkts, true),
        gateway_outbound_run(bufs.clone(), &pkts, false),
    );
    // Each gateway starts its outer IPv4 Identification at random and draws CBC IVs at
    // random: compare the ESP packets without the outer Identification and checksum,
    // and the CBC SA's without their bytes.
    let bytes = |o: &BurstOutcome| -> Vec<Vec<u8>> {
        o.2.iter()
            .zip(&o.1)
            .enumerate()
            .map(|(i, (b, &(status, verdict, off, _)))| {
                let mut b = b.clone();
                if status == ipsec_status::IPSEC_OK as u32
                    && verdict == ipsec_verdict::IPSEC_VERDICT_PROTECTED as u32
                {
                    if i % 7 == 2 {
                        return Vec::new();
                    }
                    b[off + 4..off + 6].fill(0);
                    b[off + 10..off + 12].fill(0);
                }
                b
            })
            .collect()
    };
    assert_eq!(burst.0, single.0);
    assert_eq!(burst.1, single.1);
    let (b, s1) = (bytes(&burst), bytes(&single));
    for (i, (x, y)) in b.iter().zip(&s1).enumerate() {
        let d: Vec<usize> = (0..x.len().min(y.len()))
            .filter(|&k| x[k] != y[k])
            .collect();
        assert!(
            d.is_empty() && x.len() == y.len(),
            "packet {i}: bytes {d:?} differ"
        );
    }
    assert_eq!(
        (burst.3, &burst.4, &burst.5),
        (single.3, &single.4, &single.5)
    );

    // What the packets got, so that the comparison above covers every kind.
    let (ok, protected, bypassed) = (
        ipsec_status::IPSEC_OK as u32,
        ipsec_verdict::IPSEC_VERDICT_PROTECTED as u32,
        ipsec_verdict::IPSEC_VERDICT_BYPASSED as u32,
    );
    let seen = &burst.1;
    assert_eq!((seen[0].0, seen[0].1), (ok, protected));
    assert_eq!(burst.2[0][seen[0].2 + 9], 50, "ESP");
    assert_eq!((seen[2].0, seen[2].1), (ok, protected));
    assert_eq!((seen[4].0, seen[4].1), (ok, bypassed));
    assert_eq!(burst.2[4], bufs[4], "bypassed unchanged");
    let discard = ipsec_status::IPSEC_ERR_POLICY_DISCARD as u32;
    assert_eq!((seen[5].0, seen[5].1), (discard, 0));
    assert_eq!((seen[6].0, seen[6].1), (discard, 0));
    assert_eq!(burst.2[6], bufs[6], "a dropped packet stays as it was");
    assert_eq!(seen[bad].0, ipsec_status::IPSEC_ERR_INVALID_ARGUMENT as u32);
    assert_eq!(seen[cut].0, ipsec_status::IPSEC_ERR_MALFORMED as u32);
    assert_eq!(seen[big].0, ipsec_status::IPSEC_ERR_NO_BUFFER_SPACE as u32);
    // The short-lived SA encrypted its first 10 packets, then refused the rest.
    let short: Vec<u32> = (3..n).step_by(7).map(|i| seen[i].0).collect();
    let expired = ipsec_status::IPSEC_ERR_LIFETIME_EXPIRED as u32;
    let lived = short.len().min(10);
    assert!(short[..lived].iter().all(|&s| s == ok), "{short:?}");
    assert!(short[lived..].iter().all(|&s| s == expired), "{short:?}");
    assert_eq!(short.len() > 10, !cfg!(miri), "{short:?}");
    let failed = seen.iter().filter(|s| s.0 != ok).count();
    assert_eq!(burst.0, n - failed);
    assert!(burst.3.policy_discard > 0, "{:?}", burst.3);

    // Four packets side by side in one buffer: one at a time, the same results.
    let mut shared = vec![0u8; 4 * 256];
    let mut descs: Vec<ipsec_packet> = (0..4)
        .map(|i| {
            let len = udp_to(&mut shared, i * 256 + OFF, [10, 1, 0, i as u8], 5001);
            ipsec_packet {
                // SAFETY: within `shared`.
                buf: unsafe { shared.as_mut_ptr().add(i * 256) },
                capacity: 256,
                offset: OFF,
                length: len,
                status: 999,
                fragments: 0,
            }
        })
        .collect();
    let gw = burst_gateway();
    let mut verdicts = [0u32; 4];
    // SAFETY: the descriptors lie inside `shared`; freed once.
    unsafe {
        let got =
            ipsec_gateway_outbound_burst(gw, descs.as_mut_ptr(), 4, T0, verdicts.as_mut_ptr());
        assert_eq!(got, 4);
        ipsec_gateway_free(gw);
    }
    assert_eq!(verdicts, [protected; 4]);
    assert!(descs.iter().all(|d| d.status == ok && d.offset < OFF));
}

/// Bad arguments of `ipsec_gateway_outbound_burst`: every status says so, nothing is
/// processed, and nothing crashes.
#[test]
fn c_gateway_burst_refuses_bad_arguments() {
    let gw = burst_gateway();
    let mut buf = vec![0u8; 256];
    let len = udp_to(&mut buf, 96, [10, 1, 0, 1], 5001);
    let mut desc = [ipsec_packet {
        buf: buf.as_mut_ptr(),
        capacity: 256,
        offset: 96,
        length: len,
        status: 999,
        fragments: 0,
    }];
    let mut verdict = [999u32];
    let invalid = ipsec_status::IPSEC_ERR_INVALID_ARGUMENT as u32;
    // SAFETY: the descriptor and verdict are valid; NULLs are what is tested.
    unsafe {
        assert_eq!(
            ipsec_gateway_outbound_burst(
                null_mut(),
                desc.as_mut_ptr(),
                1,
                T0,
                verdict.as_mut_ptr()
            ),
            0
        );
        assert_eq!(desc[0].status, invalid);
        desc[0].status = 999;
        assert_eq!(
            ipsec_gateway_outbound_burst(gw, desc.as_mut_ptr(), 1, T0, null_mut()),
            0
        );
        assert_eq!(desc[0].status, invalid);
        assert!(last_error().contains("verdicts"), "{}", last_error());
        assert_eq!(
            ipsec_gateway_outbound_burst(gw, null_mut(), 1, T0, verdict.as_mut_ptr()),
            0
        );
        assert!(last_error().contains("packets"), "{}", last_error());
        // Nothing to do is no error.
        assert_eq!(
            ipsec_gateway_outbound_burst(gw, null_mut(), 0, T0, null_mut()),
            0
        );
        assert_eq!(verdict, [999]);
        assert_eq!((desc[0].offset, desc[0].length), (96, len));
        ipsec_gateway_free(gw);
    }
}

/// A gateway burst that panics part-way (a test hook) reports the packets before the
/// panic, marks the rest, and poisons the gateway.
#[test]
fn a_gateway_burst_that_panics_part_way_reports_what_it_did() {
    let gw = burst_gateway();
    let mut bufs = vec![vec![0u8; 256]; 5];
    let mut descs: Vec<ipsec_packet> = bufs
        .iter_mut()
        .map(|b| {
            let length = udp_to(b, 96, [10, 1, 0, 1], 5001);
            ipsec_packet {
                buf: b.as_mut_ptr(),
                capacity: 256,
                offset: 96,
                length,
                status: 999,
                fragments: 0,
            }
        })
        .collect();
    let mut verdicts = [999u32; 5];
    // SAFETY: every descriptor is valid for its buffer; the gateway is freed once.
    unsafe {
        test_hooks::ipsec_test_panic_after(3);
        let ok = ipsec_gateway_outbound_burst(gw, descs.as_mut_ptr(), 5, T0, verdicts.as_mut_ptr());
        assert_eq!(ok, 2, "the two packets before the panic");
        let statuses: Vec<u32> = descs.iter().map(|d| d.status).collect();
        let (ok_, panic) = (
            ipsec_status::IPSEC_OK as u32,
            ipsec_status::IPSEC_ERR_PANIC as u32,
        );
        assert_eq!(
            statuses,
            [ok_, ok_, panic, POISONED as u32, POISONED as u32]
        );
        let protected = ipsec_verdict::IPSEC_VERDICT_PROTECTED as u32;
        assert_eq!(verdicts, [protected, protected, 0, 0, 0]);
        assert_eq!(
            descs
                .iter()
                .map(|d| (d.offset, d.length))
                .collect::<Vec<_>>()[3..],
            [(96, 60), (96, 60)]
        );
        assert!(
            last_error().contains("deliberate panic"),
            "{}",
            last_error()
        );
        assert_eq!(ipsec_gateway_sa_count(gw), 0, "poisoned");
        ipsec_gateway_free(gw);
    }
}

/// The receiving side of [`BURST_POLICY`]: an inbound SA for each of its outbound SAs
/// (the same SPIs and keys), each serving the policy of the network it protects.
const RECEIVER_POLICY: &str = r#"
[[policy]]
name = "ike"
protocol = "udp"
local_port = 500
action = "bypass"

[[policy]]
name = "from-gcm"
direction = "inbound"
local = "10.1.0.0/16"
action = "protect"
sa = "gcm-in"

[[policy]]
name = "from-cbc"
direction = "inbound"
local = "10.2.0.0/16"
action = "protect"
sa = "cbc-in"

[[policy]]
name = "from-short"
direction = "inbound"
local = "10.4.0.0/16"
action = "protect"
sa = "short-in"

[[policy]]
name = "rest"
action = "discard"

[[sa]]
name = "gcm-in"
spi = 4097
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "0707070707070707070707070707070707070707"

[[sa]]
name = "cbc-in"
spi = 4098
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-cbc"
key = "09090909090909090909090909090909"
integrity = "hmac-sha256-128"
integrity_key = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a"

[[sa]]
name = "short-in"
spi = 4099
direction = "inbound"
mode = "tunnel"
cipher = "aes-256-gcm"
key = "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0c0c0c0c"
hard_lifetime = { packets = 6 }
"#;

/// `ipsec_gateway_inbound_burst` gives what `ipsec_gateway_inbound` gives one packet at
/// a time: what a sending gateway's burst produced (ESP of three SAs, cleartext it let
/// through or refused), with a tampered, a replayed and an unknown-SPI packet and a
/// descriptor beyond its buffer among it; the same statuses, verdicts, bytes, the
/// gateway's and every SA's counters and the last error.
#[test]
fn c_gateway_inbound_bursts_equal_one_packet_at_a_time() {
    const OFF: usize = 96;
    let n = if cfg!(miri) { 15 } else { 75 };
    let mut bufs = vec![vec![0u8; 640]; n];
    let pkts: Vec<(usize, usize)> = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| {
            let k = i as u8;
            let (dst, dport) = match i % 6 {
                0 | 1 => ([10, 1, 0, k], 5001),
                2 => ([10, 2, 0, k], 5001),
                3 => ([10, 4, 0, k], 5001),
                4 => ([10, 9, 0, k], 500),
                _ => ([10, 3, 0, k], 5001),
            };
            (OFF, udp_to(b, OFF, dst, dport))
        })
        .collect();
    // What the sender puts on the wire: its ESP, and the cleartext as it was.
    let sent = gateway_outbound_run(bufs, &pkts, true);
    let mut wire: Vec<Vec<u8>> = sent
        .2
        .iter()
        .zip(&sent.1)
        .map(|(b, &(_, _, off, len))| b[off..off + len].to_vec())
        .collect();
    // Damage: a flipped ICV bit, a replay of an earlier packet, an unknown SPI.
    wire[6].last_mut().map(|b| *b ^= 1).expect("bytes");
    wire[13] = wire[12].clone();
    wire[7][20..24].copy_from_slice(&0x9999u32.to_be_bytes());
    let bufs: Vec<Vec<u8>> = wire
        .iter()
        .map(|w| {
            let mut b = vec![0u8; 640];
            b[OFF..OFF + w.len()].copy_from_slice(w);
            b
        })
        .collect();
    let mut pkts: Vec<(usize, usize)> = wire.iter().map(|w| (OFF, w.len())).collect();
    // One descriptor beyond its buffer.
    pkts[9].1 = 640;
    let run = |burst| gateway_run(RECEIVER_POLICY, bufs.clone(), &pkts, burst, true);
    let (burst, single) = (run(true), run(false));
    assert_eq!(burst.0, single.0);
    assert_eq!(burst.1, single.1);
    for (i, (x, y)) in burst.2.iter().zip(&single.2).enumerate() {
        assert!(x == y, "packet {i}: bytes differ");
    }
    assert_eq!(
        (burst.3, &burst.4, &burst.5),
        (single.3, &single.4, &single.5)
    );

    // What the packets got, so that the comparison above covers every kind.
    let (ok, decrypted, bypassed) = (
        ipsec_status::IPSEC_OK as u32,
        ipsec_verdict::IPSEC_VERDICT_DECRYPTED as u32,
        ipsec_verdict::IPSEC_VERDICT_BYPASSED as u32,
    );
    let seen = &burst.1;
    assert_eq!((seen[0].0, seen[0].1), (ok, decrypted));
    assert_eq!(
        &burst.2[0][seen[0].2..seen[0].2 + 20],
        &wire_inner_header(0)[..]
    );
    assert_eq!((seen[2].0, seen[2].1), (ok, decrypted));
    assert_eq!((seen[4].0, seen[4].1), (ok, bypassed));
    assert_eq!(seen[5].0, ipsec_status::IPSEC_ERR_POLICY_DISCARD as u32);
    assert_eq!(seen[6].0, ipsec_status::IPSEC_ERR_AUTH_FAILED as u32);
    assert_eq!(seen[7].0, ipsec_status::IPSEC_ERR_UNKNOWN_SPI as u32);
    assert_eq!(seen[9].0, ipsec_status::IPSEC_ERR_INVALID_ARGUMENT as u32);
    assert_eq!(seen[13].0, ipsec_status::IPSEC_ERR_REPLAY as u32);
    if !cfg!(miri) {
        // The short-lived SA took 6 packets, then refused the rest of its ESP.
        let short: Vec<u32> = seen.iter().skip(3).step_by(6).map(|s| s.0).collect();
        let expired = ipsec_status::IPSEC_ERR_LIFETIME_EXPIRED as u32;
        assert_eq!(short.iter().filter(|&&s| s == ok).count(), 6, "{short:?}");
        assert!(short.contains(&expired), "{short:?}");
    }
}

/// The inner header of packet 0 of `c_gateway_inbound_bursts_equal_one_packet_at_a_time`.
fn wire_inner_header(k: u8) -> [u8; 20] {
    let mut b = [0u8; 96 + 60];
    udp_to(&mut b, 96, [10, 1, 0, k], 5001);
    b[96..116].try_into().expect("20 bytes")
}
