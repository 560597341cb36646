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
        ("reserved", |c| c.reserved[7] = 1),
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
key = "0707070707070707070707070707070707070707"
"#;

fn c_text(p: *const c_char) -> Option<&'static str> {
    // SAFETY: the strings handed out live as long as their owner, which outlives the
    // checks in these tests.
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
