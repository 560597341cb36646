//! `ipsec bench`: ESP encrypt/decrypt throughput per cipher, packet size and burst,
//! next to the raw cost of the AEAD (and CBC+HMAC) primitives of each backend.
//!
//! Methodology: every buffer is allocated before timing; each case is warmed up while
//! the iteration count is calibrated, then timed in [`ROUNDS`] rounds and the median
//! round is reported (the machines this runs on are noisy). Rounds are timed on the
//! measuring thread's CPU clock on Linux ([`CLOCK`]): on a machine shared with other
//! jobs the wall clock also counts the time they hold the core, which says nothing
//! about the cost of a packet; `openssl speed` likewise reports CPU time. Nothing is allocated in the
//! timed loops. Every timed iteration first restores what the operation consumes from a
//! template with `copy_from_slice`: an ESP encrypt its plaintext (the inner packet), a
//! decrypt its ciphertext (payload and trailer: a tunnel-mode decrypt leaves the outer
//! header, ESP header, IV and ICV as they came, which the set-up checks), a raw seal its
//! plaintext and a raw open its ciphertext (tag, nonce and AAD are not rewritten there
//! either), so that ESP and raw rows compare like with like; the copy (a memcpy of
//! about `size` bytes, a few ns) is included in every number. Restoring the whole ESP
//! packet instead would put its header and ICV in the store buffer just before they are
//! read, and intel-ipsec-mb reads the AAD with a masked load, which cannot take its bytes
//! from a pending store and waits for it to reach the cache: 2-4 ns of a 64-byte AES-GCM
//! decrypt that a packet written by a NIC or by the kernel's copy does not pay, and that
//! the raw rows did not pay. Decryption uses an inbound SA with `replay_window = 0` so
//! the same packet can be opened again and again.
//! Gbit/s = size × 8 / ns per packet, where size is the inner (plaintext) packet.
//!
//! `--openssl` adds `openssl speed -evp` figures (backend `openssl-speed`,
//! `"per_packet": false` in JSON). They are not a per-packet seal: `openssl speed` times a
//! stream of `EVP_EncryptUpdate` calls with no nonce, AAD or tag per buffer, so they are
//! shown for reference and left out of the "vs raw" column. OpenSSL's per-packet seal
//! and open are measured by `benches/openssl/evp_aead.c` (`scripts/bench-report.py`
//! builds and runs it beside this command).

use crate::netpkt::ipv4_l4;
use crate::output::Stdout;
use crate::{CliError, Outcome};
use aes::cipher::array::Array;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, InnerIvInit, KeyInit};
use aes_gcm::aead::AeadInOut;
use hmac::{Hmac, Mac};
use ipsec_core::packet::IPPROTO_UDP;
use ipsec_core::{
    Cipher, Direction, Error, Integrity, Mode, PacketBuf, SaConfig, SecurityAssociation,
};
use std::hint::black_box;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// The backend name of the `openssl speed` rows, which are not per-packet seals.
const OPENSSL_SPEED: &str = "openssl-speed";

/// Timed rounds per case; the median is reported.
const ROUNDS: usize = 7;
/// Packets per burst in the burst rows.
const BURST: usize = 32;
/// Inner packet sizes.
const SIZES: [usize; 3] = [64, 512, 1420];
/// The outer IPv4 header and ESP header in front of the IV of a tunnel-mode packet.
const ESP_OUTER_V4: usize = 20 + 8;

/// One measurement.
struct Record {
    op: &'static str,
    cipher: String,
    backend: &'static str,
    size: usize,
    burst: usize,
    ns: f64,
}

impl Record {
    fn gbps(&self) -> f64 {
        self.size as f64 * 8.0 / self.ns
    }
}

/// What the timed rounds are measured with: the measuring thread's on-CPU time where
/// the OS gives it with nanosecond resolution (Linux), so that on a shared machine
/// the time other processes hold the core is left out (`openssl speed`, the OpenSSL
/// rows, counts CPU time too), else the wall clock.
const CLOCK: &str = if cfg!(target_os = "linux") {
    "thread-cpu"
} else {
    "wall"
};

/// A point in time on the [`CLOCK`].
#[derive(Clone, Copy)]
struct Stamp(Duration);

impl Stamp {
    fn now() -> Stamp {
        #[cfg(target_os = "linux")]
        {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
            Stamp(Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
        }
        #[cfg(not(target_os = "linux"))]
        {
            Stamp(wall_origin().elapsed())
        }
    }

    fn elapsed(self) -> Duration {
        Stamp::now().0.saturating_sub(self.0)
    }
}

#[cfg(not(target_os = "linux"))]
fn wall_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Runs `f(n)` (n iterations) to warm up and calibrate, then [`ROUNDS`] timed rounds;
/// returns the median ns per iteration, timed on the [`CLOCK`].
fn measure(budget: Duration, mut f: impl FnMut(u64)) -> f64 {
    let mut n = 1u64;
    let per_iter = loop {
        let t0 = Stamp::now();
        f(n);
        let e = t0.elapsed();
        if e >= budget / 16 || n >= 1 << 30 {
            break (e.as_nanos() as f64 / n as f64).max(0.01);
        }
        n *= 2;
    };
    let round = budget.as_nanos() as f64 * 0.85 / ROUNDS as f64;
    let iters = ((round / per_iter) as u64).max(1);
    let mut v = [0f64; ROUNDS];
    for r in &mut v {
        let t0 = Stamp::now();
        f(iters);
        *r = t0.elapsed().as_nanos() as f64 / iters as f64;
    }
    v.sort_by(f64::total_cmp);
    v[ROUNDS / 2]
}

/// The raw AEAD interface the three backends are measured through.
trait RawAead {
    fn seal(&self, nonce: [u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; 16];
    fn open(&self, nonce: [u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> bool;
}

struct Rc<A>(A);

impl<A> RawAead for Rc<A>
where
    A: AeadInOut<NonceSize = aes_gcm::aead::consts::U12, TagSize = aes_gcm::aead::consts::U16>,
{
    fn seal(&self, nonce: [u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        self.0
            .encrypt_inout_detached(&nonce.into(), aad, buf.into())
            .map(Into::into)
            .unwrap_or([0; 16])
    }
    fn open(&self, nonce: [u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> bool {
        self.0
            .decrypt_inout_detached(&nonce.into(), aad, buf.into(), &(*tag).into())
            .is_ok()
    }
}

struct RingKey(ring::aead::LessSafeKey);

impl RawAead for RingKey {
    fn seal(&self, nonce: [u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        let n = ring::aead::Nonce::assume_unique_for_key(nonce);
        let mut out = [0u8; 16];
        if let Ok(t) = self
            .0
            .seal_in_place_separate_tag(n, ring::aead::Aad::from(aad), buf)
        {
            out.copy_from_slice(t.as_ref());
        }
        out
    }
    fn open(&self, nonce: [u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> bool {
        let n = ring::aead::Nonce::assume_unique_for_key(nonce);
        self.0
            .open_in_place_separate_tag(
                n,
                ring::aead::Aad::from(aad),
                ring::aead::Tag::from(*tag),
                buf,
                0..,
            )
            .is_ok()
    }
}

struct AwsKey(aws_lc_rs::aead::LessSafeKey);

impl RawAead for AwsKey {
    fn seal(&self, nonce: [u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce);
        let mut out = [0u8; 16];
        if let Ok(t) = self
            .0
            .seal_in_place_separate_tag(n, aws_lc_rs::aead::Aad::from(aad), buf)
        {
            out.copy_from_slice(t.as_ref());
        }
        out
    }
    fn open(&self, nonce: [u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> bool {
        let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce);
        self.0
            .open_in_place_separate_tag(n, aws_lc_rs::aead::Aad::from(aad), tag, buf)
            .is_ok()
    }
}

/// Times seal and open of `size` bytes with 8 bytes of AAD (SPI and sequence number).
fn raw_aead_case(k: &dyn RawAead, size: usize, budget: Duration) -> Result<(f64, f64), String> {
    let aad = [0x00, 0x00, 0x10, 0x01, 0, 0, 0, 1];
    let plain: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut buf = plain.clone();
    let mut ctr = 0u64;
    let seal = measure(budget, |n| {
        for _ in 0..n {
            ctr += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&ctr.to_be_bytes());
            buf.copy_from_slice(&plain);
            black_box(k.seal(nonce, &aad, black_box(&mut buf)));
        }
    });
    let nonce = [7u8; 12];
    let mut sealed = plain.clone();
    let tag = k.seal(nonce, &aad, &mut sealed);
    buf.copy_from_slice(&sealed);
    if !k.open(nonce, &aad, &mut buf, &tag) || buf != plain {
        return Err("raw AEAD self-check failed".into());
    }
    let open = measure(budget, |n| {
        for _ in 0..n {
            buf.copy_from_slice(&sealed);
            black_box(k.open(nonce, &aad, black_box(&mut buf), &tag));
        }
    });
    Ok((seal, open))
}

/// Raw AES-128-CBC + HMAC-SHA-256-128 (encrypt-then-MAC over header, IV, ciphertext).
fn raw_cbc_case(size: usize, budget: Duration) -> Result<(f64, f64), String> {
    let len = size.div_ceil(16) * 16;
    let aes = aes::Aes128::new_from_slice(&[0x42; 16]).map_err(|e| e.to_string())?;
    let mac = Hmac::<sha2::Sha256>::new_from_slice(&[0x5a; 32]).map_err(|e| e.to_string())?;
    let plain: Vec<u8> = (0..8 + 16 + len).map(|i| i as u8).collect();
    let mut buf = plain.clone();
    let mut icv = [0u8; 16];
    let seal_one = |buf: &mut [u8], icv: &mut [u8; 16]| {
        let iv: [u8; 16] = buf[8..24].try_into().unwrap_or([0; 16]);
        let (blocks, _) = Array::slice_as_chunks_mut(&mut buf[24..]);
        cbc::Encryptor::inner_iv_init(&aes, &iv.into()).encrypt_blocks(blocks);
        let mut m = mac.clone();
        m.update(buf);
        icv.copy_from_slice(&m.finalize().into_bytes()[..16]);
    };
    let seal = measure(budget, |n| {
        for _ in 0..n {
            buf.copy_from_slice(&plain);
            seal_one(black_box(&mut buf), &mut icv);
            black_box(&icv);
        }
    });
    let mut sealed = plain.clone();
    let mut tag = [0u8; 16];
    seal_one(&mut sealed, &mut tag);
    let open_one = |buf: &mut [u8]| -> bool {
        let mut m = mac.clone();
        m.update(buf);
        if m.verify_truncated_left(&tag).is_err() {
            return false;
        }
        let iv: [u8; 16] = buf[8..24].try_into().unwrap_or([0; 16]);
        let (blocks, _) = Array::slice_as_chunks_mut(&mut buf[24..]);
        cbc::Decryptor::inner_iv_init(&aes, &iv.into()).decrypt_blocks(blocks);
        true
    };
    buf.copy_from_slice(&sealed);
    if !open_one(&mut buf) || buf != plain {
        return Err("raw CBC+HMAC self-check failed".into());
    }
    let open = measure(budget, |n| {
        for _ in 0..n {
            buf.copy_from_slice(&sealed);
            black_box(open_one(black_box(&mut buf)));
        }
    });
    Ok((seal, open))
}

fn label(cipher: Cipher, integrity: Option<Integrity>) -> String {
    match integrity {
        Some(i) => format!("{}+{}", cipher.name(), i.name()),
        None => cipher.name().to_string(),
    }
}

/// Times ESP encrypt and decrypt of a `size`-byte IPv4/UDP packet in tunnel mode,
/// one packet per call (`burst` 1) or [`BURST`] per call. Returns ns per packet.
fn esp_case(
    cipher: Cipher,
    integrity: Option<Integrity>,
    size: usize,
    burst: usize,
    budget: Duration,
) -> Result<(f64, f64), String> {
    let key: Vec<u8> = (0..cipher.key_len()).map(|i| i as u8 ^ 0x3c).collect();
    let ikey: Vec<u8> = integrity.map_or(Vec::new(), |i| vec![0x77; i.key_len()]);
    let make = |dir| {
        let mut c = SaConfig::new(0x1001, dir, Mode::Tunnel, cipher, &key);
        if let Some(i) = integrity {
            c.integrity(i, &ikey);
        }
        if dir == Direction::Outbound {
            c.tunnel(
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
            );
        } else {
            c.replay_window(0);
        }
        SecurityAssociation::new(c, Duration::ZERO).map_err(|e| e.to_string())
    };
    let mut out = make(Direction::Outbound)?;
    let mut inb = make(Direction::Inbound)?;
    let payload = vec![0xabu8; size - 28];
    let tpl = ipv4_l4(
        IPPROTO_UDP,
        (Ipv4Addr::new(10, 1, 0, 1), 5000),
        (Ipv4Addr::new(10, 0, 0, 1), 5001),
        1,
        &payload,
    );
    let head = out.max_headroom() + 64;
    let stride = (head + size + out.tailroom_for(size) + 64).div_ceil(64) * 64;
    let now = Duration::ZERO;
    // Pre-encrypt the template for the decrypt rows (and check the round trip).
    let mut storage = vec![0u8; stride * BURST];
    storage[head..head + size].copy_from_slice(&tpl);
    let mut p = PacketBuf::new(&mut storage[..stride], head, size).map_err(|e| e.to_string())?;
    out.encrypt(&mut p, now).map_err(|e| e.to_string())?;
    let (enc_off, enc_len) = (p.offset(), p.len());
    let enc_tpl = p.data().to_vec();
    let mut p =
        PacketBuf::new(&mut storage[..stride], enc_off, enc_len).map_err(|e| e.to_string())?;
    inb.decrypt(&mut p, now).map_err(|e| e.to_string())?;
    if p.data() != &tpl[..] {
        return Err("ESP round trip self-check failed".into());
    }
    // The rest of the packet must be what decryption left untouched, or the rows
    // below would time less than a decrypt: check it on the round trip's buffer.
    let icv_len = integrity.map_or(16, Integrity::icv_len);
    let untouched = ESP_OUTER_V4 + cipher.iv_len();
    if storage[enc_off..enc_off + untouched] != enc_tpl[..untouched]
        || storage[enc_off + enc_len - icv_len..enc_off + enc_len] != enc_tpl[enc_len - icv_len..]
    {
        return Err("the decrypt changed bytes outside the ciphertext".into());
    }
    let mut results: [Result<(), Error>; BURST] = [Ok(()); BURST];
    let mut failed = false;
    // Burst rows: the descriptors are built once and pointed at a fresh copy of the
    // template every iteration (`PacketBuf::reset`), as a gateway reuses its buffers.
    let mut chunks = storage.chunks_exact_mut(stride);
    let mut pkts: Vec<PacketBuf<'_>> = (0..burst)
        .map_while(|_| chunks.next())
        .map(|c| PacketBuf::new(c, 0, 0))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let enc = measure(budget, |n| {
        for _ in 0..n {
            for p in pkts.iter_mut() {
                p.buffer_mut()[head..head + size].copy_from_slice(&tpl);
                failed |= p.reset(head, size).is_err();
            }
            if burst == 1 {
                failed |= out.encrypt(&mut pkts[0], now).is_err();
            } else {
                failed |= out.encrypt_burst(&mut pkts, &mut results, now) != BURST;
            }
        }
    });
    // A tunnel-mode decrypt changes only the ciphertext (payload and trailer): the outer
    // header, ESP header, IV and ICV stay as they came, so only the ciphertext is
    // restored, as the raw rows restore only theirs (see the module comment).
    let ct = enc_off + ESP_OUTER_V4 + cipher.iv_len()..enc_off + enc_len - icv_len;
    let ct_tpl = &enc_tpl[ct.start - enc_off..ct.end - enc_off];
    for p in pkts.iter_mut() {
        p.buffer_mut()[enc_off..enc_off + enc_len].copy_from_slice(&enc_tpl);
    }
    let dec = measure(budget, |n| {
        for _ in 0..n {
            for p in pkts.iter_mut() {
                p.buffer_mut()[ct.clone()].copy_from_slice(ct_tpl);
                failed |= p.reset(enc_off, enc_len).is_err();
            }
            if burst == 1 {
                failed |= inb.decrypt(&mut pkts[0], now).is_err();
            } else {
                failed |= inb.decrypt_burst(&mut pkts, &mut results, now) != BURST;
            }
        }
    });
    if failed {
        return Err(format!(
            "a packet failed during the timed loop ({})",
            results
                .iter()
                .find_map(|r| r.err())
                .map_or("single-packet path".to_string(), |e| e.to_string())
        ));
    }
    Ok((enc / burst as f64, dec / burst as f64))
}

fn emit(out: &mut Stdout, json: bool, r: &Record, raw: &[Record]) -> Result<(), CliError> {
    if json {
        let from_openssl_speed = r.backend == OPENSSL_SPEED;
        let line = serde_json::json!({
            "op": r.op,
            "cipher": r.cipher,
            "backend": r.backend,
            "size": r.size,
            "burst": r.burst,
            "ns_per_packet": (r.ns * 100.0).round() / 100.0,
            "gbps": (r.gbps() * 1000.0).round() / 1000.0,
            "copy_included": !from_openssl_speed,
            "per_packet": !from_openssl_speed,
            "clock": if from_openssl_speed { "process-cpu" } else { CLOCK },
        });
        return writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(CliError::output);
    }
    let raw_op = if r.op == "encrypt" {
        "aead-seal"
    } else {
        "aead-open"
    };
    let best = raw
        .iter()
        .filter(|x| {
            x.op == raw_op && x.cipher == r.cipher && x.size == r.size && x.backend != OPENSSL_SPEED
        })
        .map(|x| x.ns)
        .min_by(f64::total_cmp);
    let ratio = match (r.op, best) {
        ("encrypt" | "decrypt", Some(b)) => format!("{:.2}x", r.ns / b),
        _ => "-".into(),
    };
    writeln!(
        out,
        "{:<10} {:<30} {:<11} {:>5} {:>5} {:>10.1} {:>8.2} {:>8}",
        r.op,
        r.cipher,
        r.backend,
        r.size,
        r.burst,
        r.ns,
        r.gbps(),
        ratio
    )
    .and_then(|()| out.flush())
    .map_err(CliError::output)
}

/// Runs `openssl speed -evp` for one second on `size`-byte buffers and returns its ns per
/// seal (OpenSSL EVP, as installed on this machine; not timed by us, so the copy of the
/// other rows is not included).
fn openssl_speed(cipher: Cipher, size: usize) -> Result<f64, String> {
    let evp = match cipher {
        Cipher::Aes128Gcm => "aes-128-gcm",
        Cipher::Aes256Gcm => "aes-256-gcm",
        _ => "chacha20-poly1305",
    };
    let out = std::process::Command::new("openssl")
        .args([
            "speed",
            "-evp",
            evp,
            "-bytes",
            &size.to_string(),
            "-seconds",
            "1",
            "-mr",
        ])
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Machine-readable result line: "+F:<n>:<NAME>:<bytes per second>".
    let bytes_per_s: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("+F:")?.rsplit(':').next()?.parse().ok())
        .ok_or_else(|| format!("no +F: line in the output of openssl speed: {text}"))?;
    Ok(size as f64 / bytes_per_s * 1e9)
}

/// Runs the benchmark; `seconds` is the budget of one case; `openssl` adds the figures
/// of `openssl speed -evp` on the same sizes.
pub(crate) fn run(json: bool, seconds: f64, openssl: bool) -> Result<Outcome, CliError> {
    let full = Duration::from_secs_f64(seconds);
    let brief = full / 3;
    let started = Instant::now();
    let fail = |what: String, e: String| CliError::failure(format!("bench {what}: {e}"));
    // When the reader goes away (`| head`) the measuring stops: nobody reads the rest.
    let mut out = Stdout::new();
    let io_err = CliError::output;
    if !json {
        writeln!(
            out,
            "ipsec bench: median of {ROUNDS} timed rounds after warm-up, ~{:.0} ms per case \
             ({CLOCK} clock); every iteration restores its input with copy_from_slice \
             (included).",
            seconds * 1000.0
        )
        .map_err(io_err)?;
        writeln!(
            out,
            "ESP: tunnel mode, IPv4/UDP inner packet of SIZE bytes; decrypt with replay_window 0. \
             AEAD backend of the ESP rows: {}{}.",
            ipsec_core::crypto::AEAD_BACKEND,
            match ipsec_core::crypto::ipsec_mb_info() {
                Some(Ok((version, arch))) => format!(" (intel-ipsec-mb {version}, {arch} manager)"),
                Some(Err(e)) => format!(" (intel-ipsec-mb unavailable: {e})"),
                None => String::new(),
            }
        )
        .map_err(io_err)?;
        if let (Some(small), Some(large)) = (
            ipsec_core::crypto::ipsec_mb_hmac_burst_manager(Integrity::HmacSha256_128, 112),
            ipsec_core::crypto::ipsec_mb_hmac_burst_manager(Integrity::HmacSha256_128, 1456),
        ) {
            writeln!(
                out,
                "intel-ipsec-mb manager hashing HMAC-SHA-256 bursts (measured once per \
                 process): {small} at 64 B, {large} at 1420 B."
            )
            .map_err(io_err)?;
        }
        writeln!(
            out,
            "VS RAW = ESP ns / best raw per-packet primitive ns of the same cipher and size \
             (seal for encrypt, open for decrypt); openssl-speed rows stream one context \
             with no per-packet nonce, AAD or tag and are shown for reference only.\n"
        )
        .map_err(io_err)?;
        writeln!(
            out,
            "{:<10} {:<30} {:<11} {:>5} {:>5} {:>10} {:>8} {:>8}",
            "OP", "CIPHER", "BACKEND", "SIZE", "BURST", "NS/PKT", "GBIT/S", "VS RAW"
        )
        .map_err(io_err)?;
    }
    let mut raw: Vec<Record> = Vec::new();
    let aead_ciphers = [
        Cipher::Aes128Gcm,
        Cipher::Aes256Gcm,
        Cipher::ChaCha20Poly1305,
    ];
    for cipher in aead_ciphers {
        let klen = cipher.key_len() - 4;
        let key = vec![0x42u8; klen];
        let err = |e: &dyn std::fmt::Display| fail(cipher.name().into(), e.to_string());
        let rc: Box<dyn RawAead> =
            match cipher {
                Cipher::Aes128Gcm => Box::new(Rc(
                    aes_gcm::Aes128Gcm::new_from_slice(&key).map_err(|e| err(&e))?
                )),
                Cipher::Aes256Gcm => Box::new(Rc(
                    aes_gcm::Aes256Gcm::new_from_slice(&key).map_err(|e| err(&e))?
                )),
                _ => Box::new(Rc(chacha20poly1305::ChaCha20Poly1305::new_from_slice(&key)
                    .map_err(|e| err(&e))?)),
            };
        let ring_alg = match cipher {
            Cipher::Aes128Gcm => &ring::aead::AES_128_GCM,
            Cipher::Aes256Gcm => &ring::aead::AES_256_GCM,
            _ => &ring::aead::CHACHA20_POLY1305,
        };
        let rk = RingKey(ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(ring_alg, &key).map_err(|e| err(&e))?,
        ));
        let aws_alg = match cipher {
            Cipher::Aes128Gcm => &aws_lc_rs::aead::AES_128_GCM,
            Cipher::Aes256Gcm => &aws_lc_rs::aead::AES_256_GCM,
            _ => &aws_lc_rs::aead::CHACHA20_POLY1305,
        };
        let ak = AwsKey(aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(aws_alg, &key).map_err(|e| err(&e))?,
        ));
        let backends: [(&'static str, &dyn RawAead); 3] = [
            ("rustcrypto", rc.as_ref()),
            ("ring", &rk),
            ("aws-lc-rs", &ak),
        ];
        for size in SIZES {
            if out.gone() {
                return Ok(Outcome::Ok);
            }
            for (backend, k) in backends {
                let (seal, open) = raw_aead_case(k, size, full)
                    .map_err(|e| fail(format!("{} {backend}", cipher.name()), e))?;
                for (op, ns) in [("aead-seal", seal), ("aead-open", open)] {
                    let r = Record {
                        op,
                        cipher: cipher.name().into(),
                        backend,
                        size,
                        burst: 1,
                        ns,
                    };
                    emit(&mut out, json, &r, &[])?;
                    raw.push(r);
                }
            }
            if openssl {
                let ns = openssl_speed(cipher, size)
                    .map_err(|e| fail(format!("{} openssl speed", cipher.name()), e))?;
                let r = Record {
                    op: "aead-seal",
                    cipher: cipher.name().into(),
                    backend: OPENSSL_SPEED,
                    size,
                    burst: 1,
                    ns,
                };
                emit(&mut out, json, &r, &[])?;
                raw.push(r);
            }
        }
    }
    let cbc_label = label(Cipher::Aes128Cbc, Some(Integrity::HmacSha256_128));
    for size in SIZES {
        let (seal, open) = raw_cbc_case(size, full).map_err(|e| fail(cbc_label.clone(), e))?;
        for (op, ns) in [("aead-seal", seal), ("aead-open", open)] {
            let r = Record {
                op,
                cipher: cbc_label.clone(),
                backend: "rustcrypto",
                size,
                burst: 1,
                ns,
            };
            emit(&mut out, json, &r, &[])?;
            raw.push(r);
        }
    }
    if !json {
        writeln!(out).map_err(io_err)?;
    }
    let esp: [(Cipher, Option<Integrity>, Duration); 9] = [
        (Cipher::Aes128Gcm, None, full),
        (Cipher::Aes256Gcm, None, full),
        (Cipher::ChaCha20Poly1305, None, full),
        (Cipher::Aes128Cbc, Some(Integrity::HmacSha256_128), full),
        (Cipher::Aes256Cbc, Some(Integrity::HmacSha512_256), brief),
        (Cipher::Aes128Cbc, Some(Integrity::HmacSha1_96), brief),
        (Cipher::Aes128Gmac, None, brief),
        (Cipher::Aes256Gmac, None, brief),
        (Cipher::Null, Some(Integrity::HmacSha256_128), brief),
    ];
    for (cipher, integrity, budget) in esp {
        let name = label(cipher, integrity);
        let backend = ipsec_core::crypto::aead_backend(cipher);
        for size in SIZES {
            if out.gone() {
                return Ok(Outcome::Ok);
            }
            for burst in [1, BURST] {
                let (enc, dec) = esp_case(cipher, integrity, size, burst, budget)
                    .map_err(|e| fail(format!("{name} size {size} burst {burst}"), e))?;
                for (op, ns) in [("encrypt", enc), ("decrypt", dec)] {
                    let r = Record {
                        op,
                        cipher: name.clone(),
                        backend: if burst == 1 {
                            backend
                        } else {
                            ipsec_core::crypto::burst_backend(cipher)
                        },
                        size,
                        burst,
                        ns,
                    };
                    emit(&mut out, json, &r, &raw)?;
                }
            }
        }
    }
    if let (false, Some(small)) = (json, ipsec_core::crypto::ipsec_mb_cbc_seal_cipher(80)) {
        writeln!(
            out,
            "\nCBC encryption of 64 B seal bursts (measured once per process): {small}; \
             the library's from 240 bytes of ciphertext."
        )
        .map_err(io_err)?;
    }
    if !json {
        writeln!(
            out,
            "\nbench finished in {:.1} s",
            started.elapsed().as_secs_f64()
        )
        .map_err(io_err)?;
    }
    out.flush().map_err(io_err)?;
    Ok(Outcome::Ok)
}
