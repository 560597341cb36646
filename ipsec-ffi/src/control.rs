//! The control plane of a live gateway (`ipsec_core::control`): what a key manager (an
//! IKE daemon) calls while packets flow. SAs: `ipsec_gateway_add_sa`,
//! `ipsec_gateway_rekey_sa` (make-before-break), `ipsec_gateway_delete_sa` and
//! `ipsec_gateway_retire_sa`; policies: `ipsec_gateway_install_policy`,
//! `ipsec_gateway_replace_policy` and `ipsec_gateway_remove_policy`, or, to keep the
//! parse (most of a policy call's cost) off the gateway's thread and out of its lock,
//! `ipsec_policy_parse` anywhere, then `ipsec_gateway_install_parsed_policy` or
//! `ipsec_gateway_replace_parsed_policy`.
//!
//! * **All or nothing.** A refused call returns the status of its reason (230..=238,
//!   one per `ControlError` variant, or `IPSEC_ERR_CONFIG`), the last-error message is
//!   the core's explanation, its `Display` text (it names SAs, policies and fields,
//!   never key bytes; an `ipsec_sa_config` refused before the core sees it is named
//!   `sa "name": field: ...` in the same way), and
//!   the gateway is as it was: its SAs, policies, counters and the name strings handed
//!   out. Invalid arguments (NULL, not UTF-8) are `IPSEC_ERR_INVALID_ARGUMENT`, also
//!   with nothing changed.
//! * **Threads.** A control call changes the gateway as a packet call does: one thread
//!   at a time, the same rule (and the same lock, if any) as `ipsec_gateway_outbound`
//!   and `ipsec_gateway_inbound`; see `ipsec_gateway`.
//! * **Name strings** handed out before stay valid as `ipsec_gateway` ("Name strings")
//!   says: a deleted SA's or removed policy's string until the next control call that
//!   succeeds.
//!
//! Make-before-break rekeying, in C:
//!
//! ```c
//! uint32_t spi;                                               /* the receiver */
//! ipsec_gateway_allocate_spi(rx, now, &spi);                  /* ... negotiate ... */
//! ipsec_gateway_rekey_sa(rx, "in-1", "in-2", &new_in, now);   /* both accept */
//! ipsec_gateway_rekey_sa(tx, "out-1", "out-2", &new_out, now); /* the sender switches */
//! ipsec_gateway_delete_sa(tx, "out-1", NULL);
//! ipsec_gateway_retire_sa(rx, "in-1", now + grace_ns);        /* late packets still in */
//! ```

use core::ffi::c_char;
use std::collections::HashSet;

use ipsec_core::{ControlError, LaneRefused, Policy, SaLane};

use crate::boundary::{boundary, call, fail, in_context};
use crate::gateway::{GatewayHandle, ipsec_gateway};
use crate::handle::{
    Handle, borrow, borrow_mut, c_str, free_handle, into_handle, out_ptr, take_handle,
};
use crate::sa::{ipsec_sa_config, ipsec_sa_stats, now, read_config, read_endpoints};
use crate::shared::ipsec_sa_lane;
use crate::status::ipsec_status;

/// Records a refused control call: its status, and the core's message.
pub(crate) fn refused(e: ControlError) -> ipsec_status {
    fail(ipsec_status::of_control(&e), e.to_string())
}

/// The configuration of the new SA `name`; an error found converting it names the SA
/// (`sa "name": tunnel_src: ...`), as those the core finds do.
///
/// # Safety
///
/// As [`read_config`].
unsafe fn sa_config(
    config: *const ipsec_sa_config,
    name: &str,
) -> Result<ipsec_core::SaConfig, ipsec_status> {
    // SAFETY: forwarded caller's contract.
    unsafe { read_config(config) }.map_err(|st| in_context(st, &format!("sa {name:?}")))
}

impl GatewayHandle {
    /// After an SA `name` was installed: the strings of the last call's removals go,
    /// the new name gets its string.
    pub(crate) fn sa_installed(&mut self, name: &str) {
        self.free_stale();
        self.names.add(name);
        self.check_names();
    }

    /// Updates the policy names after a committed batch (`ipsec_gateway_commit_policies`):
    /// the gateway's policies were those of the edit's start (a commit over changed
    /// policies is refused as stale), so the names change by what the batch removed and
    /// added: O(changes), not O(policies).
    pub(crate) fn apply_policy_name_changes<'a>(
        &mut self,
        removed: impl Iterator<Item = &'a str>,
        added: impl Iterator<Item = &'a str>,
    ) {
        for name in removed {
            self.policy_names.remove(name);
        }
        for name in added {
            self.policy_names.add(name);
        }
        self.check_names();
        if cfg!(test) {
            let installed: HashSet<&str> = self
                .gateway
                .spd()
                .policies()
                .iter()
                .map(|p| p.name())
                .collect();
            assert!(self.policy_names.names().all(|n| installed.contains(n)));
        }
    }

    /// In this crate's unit tests: the name caches hold exactly the gateway's SAs and
    /// policies (O(n), so not in a library build: the SA calls stay O(1)).
    fn check_names(&self) {
        if !cfg!(test) {
            return;
        }
        assert_eq!(self.names.len(), self.gateway.sas().count());
        assert!(
            self.gateway
                .sas()
                .all(|(n, _)| !self.names.ptr(n).is_null())
        );
        assert_eq!(self.policy_names.len(), self.gateway.spd().policies().len());
    }
}

/// Installs a new SA called `name` in the gateway, created from `*config` at time
/// `now_ns` exactly as `ipsec_sa_new` creates one (keys are copied). Policies may name
/// it from now on (`ipsec_gateway_install_policy`); an inbound SA accepts its packets
/// at once. Its SPI, if it was allocated by `ipsec_gateway_allocate_spi`, is in use from
/// now on.
///
/// Refused, with nothing changed: `IPSEC_ERR_DUPLICATE_NAME` (the name is taken),
/// `IPSEC_ERR_DUPLICATE_SPI` (an inbound SA has the SPI), `IPSEC_ERR_CONFIG` (an
/// invalid configuration or an empty name, or a cipher or integrity key that an
/// installed SA uses: keys are never shared; the message names the SA and the field,
/// `sa "name": key: ...`), `IPSEC_ERR_INVALID_ARGUMENT` (NULL `gateway`, `name` or
/// `config`, a name that is not UTF-8, an enum field out of range).
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `name` is a
/// NUL-terminated string; `config` points to an initialised `ipsec_sa_config` whose
/// pointers are valid as documented.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_add_sa(
    gateway: *mut ipsec_gateway,
    name: *const c_char,
    config: *const ipsec_sa_config,
    now_ns: u64,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let name = unsafe { c_str(name, "name") }?;
        // SAFETY: caller's contract.
        let config = unsafe { sa_config(config, name) }?;
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        let h = &mut *guard;
        h.gateway
            .add_sa(name, config, now(now_ns))
            .map_err(refused)?;
        h.sa_installed(name);
        Ok(())
    })
}

/// Installs the SA `name`, created from `*config` at `now_ns` (as
/// `ipsec_gateway_add_sa`), as the successor of the installed SA `replaces`
/// (make-before-break, RFC 7296 §2.8), both of one direction:
///
/// * inbound: the new SA accepts next to the old one and serves the policies the old
///   one serves; the old one accepts until deleted (`ipsec_gateway_delete_sa`) or
///   retired (`ipsec_gateway_retire_sa`). Rekey the inbound SA first, before the peer
///   switches.
/// * outbound: every policy that sent through `replaces` sends through `name` from the
///   next packet on; `replaces` sends no more and may be deleted.
///
/// Policies keep the SA names they were written with; the `sa` of an
/// `ipsec_gateway_result` names the SA that really processed the packet.
///
/// Refused, with nothing changed, as `ipsec_gateway_add_sa`, and with
/// `IPSEC_ERR_UNKNOWN_SA` (`replaces` is not installed) or
/// `IPSEC_ERR_DIRECTION_MISMATCH` (the new SA's direction is not that of `replaces`).
///
/// # Safety
///
/// As `ipsec_gateway_add_sa`; `replaces` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_rekey_sa(
    gateway: *mut ipsec_gateway,
    replaces: *const c_char,
    name: *const c_char,
    config: *const ipsec_sa_config,
    now_ns: u64,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let replaces = unsafe { c_str(replaces, "replaces") }?;
        // SAFETY: caller's contract.
        let name = unsafe { c_str(name, "name") }?;
        // SAFETY: caller's contract.
        let config = unsafe { sa_config(config, name) }?;
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        let h = &mut *guard;
        h.gateway
            .rekey_sa(replaces, name, config, now(now_ns))
            .map_err(refused)?;
        h.sa_installed(name);
        Ok(())
    })
}

/// Installs lane `*lane` of a shared SA (`ipsec_shared_sa_new`) in the gateway as the
/// SA `name`, as `ipsec_gateway_add_sa` installs an SA: the model for one SA on several
/// worker threads, each thread with its own gateway (one gateway per worker, each
/// control call made on every worker's gateway under that worker's lock; see
/// ipsec-ffi/README.md). An outbound lane takes its sequence numbers in blocks from the
/// shared counter; an inbound lane checks them in the SA's one replay window; the
/// lane's counters reach `ipsec_shared_sa_get_stats` when its SA is deleted from the
/// gateway or the gateway is freed.
///
/// On success the gateway owns the lane: `*lane` is set to NULL (the handle is gone;
/// do not free it). Refused as `ipsec_gateway_add_sa`, with nothing changed in the
/// gateway: `*lane` is then a live lane again, the caller's as before (its handle may
/// have moved: use the new `*lane`). `IPSEC_ERR_INVALID_ARGUMENT` for a NULL `lane` or
/// `*lane` (nothing taken).
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `name` is a
/// NUL-terminated string; `lane` points to a writable pointer to a live lane used by
/// no other thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_add_sa_lane(
    gateway: *mut ipsec_gateway,
    name: *const c_char,
    lane: *mut *mut ipsec_sa_lane,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let name = unsafe { c_str(name, "name") }?;
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        let h = &mut *guard;
        // SAFETY: caller's contract.
        let taken = unsafe { take_lane(lane) }?;
        match h.gateway.add_sa_lane(name, taken) {
            Ok(()) => {
                h.sa_installed(name);
                Ok(())
            }
            // SAFETY: `lane` was checked by `take_lane`.
            Err(r) => Err(unsafe { give_back(lane, r) }),
        }
    })
}

/// Installs lane `*lane` of a shared SA as the successor of the installed SA
/// `replaces`, as `ipsec_gateway_rekey_sa` installs an SA (make-before-break), with
/// `ipsec_gateway_add_sa_lane`'s ownership rules: `*lane` is NULL after success, a
/// live lane again after a refusal.
///
/// # Safety
///
/// As `ipsec_gateway_add_sa_lane`; `replaces` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_rekey_sa_lane(
    gateway: *mut ipsec_gateway,
    replaces: *const c_char,
    name: *const c_char,
    lane: *mut *mut ipsec_sa_lane,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let replaces = unsafe { c_str(replaces, "replaces") }?;
        // SAFETY: caller's contract.
        let name = unsafe { c_str(name, "name") }?;
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        let h = &mut *guard;
        // SAFETY: caller's contract.
        let taken = unsafe { take_lane(lane) }?;
        match h.gateway.rekey_sa_lane(replaces, name, taken) {
            Ok(()) => {
                h.sa_installed(name);
                Ok(())
            }
            // SAFETY: `lane` was checked by `take_lane`.
            Err(r) => Err(unsafe { give_back(lane, r) }),
        }
    })
}

/// Takes the lane behind `*lane` and sets `*lane` to NULL (so that a panic later in the
/// call leaves no dangling handle with the caller). Nothing is taken on an error.
///
/// # Safety
///
/// `lane` is NULL or points to a writable pointer that is NULL or a live lane.
unsafe fn take_lane(lane: *mut *mut ipsec_sa_lane) -> Result<SaLane, ipsec_status> {
    let lane = out_ptr(lane, "lane")?;
    // SAFETY: checked non-NULL and aligned; readable by contract.
    let handle = unsafe { lane.read() };
    // SAFETY: NULL or a live lane by contract; checked before it is taken, so that a
    // NULL or poisoned lane stays where it is.
    unsafe { borrow::<ipsec_sa_lane>(handle, "*lane") }?;
    // SAFETY: as above; the handle is given back exactly once, here.
    let taken = unsafe { take_handle::<ipsec_sa_lane>(handle, "*lane") }?;
    // SAFETY: checked non-NULL and aligned; writable by contract.
    unsafe { lane.write(core::ptr::null_mut()) };
    Ok(taken)
}

/// Gives a refused lane back to the caller in `*lane`; the status of the refusal.
///
/// # Safety
///
/// `lane` is non-NULL, aligned and writable (checked by [`take_lane`]).
unsafe fn give_back(lane: *mut *mut ipsec_sa_lane, refusal: LaneRefused) -> ipsec_status {
    // SAFETY: caller's contract.
    unsafe { lane.write(into_handle::<ipsec_sa_lane>(*refusal.lane)) };
    refused(refusal.error)
}

/// Deletes the SA `name` at once and, when `final_stats` is not NULL, writes its final
/// counters there. Its SPI is unknown to the next packet (`IPSEC_ERR_UNKNOWN_SPI`,
/// counted in the gateway's `unknown_spi`) and free for `ipsec_gateway_allocate_spi`
/// again; its keys are wiped. Its name string stays valid until the next control call
/// that succeeds (see `ipsec_gateway`).
///
/// Refused, with nothing changed (nothing written): `IPSEC_ERR_UNKNOWN_SA` (no SA has
/// the name), `IPSEC_ERR_SA_IN_USE` (a policy still needs it: an outbound SA that
/// carries a policy's traffic, an inbound SA that is the last to serve a policy),
/// `IPSEC_ERR_INVALID_ARGUMENT` (NULL `gateway` or `name`, a name that is not UTF-8, a
/// misaligned `final_stats`).
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `name` is a
/// NUL-terminated string; `final_stats` is NULL or points to a writable
/// `ipsec_sa_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_delete_sa(
    gateway: *mut ipsec_gateway,
    name: *const c_char,
    final_stats: *mut ipsec_sa_stats,
) -> ipsec_status {
    call(|| {
        let final_stats = if final_stats.is_null() {
            None
        } else {
            Some(out_ptr(final_stats, "final_stats")?)
        };
        // SAFETY: caller's contract.
        let name = unsafe { c_str(name, "name") }?;
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        let h = &mut *guard;
        let stats = h.gateway.delete_sa(name).map_err(refused)?;
        h.free_stale();
        h.names.remove(name);
        h.retiring.remove(name);
        h.check_names();
        if let Some(out) = final_stats {
            // SAFETY: checked non-NULL and aligned; writable by contract.
            unsafe { out.write((&stats).into()) };
        }
        Ok(())
    })
}

/// Deletes the SA `name` when the caller's clock reaches `at_ns` (the old inbound SA
/// of a rekey, kept for the packets still on their way): the first
/// `ipsec_gateway_inbound` for its SPI at or after `at_ns` finds it gone
/// (`IPSEC_ERR_UNKNOWN_SPI`), and `ipsec_gateway_poll_event` at or after `at_ns`
/// deletes it; `ipsec_gateway_sa_count` and `ipsec_gateway_get_sa` count it until then.
/// Calling it again moves the time. At `at_ns` it is deleted whatever names it then.
///
/// Refused, with nothing changed, as `ipsec_gateway_delete_sa` is on the state of now
/// (`IPSEC_ERR_UNKNOWN_SA`, `IPSEC_ERR_SA_IN_USE`, `IPSEC_ERR_INVALID_ARGUMENT`).
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `name` is a
/// NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_retire_sa(
    gateway: *mut ipsec_gateway,
    name: *const c_char,
    at_ns: u64,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let name = unsafe { c_str(name, "name") }?;
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        let h = &mut *guard;
        h.gateway.retire_sa(name, now(at_ns)).map_err(refused)?;
        h.free_stale();
        h.retiring.insert(Box::from(name), now(at_ns));
        Ok(())
    })
}

/// Moves the SA `name` to other tunnel endpoints (`tunnel_src`, `tunnel_dst`: both, or
/// both NULL for none) and UDP encapsulation (`udp_encap` with `udp_src_port` and
/// `udp_dst_port`, or plain ESP), keeping everything else: keys, sequence number,
/// replay window, lifetimes and their usage, counters, its name and the policies that
/// use it. What an IKE daemon's `update_sa` does when NAT-T finds a new mapping or
/// MOBIKE moves the peer: no rekey. The next outbound packet carries the new outer
/// header; an inbound SA found by its addresses (`ipsec_sa_config.lookup`) is found by
/// the new ones. A path MTU learned from ICMP is forgotten.
///
/// Refused, with nothing changed: `IPSEC_ERR_UNKNOWN_SA` (no SA has the name),
/// `IPSEC_ERR_CONFIG` (endpoints the SA cannot have, e.g. of two families, a port 0,
/// no endpoints for an outbound tunnel-mode SA, or a lane of a shared SA; the message
/// names the SA and the field), `IPSEC_ERR_DUPLICATE_SPI` (another inbound SA has the
/// new lookup key), `IPSEC_ERR_INVALID_ARGUMENT` (NULL `gateway` or `name`, strings
/// that are not UTF-8).
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `name` is a
/// NUL-terminated string; `tunnel_src` and `tunnel_dst` are NULL or NUL-terminated
/// strings.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn ipsec_gateway_update_sa(
    gateway: *mut ipsec_gateway,
    name: *const c_char,
    tunnel_src: *const c_char,
    tunnel_dst: *const c_char,
    udp_encap: bool,
    udp_src_port: u16,
    udp_dst_port: u16,
    now_ns: u64,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let name = unsafe { c_str(name, "name") }?;
        // SAFETY: caller's contract.
        let tunnel = unsafe { read_endpoints(tunnel_src, tunnel_dst) }
            .map_err(|st| in_context(st, &format!("sa {name:?}")))?;
        let encap = udp_encap.then_some((udp_src_port, udp_dst_port));
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        let h = &mut *guard;
        h.gateway
            .update_sa(name, tunnel, encap, now(now_ns))
            .map_err(refused)?;
        h.free_stale();
        Ok(())
    })
}

/// One policy, parsed on its own (`ipsec_policy_parse`) and not yet installed: for
/// `ipsec_gateway_install_parsed_policy` or `ipsec_gateway_replace_parsed_policy`,
/// which consume it, or `ipsec_policy_free`.
///
/// Thread safety: made, installed and freed on any thread (one at a time); it holds no
/// reference to a gateway.
pub struct ipsec_policy {
    _private: [u8; 0],
}

impl Handle for ipsec_policy {
    type Inner = Policy;
}

/// Parses the policy `policy_toml` (the text of one `[[policy]]` table of a policy
/// file, without the `[[policy]]` line, as `ipsec_gateway_install_policy` takes it)
/// without a gateway: on the key manager's thread, outside the gateway's lock. The
/// parse is most of what a policy call costs on the gateway's thread (a few µs warm,
/// tens of µs when the thread's caches hold packets); what is left for the gateway is
/// checking the SA names the policy gives and inserting it.
///
/// On success `*out` gets the policy (written only on success). Refused:
/// `IPSEC_ERR_CONFIG` (not a valid policy: the message names the policy and the key,
/// as the gateway's call would), `IPSEC_ERR_INVALID_ARGUMENT` (NULL `policy_toml`, text
/// that is not UTF-8, NULL or misaligned `out`).
///
/// # Safety
///
/// `policy_toml` is a NUL-terminated string; `out` points to a writable
/// `ipsec_policy *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_policy_parse(
    policy_toml: *const c_char,
    out: *mut *mut ipsec_policy,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let text = unsafe { c_str(policy_toml, "policy_toml") }?;
        let out = out_ptr(out, "out")?;
        let policy = Policy::from_toml(text).map_err(|e| refused(e.into()))?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(into_handle::<ipsec_policy>(policy)) };
        Ok(())
    })
}

/// Frees a parsed policy that was not installed. NULL is ignored.
///
/// # Safety
///
/// `policy` is NULL or from `ipsec_policy_parse`, not freed or consumed before, not
/// used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_policy_free(policy: *mut ipsec_policy) {
    // SAFETY: caller's contract.
    boundary(|| unsafe { free_handle(policy) })
}

/// Installs the policy `policy_toml` (the text of one `[[policy]]` table of a policy
/// file, without the `[[policy]]` line: `name = "web"`, `action = "bypass"`, ...)
/// before the installed policy `before`, or last when `before` is NULL (after a final
/// deny-all it would never match: name the deny-all). The SAs it names must be
/// installed, in the direction it uses them. The text is parsed here, on the
/// gateway's thread: `ipsec_policy_parse` and `ipsec_gateway_install_parsed_policy`
/// do the same with the parse elsewhere.
///
/// Refused, with nothing changed: `IPSEC_ERR_CONFIG` (not a valid policy, or an SA of
/// the wrong direction; the message names the policy and the key),
/// `IPSEC_ERR_DUPLICATE_POLICY` (a policy has its name), `IPSEC_ERR_MISSING_SA` (it
/// names an SA that is not installed), `IPSEC_ERR_UNKNOWN_POLICY` (`before` names no
/// policy), `IPSEC_ERR_INVALID_ARGUMENT` (NULL `gateway` or `policy_toml`, text that
/// is not UTF-8).
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `policy_toml`
/// is a NUL-terminated string; `before` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_install_policy(
    gateway: *mut ipsec_gateway,
    policy_toml: *const c_char,
    before: *const c_char,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let text = unsafe { c_str(policy_toml, "policy_toml") }?;
        // SAFETY: caller's contract.
        let before = unsafe { optional_str(before, "before") }?;
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        let policy = Policy::from_toml(text).map_err(|e| refused(e.into()))?;
        install_parsed(&mut guard, policy, before)
    })
}

/// `ipsec_gateway_install_policy` of a policy parsed beforehand (`ipsec_policy_parse`,
/// on any thread): the same checks, result and statuses, without the parse.
///
/// `policy` is consumed: freed by this call whatever it returns, even when refused
/// (do not use or free it afterwards).
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `policy` is
/// NULL or from `ipsec_policy_parse`, not freed or consumed before; `before` is NULL or
/// a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_install_parsed_policy(
    gateway: *mut ipsec_gateway,
    policy: *mut ipsec_policy,
    before: *const c_char,
) -> ipsec_status {
    call(|| {
        // Taken first: consumed whatever happens next.
        // SAFETY: caller's contract.
        let policy = unsafe { take_handle(policy, "policy") }?;
        // SAFETY: caller's contract.
        let before = unsafe { optional_str(before, "before") }?;
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        install_parsed(&mut guard, policy, before)
    })
}

/// A NUL-terminated string argument that may be NULL.
///
/// # Safety
///
/// `s` is NULL or a NUL-terminated string.
unsafe fn optional_str<'a>(
    s: *const c_char,
    name: &'static str,
) -> Result<Option<&'a str>, ipsec_status> {
    if s.is_null() {
        Ok(None)
    } else {
        // SAFETY: caller's contract.
        unsafe { c_str(s, name) }.map(Some)
    }
}

/// Installs `policy` in the gateway of `h` and gives its name a string.
fn install_parsed(
    h: &mut GatewayHandle,
    policy: Policy,
    before: Option<&str>,
) -> Result<(), ipsec_status> {
    let name: Box<str> = policy.name().into();
    h.gateway
        .install_parsed_policy(policy, before)
        .map_err(refused)?;
    h.free_stale();
    // The one new name: O(1), not a pass over every policy.
    h.policy_names.add(&name);
    h.check_names();
    Ok(())
}

/// Replaces the installed policy of the same name as `policy_toml` (one `[[policy]]`
/// table's text, as `ipsec_gateway_install_policy` takes) with it, in the same place
/// in the order: to narrow or widen its selectors, or move it to other SAs, in one
/// step. Its name string stays the same. `ipsec_policy_parse` and
/// `ipsec_gateway_replace_parsed_policy` do the same with the parse elsewhere.
///
/// Refused, with nothing changed: `IPSEC_ERR_CONFIG` (not a valid policy, or an SA of
/// the wrong direction), `IPSEC_ERR_UNKNOWN_POLICY` (no policy has its name),
/// `IPSEC_ERR_MISSING_SA` (it names an SA that is not installed),
/// `IPSEC_ERR_INVALID_ARGUMENT` (NULL `gateway` or `policy_toml`, text that is not
/// UTF-8).
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `policy_toml`
/// is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_replace_policy(
    gateway: *mut ipsec_gateway,
    policy_toml: *const c_char,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let text = unsafe { c_str(policy_toml, "policy_toml") }?;
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        let policy = Policy::from_toml(text).map_err(|e| refused(e.into()))?;
        replace_parsed(&mut guard, policy)
    })
}

/// `ipsec_gateway_replace_policy` of a policy parsed beforehand (`ipsec_policy_parse`,
/// on any thread): the same checks, result and statuses, without the parse.
///
/// `policy` is consumed: freed by this call whatever it returns, even when refused
/// (do not use or free it afterwards).
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `policy` is
/// NULL or from `ipsec_policy_parse`, not freed or consumed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_replace_parsed_policy(
    gateway: *mut ipsec_gateway,
    policy: *mut ipsec_policy,
) -> ipsec_status {
    call(|| {
        // Taken first: consumed whatever happens next.
        // SAFETY: caller's contract.
        let policy = unsafe { take_handle(policy, "policy") }?;
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        replace_parsed(&mut guard, policy)
    })
}

/// Replaces the policy of `policy`'s name in the gateway of `h`.
fn replace_parsed(h: &mut GatewayHandle, policy: Policy) -> Result<(), ipsec_status> {
    h.gateway.replace_parsed_policy(policy).map_err(refused)?;
    h.free_stale();
    // Same name, same string: the names do not change.
    h.check_names();
    Ok(())
}

/// Removes the policy `name`: its traffic is decided by the policies after it (DISCARD
/// when none matches). The SAs it named stay installed (and may now be deleted). Its
/// name string stays valid until the next control call that succeeds.
///
/// Refused, with nothing changed: `IPSEC_ERR_UNKNOWN_POLICY` (no policy has the name),
/// `IPSEC_ERR_INVALID_ARGUMENT` (NULL `gateway` or `name`, a name that is not UTF-8).
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `name` is a
/// NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_remove_policy(
    gateway: *mut ipsec_gateway,
    name: *const c_char,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let name = unsafe { c_str(name, "name") }?;
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        let h = &mut *guard;
        h.gateway.remove_policy(name).map_err(refused)?;
        h.free_stale();
        h.policy_names.remove(name);
        h.check_names();
        Ok(())
    })
}
