//! One SA processed by several threads at once (`ipsec_core::SharedSa`): an
//! `ipsec_shared_sa` (the shared part, for monitoring) and its `ipsec_sa_lane`s, one per
//! thread, that encrypt and decrypt.
//!
//! * **Outbound**: each lane leases blocks of `block` sequence numbers from one atomic
//!   counter, so no number is ever used twice under the key and none is skipped while
//!   the lanes run (only the unused rest of each lane's last block is never sent).
//!   Lanes send at most `lanes x block` numbers apart.
//! * **Inbound**: one replay window for all lanes; a packet two lanes verify at the
//!   same time is accepted by exactly one (the other drops it as `IPSEC_ERR_REPLAY`).
//! * **Counters** are per lane (`ipsec_sa_lane_get_stats`); `ipsec_shared_sa_get_stats`
//!   sums what the lanes published: a lane publishes when it leases a block (outbound),
//!   every 64 packets (inbound), at `ipsec_sa_lane_publish` and when it is freed.
//! * **Lifetimes**: the hard packet limit is exact across lanes; byte limits and the
//!   soft packet limit are split evenly between the lanes (the SA may expire early,
//!   never late); each lane raises its own events (`ipsec_sa_lane_poll_event`).
//!
//! Threads, in C:
//!
//! ```c
//! ipsec_shared_sa *shared; ipsec_sa_lane *lanes[2];
//! ipsec_shared_sa_new(&cfg, 2, 0, now, &shared, lanes);      /* block 0: 8 */
//! /* thread i: ipsec_sa_lane_encrypt(lanes[i], buf, cap, &off, &len, now); */
//! /* any thread: ipsec_shared_sa_seq(shared), ipsec_shared_sa_get_stats(shared, &st) */
//! ipsec_sa_lane_free(lanes[0]); ipsec_sa_lane_free(lanes[1]); ipsec_shared_sa_free(shared);
//! ```

use ipsec_core::{SaLane, SharedSa, SharedSaOptions};

use crate::boundary::{boundary, call, config_error, invalid};
use crate::handle::{Handle, borrow, borrow_mut, bytes_mut, free_handle, into_handle, out_ptr};
use crate::sa::{
    BurstOp, burst, event_to, in_place, ipsec_overhead, ipsec_packet, ipsec_sa_config,
    ipsec_sa_event, ipsec_sa_stats, keepalive_buffer, now, read_config, time_ns,
};
use crate::status::ipsec_status;

/// The block of sequence numbers a lane leases at a time when `block` is 0.
pub const IPSEC_SHARED_SA_DEFAULT_BLOCK: u32 = 8;

/// The shared part of one SA processed by several threads (`ipsec_shared_sa_new`): its
/// SPI, sequence number and summed counters. The packets go through its lanes.
///
/// Thread safety: any number of threads may use one at once (it is only read, and
/// what it reads is atomic or locked); it is freed once, when no call is using it. It
/// and its lanes may be freed in any order: they share reference-counted state, freed
/// with the last of them.
pub struct ipsec_shared_sa {
    _private: [u8; 0],
}

impl Handle for ipsec_shared_sa {
    type Inner = SharedSa;
}

/// One thread's lane of an `ipsec_shared_sa`: a whole SA of the same keys with its own
/// counters, taking sequence numbers (outbound) or the replay window (inbound) from the
/// shared part.
///
/// Thread safety: one thread at a time (as an `ipsec_sa`; give each thread its own
/// lane); it may move between threads. Different lanes of one SA may be used by
/// different threads at the same time: that is what they are for.
pub struct ipsec_sa_lane {
    _private: [u8; 0],
}

impl Handle for ipsec_sa_lane {
    type Inner = SaLane;
}

/// Creates the SA of `*config` at time `now_ns` (as `ipsec_sa_new`; keys are copied) as
/// `lanes` lanes, one per thread, that lease outbound sequence numbers `block` at a
/// time (0: `IPSEC_SHARED_SA_DEFAULT_BLOCK`, 8; 1 to 1,024: 1 costs one atomic
/// operation per packet, more leave up to `block - 1` numbers unsent per lane when the
/// SA ends). Stores the shared part in `*shared_out` and the lanes in `lanes_out[0 ..
/// lanes]`. Free each of them (any order) with `ipsec_shared_sa_free` /
/// `ipsec_sa_lane_free`.
///
/// `IPSEC_ERR_CONFIG` when the configuration is refused (as by `ipsec_sa_new`) or
/// `lanes` is not 1 to 256 or `block` above 1,024 (the message names `lanes` or
/// `block`); `IPSEC_ERR_INVALID_ARGUMENT` for NULL or misaligned pointers, enum fields
/// out of range. Nothing is written then.
///
/// # Safety
///
/// `config` points to an initialised `ipsec_sa_config` whose pointers are valid as
/// documented; `shared_out` points to a writable `ipsec_shared_sa *`; `lanes_out` to
/// `lanes` writable `ipsec_sa_lane *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_shared_sa_new(
    config: *const ipsec_sa_config,
    lanes: usize,
    block: u32,
    now_ns: u64,
    shared_out: *mut *mut ipsec_shared_sa,
    lanes_out: *mut *mut ipsec_sa_lane,
) -> ipsec_status {
    call(|| {
        let shared_out = out_ptr(shared_out, "shared_out")?;
        let lanes_out = out_ptr(lanes_out, "lanes_out")?;
        if lanes > isize::MAX as usize / size_of::<*mut ipsec_sa_lane>() {
            return Err(invalid(format!("`lanes` {lanes} is too large")));
        }
        // SAFETY: caller's contract.
        let cfg = unsafe { read_config(config) }?;
        let block = if block == 0 {
            IPSEC_SHARED_SA_DEFAULT_BLOCK
        } else {
            block
        };
        let options = SharedSaOptions::lanes(lanes).with_block(block);
        let (shared, made) =
            SharedSa::new(cfg, options, now(now_ns)).map_err(|e| config_error(&e))?;
        debug_assert_eq!(made.len(), lanes);
        // SAFETY: both checked non-NULL and aligned; `lanes_out` has `lanes` writable
        // slots (caller's contract) and `made.len() == lanes`.
        unsafe {
            for (i, lane) in made.into_iter().enumerate() {
                lanes_out.add(i).write(into_handle::<ipsec_sa_lane>(lane));
            }
            shared_out.write(into_handle::<ipsec_shared_sa>(shared));
        }
        Ok(())
    })
}

/// Frees the shared part of an SA. Its lanes go on working (and summing into state
/// that lives until the last of them is freed). NULL is ignored.
///
/// # Safety
///
/// `shared` is NULL or from `ipsec_shared_sa_new`, not freed before, used by no call
/// on another thread during this one, and not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_shared_sa_free(shared: *mut ipsec_shared_sa) {
    // SAFETY: caller's contract.
    boundary(|| unsafe { free_handle(shared) })
}

/// Frees a lane (its keys are wiped), publishing its counters to the shared part
/// first. The other lanes and the shared part go on working. NULL is ignored.
///
/// # Safety
///
/// `lane` is NULL or from `ipsec_shared_sa_new`, not freed before, used by no other
/// thread during the call, and not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_lane_free(lane: *mut ipsec_sa_lane) {
    // SAFETY: caller's contract.
    boundary(|| unsafe { free_handle(lane) })
}

/// Writes the sum of the counters the lanes published into `*out` (see the module
/// docs: a lane publishes when it leases a block of sequence numbers, every 64 inbound
/// packets, at `ipsec_sa_lane_publish` and when it is freed). Any thread.
///
/// # Safety
///
/// `shared` is a live shared SA; `out` points to a writable `ipsec_sa_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_shared_sa_get_stats(
    shared: *const ipsec_shared_sa,
    out: *mut ipsec_sa_stats,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let shared = unsafe { borrow(shared, "shared") }?;
        let stats = shared.stats();
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write((&stats).into()) };
        Ok(())
    })
}

/// Outbound: the highest sequence number leased to a lane (every number up to it was
/// or will be used by exactly one lane; the initial `seq` of the configuration before
/// the first lease). Inbound: the highest sequence number accepted. 0 for NULL or a
/// poisoned handle (the last error says which). Any thread.
///
/// # Safety
///
/// `shared` is NULL or a live shared SA.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_shared_sa_seq(shared: *const ipsec_shared_sa) -> u64 {
    // SAFETY: caller's contract.
    boundary(|| unsafe { borrow(shared, "shared") }.map_or(0, |s| s.seq()))
}

/// The SA's SPI (any thread); 0 for NULL or a poisoned handle (the last error says
/// which).
///
/// # Safety
///
/// `shared` is NULL or a live shared SA.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_shared_sa_spi(shared: *const ipsec_shared_sa) -> u32 {
    // SAFETY: caller's contract.
    boundary(|| unsafe { borrow(shared, "shared") }.map_or(0, |s| s.spi()))
}

/// The room a packet of `packet_len` bytes needs on an outbound lane, as
/// `ipsec_sa_overhead` (every lane of an SA needs the same).
///
/// # Safety
///
/// `lane` is a live lane used by no other thread during the call; `out` points to a
/// writable `ipsec_overhead`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_lane_overhead(
    lane: *const ipsec_sa_lane,
    packet_len: usize,
    out: *mut ipsec_overhead,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let lane = unsafe { borrow(lane, "lane") }?;
        let value = ipsec_overhead {
            headroom: lane.max_headroom(),
            tailroom: lane.tailroom_for(packet_len),
            max_overhead: lane.max_overhead(),
        };
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(value) };
        Ok(())
    })
}

/// Writes the NAT-keepalive lane 0 owes the peer at `now_ns`, as
/// `ipsec_sa_poll_keepalive` (the same arguments and results). Only lane 0 of an SA
/// sends keepalives (one per NAT mapping is enough): the other lanes store 0.
///
/// # Safety
///
/// `lane` is a live lane used by no other thread during the call; `buf` points to
/// `capacity` writable bytes; `out_len` to a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_lane_poll_keepalive(
    lane: *mut ipsec_sa_lane,
    now_ns: u64,
    buf: *mut u8,
    capacity: usize,
    out_len: *mut usize,
) -> ipsec_status {
    call(|| {
        let out_len = out_ptr(out_len, "out_len")?;
        // SAFETY: caller's contract.
        let mut lane = unsafe { borrow_mut(lane, "lane") }?;
        // SAFETY: caller's contract.
        let buf = unsafe { bytes_mut(buf, capacity, "buf") }?;
        let out = keepalive_buffer(buf)?;
        let len = lane.poll_keepalive(now(now_ns), out).unwrap_or(0);
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out_len.write(len) };
        Ok(())
    })
}

/// When lane 0's next NAT-keepalive is due, as `ipsec_sa_next_keepalive`
/// (`UINT64_MAX`: none; always none on the other lanes).
///
/// # Safety
///
/// `lane` is a live lane used by no other thread during the call; `out_ns` points to a
/// writable `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_lane_next_keepalive(
    lane: *const ipsec_sa_lane,
    out_ns: *mut u64,
) -> ipsec_status {
    call(|| {
        let out_ns = out_ptr(out_ns, "out_ns")?;
        // SAFETY: caller's contract.
        let lane = unsafe { borrow(lane, "lane") }?;
        let due = time_ns(lane.next_keepalive());
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out_ns.write(due) };
        Ok(())
    })
}

/// Encrypts a packet in place with an outbound lane, as `ipsec_sa_encrypt` (the same
/// buffer arguments, results and statuses), with the next sequence number of the
/// lane's block (leasing a new block when it is used up).
/// `IPSEC_ERR_LIFETIME_EXPIRED` / `IPSEC_ERR_SEQUENCE_OVERFLOW` when the SA's sequence
/// numbers (or its hard packet lifetime) are used up by all lanes together.
///
/// # Safety
///
/// `lane` is a live lane used by no other thread during the call; `buf` points to
/// `capacity` writable bytes; `offset` and `length` point to writable `size_t`s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_lane_encrypt(
    lane: *mut ipsec_sa_lane,
    buf: *mut u8,
    capacity: usize,
    offset: *mut usize,
    length: *mut usize,
    now_ns: u64,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let mut lane = unsafe { borrow_mut(lane, "lane") }?;
        // SAFETY: caller's contract.
        unsafe {
            in_place(buf, capacity, offset, length, |p| {
                lane.encrypt(p, now(now_ns))
            })
        }
    })
}

/// Decrypts a packet in place with an inbound lane, as `ipsec_sa_decrypt` (the same
/// buffer arguments, results and statuses), checking and recording its sequence number
/// in the replay window all lanes share: a packet given to several lanes is accepted by
/// exactly one (the others: `IPSEC_ERR_REPLAY`).
///
/// # Safety
///
/// As `ipsec_sa_lane_encrypt`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_lane_decrypt(
    lane: *mut ipsec_sa_lane,
    buf: *mut u8,
    capacity: usize,
    offset: *mut usize,
    length: *mut usize,
    now_ns: u64,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let mut lane = unsafe { borrow_mut(lane, "lane") }?;
        // SAFETY: caller's contract.
        unsafe {
            in_place(buf, capacity, offset, length, |p| {
                lane.decrypt(p, now(now_ns))
            })
        }
    })
}

/// Encrypts `count` packets in place with an outbound lane: the burst form of
/// `ipsec_sa_lane_encrypt`, with the conventions of `ipsec_sa_encrypt_burst` (the
/// descriptors, statuses, value returned and panic handling; AES-CBC with HMAC in
/// groups of up to 32 through the SA's burst code). Sequence numbers, block leases,
/// statuses and counters are those of `ipsec_sa_lane_encrypt` on each packet in turn.
///
/// # Safety
///
/// `lane` is a live lane used by no other thread during the call; `packets` points to
/// `count` writable descriptors, each `buf` to `capacity` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_lane_encrypt_burst(
    lane: *mut ipsec_sa_lane,
    packets: *mut ipsec_packet,
    count: usize,
    now_ns: u64,
) -> usize {
    // SAFETY: caller's contract.
    unsafe { burst(lane, "lane", packets, count, BurstOp::Encrypt, now(now_ns)) }
}

/// Decrypts `count` packets in place with an inbound lane: the burst form of
/// `ipsec_sa_lane_decrypt` (each sequence number checked and recorded in the replay
/// window all lanes share), with the conventions of `ipsec_sa_encrypt_burst`.
///
/// # Safety
///
/// As `ipsec_sa_lane_encrypt_burst`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_lane_decrypt_burst(
    lane: *mut ipsec_sa_lane,
    packets: *mut ipsec_packet,
    count: usize,
    now_ns: u64,
) -> usize {
    // SAFETY: caller's contract.
    unsafe { burst(lane, "lane", packets, count, BurstOp::Decrypt, now(now_ns)) }
}

/// Copies the lane's own counters (exact, up to its last packet) into `*out`.
///
/// # Safety
///
/// `lane` is a live lane used by no other thread during the call; `out` points to a
/// writable `ipsec_sa_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_lane_get_stats(
    lane: *const ipsec_sa_lane,
    out: *mut ipsec_sa_stats,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let lane = unsafe { borrow(lane, "lane") }?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(crate::sa::with_use_time(&lane.stats(), lane.last_used())) };
        Ok(())
    })
}

/// Publishes the lane's counters to the shared part now (`ipsec_shared_sa_get_stats`
/// then counts every packet of this lane so far): e.g. before reading the sum when the
/// threads are idle.
///
/// # Safety
///
/// `lane` is a live lane used by no other thread during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_lane_publish(lane: *mut ipsec_sa_lane) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let lane = unsafe { borrow_mut(lane, "lane") }?;
        lane.publish();
        Ok(())
    })
}

/// The lane's next lifetime event at `now_ns`, as `ipsec_sa_poll_event` (each lane
/// raises its own: a byte or soft packet limit is split between the lanes, so the
/// first lane to reach its share raises it for the SA; time limits are the SA's).
///
/// # Safety
///
/// `lane` is a live lane used by no other thread during the call; `out` points to a
/// writable `ipsec_sa_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_lane_poll_event(
    lane: *mut ipsec_sa_lane,
    now_ns: u64,
    out: *mut ipsec_sa_event,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let mut lane = unsafe { borrow_mut(lane, "lane") }?;
        let event = event_to(lane.poll_event(now(now_ns)));
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(event) };
        Ok(())
    })
}

// The thread rules documented above, checked by the compiler: the shared part is read by
// any number of threads at once, a lane moves between threads.
const _: () = {
    const fn send<T: Send>() {}
    const fn send_sync<T: Send + Sync>() {}
    send::<SaLane>();
    send_sync::<SharedSa>();
};
