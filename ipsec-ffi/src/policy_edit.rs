//! Policy changes compiled away from the gateway (`ipsec_core::PolicyEdit`): take an
//! edit (`ipsec_gateway_edit_policies`, a copy of the gateway's policies), change it
//! (`ipsec_policy_edit_install` / `_replace` / `_remove`, checked as the gateway's own
//! policy calls are), compile it on any thread (`ipsec_policy_edit_compile`: the
//! expensive step, a new classifier for the whole SPD; no gateway needed), then swap the
//! result in (`ipsec_gateway_commit_policies`), which hands back the policies it
//! replaced (`ipsec_retired_policies`) to be freed after the lock is released, on any
//! thread (`ipsec_retired_policies_free`: freeing an SPD is the expensive part of a
//! commit, a third of a second at 100,000 policies). A gateway whose packet threads
//! share one lock holds it only to take the edit (O(changes pending): it shares the
//! gateway's policies, copying none) and to commit (O(1)), never for the compile or
//! the free.
//!
//! * **All or nothing.** A refused edit call changes nothing in the edit; a refused
//!   commit changes nothing in the gateway: `IPSEC_ERR_STALE_POLICIES` when the
//!   gateway's policies changed after the edit was taken (by another commit or a policy
//!   control call: take a new edit and make the changes again), `IPSEC_ERR_MISSING_SA`
//!   when an SA a policy names was deleted (or is being retired) since.
//! * **Name strings.** A commit that succeeds is a control call that succeeds: the
//!   strings of policies it removes stay valid until the next one, as
//!   `ipsec_gateway_remove_policy`'s do; the policies it keeps keep their strings.
//!
//! In C, with one lock around the gateway:
//!
//! ```c
//! ipsec_policy_edit *edit; ipsec_compiled_policies *compiled;
//! ipsec_retired_policies *retired = NULL;
//! lock(); ipsec_gateway_edit_policies(gw, &edit); unlock();
//! ipsec_policy_edit_install(edit, policy_toml, "deny-all");
//! ipsec_policy_edit_remove(edit, "old");
//! ipsec_policy_edit_compile(edit, &compiled);                 /* edit consumed */
//! lock(); st = ipsec_gateway_commit_policies(gw, compiled, &retired); unlock();
//! ipsec_retired_policies_free(retired);       /* the expensive part, unlocked */
//! if (st == IPSEC_ERR_STALE_POLICIES) { /* edit again from the current policies */ }
//! ```

use core::ffi::c_char;
use std::collections::HashSet;

use ipsec_core::{CompiledPolicies, PolicyEdit, RetiredPolicies};

use crate::boundary::{boundary, call, invalid};
use crate::control::refused;
use crate::gateway::ipsec_gateway;
use crate::handle::{
    Handle, borrow, borrow_mut, c_str, free_handle, into_handle, out_ptr, take_handle,
};
use crate::status::ipsec_status;

/// A batch of policy changes taken from a gateway (`ipsec_gateway_edit_policies`): its
/// policies, and the SA names they may use, as they were then (shared with the
/// gateway, not copied; the edit copies the policies when first changed).
///
/// Thread safety: one thread at a time; it may move between threads. It holds no
/// reference to the gateway: its calls need neither the gateway's thread nor its
/// lock, and it may outlive the gateway.
pub struct ipsec_policy_edit {
    _private: [u8; 0],
}

/// An edit, the gateway it was taken from, and the net change of policy names it makes
/// (so that a commit updates the gateway's name strings in O(changes)).
pub(crate) struct EditHandle {
    edit: PolicyEdit,
    gateway: u64,
    names: NameChanges,
}

/// Policy names an edit removes and adds, net: a name removed then installed again (or
/// the reverse) is in neither set.
#[derive(Default)]
pub(crate) struct NameChanges {
    removed: HashSet<Box<str>>,
    added: HashSet<Box<str>>,
}

impl NameChanges {
    fn installed(&mut self, name: &str) {
        if !self.removed.remove(name) {
            self.added.insert(Box::from(name));
        }
    }

    fn removed(&mut self, name: &str) {
        if !self.added.remove(name) {
            self.removed.insert(Box::from(name));
        }
    }
}

impl Handle for ipsec_policy_edit {
    type Inner = EditHandle;
}

/// Policies compiled by `ipsec_policy_edit_compile`, ready for
/// `ipsec_gateway_commit_policies` on the gateway the edit was taken from.
///
/// Thread safety: it may be built on any thread and handed to another (the gateway's);
/// one thread at a time uses it. It holds no reference to the gateway.
pub struct ipsec_compiled_policies {
    _private: [u8; 0],
}

/// Compiled policies, the gateway their edit was taken from, and the edit's name
/// changes.
pub(crate) struct CompiledHandle {
    compiled: CompiledPolicies,
    gateway: u64,
    names: NameChanges,
}

impl Handle for ipsec_compiled_policies {
    type Inner = CompiledHandle;
}

/// The policies a commit replaced (`ipsec_gateway_commit_policies`), handed back so
/// that the caller frees them outside the gateway's lock:
/// `ipsec_retired_policies_free` is the expensive part of a commit (O(policies)).
///
/// Thread safety: it may be freed on any thread; it holds no reference to the gateway.
pub struct ipsec_retired_policies {
    _private: [u8; 0],
}

impl Handle for ipsec_retired_policies {
    type Inner = RetiredPolicies;
}

/// Pending policy changes from which a gateway's policy classifier should be compiled
/// again (see `ipsec_gateway_pending_policy_changes`).
pub const IPSEC_POLICY_REBUILD_DUE: usize = 32;
const _: () = assert!(IPSEC_POLICY_REBUILD_DUE == ipsec_core::spd::REBUILD_DUE);

/// Policy changes pending beside the gateway's compiled classifier (0 for NULL): each
/// `ipsec_gateway_install_policy`, `_replace_policy` and `_remove_policy` is applied
/// in O(1) and checked at lookup beside the classifier; from
/// `IPSEC_POLICY_REBUILD_DUE` pending changes, compile them in: an unchanged batch
/// (`ipsec_gateway_edit_policies`, `ipsec_policy_edit_compile` on any thread,
/// `ipsec_gateway_commit_policies`), or `ipsec_gateway_rebuild_policies` on the spot.
/// Past 128 the next policy call compiles on the spot.
///
/// # Safety
///
/// `gateway` is NULL or a live gateway.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_pending_policy_changes(
    gateway: *const ipsec_gateway,
) -> usize {
    boundary(|| {
        // SAFETY: caller's contract.
        let h = unsafe { borrow(gateway, "gateway") };
        h.map_or(0, |h| h.gateway.pending_policy_changes())
    })
}

/// Compiles the gateway's policy classifier again here and now (O(n log n) in the
/// policies: about half a second at 100,000), so that no change is pending. The
/// policies do not change; a policy edit taken before stays valid. For doing it off
/// the packet thread, see `ipsec_gateway_pending_policy_changes`.
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_rebuild_policies(
    gateway: *mut ipsec_gateway,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let mut h = unsafe { borrow_mut(gateway, "gateway") }?;
        h.gateway.rebuild_policies();
        Ok(())
    })
}

/// Takes a batch of policy changes from the gateway's current policies and stores it in
/// `*out`: O(changes pending), whatever the number of policies and SAs (it shares the
/// gateway's policies and SA names, and copies the policies into order on the edit's
/// own thread when first changed or counted). Change it with `ipsec_policy_edit_install`,
/// `_replace` and `_remove`, compile it with `ipsec_policy_edit_compile`, or free it
/// with `ipsec_policy_edit_free`.
///
/// # Safety
///
/// `gateway` is a live gateway not being changed by another thread during the call (the
/// rule of `ipsec_gateway`); `out` points to a writable `ipsec_policy_edit *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_edit_policies(
    gateway: *const ipsec_gateway,
    out: *mut *mut ipsec_policy_edit,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let h = unsafe { borrow(gateway, "gateway") }?;
        let edit = EditHandle {
            edit: h.gateway.edit_policies(),
            gateway: h.id,
            names: NameChanges::default(),
        };
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(into_handle::<ipsec_policy_edit>(edit)) };
        Ok(())
    })
}

/// `ipsec_gateway_install_policy` on the edit: installs the policy `policy_toml` (one
/// `[[policy]]` table's text) before the policy `before` of the edit, or last when
/// `before` is NULL. Its SAs are checked against the SAs of the gateway when the edit
/// was taken.
///
/// Refused, with the edit unchanged: `IPSEC_ERR_CONFIG`, `IPSEC_ERR_DUPLICATE_POLICY`,
/// `IPSEC_ERR_MISSING_SA`, `IPSEC_ERR_UNKNOWN_POLICY` (as the gateway call),
/// `IPSEC_ERR_INVALID_ARGUMENT` (NULL `edit` or `policy_toml`, text that is not UTF-8).
///
/// # Safety
///
/// `edit` is a live edit used by no other thread during the call; `policy_toml` is a
/// NUL-terminated string; `before` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_policy_edit_install(
    edit: *mut ipsec_policy_edit,
    policy_toml: *const c_char,
    before: *const c_char,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let text = unsafe { c_str(policy_toml, "policy_toml") }?;
        let before = if before.is_null() {
            None
        } else {
            // SAFETY: caller's contract.
            Some(unsafe { c_str(before, "before") }?)
        };
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(edit, "edit") }?;
        let e = &mut *guard;
        // Where the policy goes (when `before` is unknown the install is refused).
        let at = match before {
            None => e.edit.policies().len(),
            Some(b) => e
                .edit
                .policies()
                .iter()
                .position(|p| p.name() == b)
                .unwrap_or(0),
        };
        e.edit.install(text, before).map_err(refused)?;
        let name = e.edit.policies()[at].name();
        e.names.installed(name);
        Ok(())
    })
}

/// `ipsec_gateway_replace_policy` on the edit: replaces the edit's policy of the same
/// name as `policy_toml` with it, in the same place.
///
/// Refused, with the edit unchanged: `IPSEC_ERR_CONFIG`, `IPSEC_ERR_UNKNOWN_POLICY`,
/// `IPSEC_ERR_MISSING_SA`, `IPSEC_ERR_INVALID_ARGUMENT` (as the gateway call).
///
/// # Safety
///
/// `edit` is a live edit used by no other thread during the call; `policy_toml` is a
/// NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_policy_edit_replace(
    edit: *mut ipsec_policy_edit,
    policy_toml: *const c_char,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let text = unsafe { c_str(policy_toml, "policy_toml") }?;
        // SAFETY: caller's contract.
        let mut edit = unsafe { borrow_mut(edit, "edit") }?;
        edit.edit.replace(text).map_err(refused)
    })
}

/// `ipsec_gateway_remove_policy` on the edit: removes its policy `name`.
///
/// Refused, with the edit unchanged: `IPSEC_ERR_UNKNOWN_POLICY`,
/// `IPSEC_ERR_INVALID_ARGUMENT` (NULL `edit` or `name`, a name that is not UTF-8).
///
/// # Safety
///
/// `edit` is a live edit used by no other thread during the call; `name` is a
/// NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_policy_edit_remove(
    edit: *mut ipsec_policy_edit,
    name: *const c_char,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let name = unsafe { c_str(name, "name") }?;
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(edit, "edit") }?;
        let e = &mut *guard;
        e.edit.remove(name).map_err(refused)?;
        e.names.removed(name);
        Ok(())
    })
}

/// The number of policies in the edit as changed so far (0 for NULL).
///
/// # Safety
///
/// `edit` is NULL or a live edit not being changed by another thread during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_policy_edit_count(edit: *const ipsec_policy_edit) -> usize {
    // SAFETY: caller's contract.
    boundary(|| unsafe { borrow(edit, "edit") }.map_or(0, |e| e.edit.policies().len()))
}

/// Compiles the edited policies (the expensive step: a new classifier for the whole
/// SPD) and stores the result in `*out`, for `ipsec_gateway_commit_policies`. Needs no
/// gateway: call it on any thread while the gateway goes on processing packets.
///
/// `edit` is consumed: freed by this call whatever it returns (do not use or free it
/// afterwards). `IPSEC_ERR_INVALID_ARGUMENT` for NULL `edit` or NULL / misaligned
/// `out` (nothing written).
///
/// # Safety
///
/// `edit` is NULL or a live edit used by no other thread during the call; `out` points
/// to a writable `ipsec_compiled_policies *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_policy_edit_compile(
    edit: *mut ipsec_policy_edit,
    out: *mut *mut ipsec_compiled_policies,
) -> ipsec_status {
    call(|| {
        // Taken first: consumed whatever happens next.
        // SAFETY: caller's contract.
        let edit = unsafe { take_handle(edit, "edit") }?;
        let out = out_ptr(out, "out")?;
        let compiled = CompiledHandle {
            compiled: edit.edit.compile(),
            gateway: edit.gateway,
            names: edit.names,
        };
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(into_handle::<ipsec_compiled_policies>(compiled)) };
        Ok(())
    })
}

/// Swaps the compiled policies into the gateway the edit was taken from: O(1) for the
/// SPD (the classifier was built by `ipsec_policy_edit_compile`), plus the library's
/// policy name strings, O(policies installed or removed by the edit). Remembered
/// fragment decisions and the SPD cache are emptied, as by every policy change.
///
/// The policies replaced are not freed here when `retired` is not NULL: on success
/// `*retired` gets them (written only on success), for `ipsec_retired_policies_free`
/// after the gateway's lock is released, on any thread; freeing them is the expensive
/// part (a third of a second at 100,000 policies). With `retired` NULL this call frees
/// them itself.
///
/// `compiled` is consumed: freed by this call whatever it returns, even when refused
/// (do not use or free it afterwards; a refused commit frees it here).
///
/// Refused, with the gateway unchanged: `IPSEC_ERR_STALE_POLICIES` (the gateway's
/// policies changed after the edit was taken: take a new edit), `IPSEC_ERR_MISSING_SA`
/// (a policy names an SA deleted, or being retired, since), `IPSEC_ERR_INVALID_ARGUMENT`
/// (NULL `gateway` or `compiled`, or policies edited from another gateway).
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call;
/// `compiled` is NULL or from `ipsec_policy_edit_compile`, not freed before;
/// `retired` is NULL or points to a writable `ipsec_retired_policies *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_commit_policies(
    gateway: *mut ipsec_gateway,
    compiled: *mut ipsec_compiled_policies,
    retired: *mut *mut ipsec_retired_policies,
) -> ipsec_status {
    call(|| {
        // Taken first: consumed whatever happens next.
        // SAFETY: caller's contract.
        let compiled = unsafe { take_handle(compiled, "compiled") }?;
        let retired = if retired.is_null() {
            None
        } else {
            Some(out_ptr(retired, "retired")?)
        };
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        let h = &mut *guard;
        if compiled.gateway != h.id {
            return Err(invalid(
                "`compiled` holds policies edited from another gateway: take the edit \
                 from this one (ipsec_gateway_edit_policies)",
            ));
        }
        let names = compiled.names;
        let old = h
            .gateway
            .commit_policies(compiled.compiled)
            .map_err(refused)?;
        h.free_stale();
        h.apply_policy_name_changes(
            names.removed.iter().map(|n| &**n),
            names.added.iter().map(|n| &**n),
        );
        match retired {
            // SAFETY: checked non-NULL and aligned; writable by contract.
            Some(out) => unsafe { out.write(into_handle::<ipsec_retired_policies>(old)) },
            None => drop(old),
        }
        Ok(())
    })
}

/// Frees the policies a commit replaced (`ipsec_gateway_commit_policies`): O(policies),
/// the expensive part of a commit; call it after releasing the gateway's lock, on any
/// thread. NULL is ignored.
///
/// # Safety
///
/// `retired` is NULL or from `ipsec_gateway_commit_policies`, not freed before, not
/// used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_retired_policies_free(retired: *mut ipsec_retired_policies) {
    // SAFETY: caller's contract.
    boundary(|| unsafe { free_handle(retired) })
}

/// Frees an edit without compiling it. NULL is ignored.
///
/// # Safety
///
/// `edit` is NULL or from `ipsec_gateway_edit_policies`, not freed or consumed before,
/// not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_policy_edit_free(edit: *mut ipsec_policy_edit) {
    // SAFETY: caller's contract.
    boundary(|| unsafe { free_handle(edit) })
}

/// Frees compiled policies without committing them. NULL is ignored.
///
/// # Safety
///
/// `compiled` is NULL or from `ipsec_policy_edit_compile`, not freed or consumed
/// before, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_compiled_policies_free(compiled: *mut ipsec_compiled_policies) {
    // SAFETY: caller's contract.
    boundary(|| unsafe { free_handle(compiled) })
}

// The thread rules documented above, checked by the compiler: an edit and compiled
// policies move between threads (built on one, committed on the gateway's).
const _: () = {
    const fn send<T: Send>() {}
    send::<EditHandle>();
    send::<CompiledHandle>();
    send::<RetiredPolicies>();
};
