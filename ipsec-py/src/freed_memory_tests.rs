//! Key hygiene of the Python layer (issue 11, item 3): an `ipsec.Spd` keeps no copy of
//! the policy file's text, and what it keeps is wiped before its memory is freed.
//!
//! A checking global allocator (for this unit-test binary only) reads every block as
//! it is freed and counts, per thread, the blocks that still hold 16 characters of a
//! key's hex text or 8 bytes of a decoded key. Loading an `ipsec.Spd` (from text and
//! from a file), building a gateway from it as `ipsec.Gateway(spd)` does and dropping
//! everything must free no such block. (Before, `PySpd` held the text in a plain
//! `String`, freed unwiped.) The Python-object parts need an interpreter and are
//! covered by ipsec-py/tests; the conversions done here are the same functions.
#![allow(unsafe_code)]

use crate::spd::{PySpd, read_file};
use core::time::Duration;
use ipsec_core::Gateway;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

const KEY_HEX: &str = "5be10c3a97f24d68e1a05c7d39b2f84e6a1d0c97";
const KEY_BYTES: [u8; 8] = [0x5b, 0xe1, 0x0c, 0x3a, 0x97, 0xf2, 0x4d, 0x68];

const POLICY: &str = concat!(
    "[[policy]]\nname = \"p\"\ndirection = \"both\"\nlocal = \"10.0.0.0/24\"\n",
    "remote = \"10.1.0.0/24\"\naction = \"protect\"\nsa = [\"out\", \"in\"]\n\n",
    "[[sa]]\nname = \"out\"\nspi = 0x1000\ndirection = \"outbound\"\nmode = \"tunnel\"\n",
    "cipher = \"aes-128-gcm\"\ntunnel_src = \"192.0.2.1\"\ntunnel_dst = \"192.0.2.2\"\n",
    "key = \"5be10c3a97f24d68e1a05c7d39b2f84e6a1d0c97\"\n\n",
    "[[sa]]\nname = \"in\"\nspi = 0x1001\ndirection = \"inbound\"\nmode = \"tunnel\"\n",
    // A key of its own: the loaders refuse a key two SAs share.
    "cipher = \"aes-128-gcm\"\nkey = \"c0ffee0123456789abcdef0123456789abcdef01\"\n",
);

thread_local! {
    /// Blocks freed by this thread holding a piece of the key.
    static HITS: Cell<usize> = const { Cell::new(0) };
}

struct Checking;

// SAFETY: allocation and deallocation are forwarded unchanged to `System`; `dealloc`
// reads, then zeroes, the live block (`layout.size()` bytes) before freeing it, and allocates
// nothing (a const-initialised thread-local, touched with `try_with`). `realloc` is
// the trait's default (alloc, copy, dealloc), so old blocks are read too.
unsafe impl GlobalAlloc for Checking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is a live block of `layout.size()` bytes from `alloc` above.
        let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
        let hex = &KEY_HEX.as_bytes()[..16];
        if block.windows(16).any(|w| w == hex) || block.windows(8).any(|w| w == KEY_BYTES) {
            let _ = HITS.try_with(|h| h.set(h.get() + 1));
        }
        // Zeroed before reuse: what a block holds when freed was written in its lifetime.
        // Volatile writes (`zeroize`): a plain memset right before `free` is a dead store
        // the optimiser removes in release builds.
        // SAFETY: the same live block, written once before it is freed.
        zeroize::Zeroize::zeroize(unsafe { std::slice::from_raw_parts_mut(ptr, layout.size()) });
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Checking = Checking;

/// How many blocks freed by this thread during `f` held a piece of the key.
fn freed_key_blocks(f: impl FnOnce()) -> usize {
    HITS.with(|h| h.set(0));
    f();
    HITS.with(Cell::get)
}

#[test]
fn the_allocator_finds_a_plain_copy() {
    assert!(freed_key_blocks(|| drop(std::hint::black_box(POLICY.to_owned()))) > 0);
}

#[test]
fn a_python_spd_and_its_gateway_leave_no_key_behind() {
    let path = std::env::temp_dir().join(format!("ipsec-py-freed-{}.toml", std::process::id()));
    std::fs::write(&path, POLICY).expect("write the policy file");
    let found = freed_key_blocks(|| {
        let spd = PySpd::from_text(POLICY).expect("policy loads");
        // What `ipsec.Gateway(spd)` does with it.
        let gateway = Gateway::new(spd.core().clone(), Duration::ZERO).expect("gateway");
        assert_eq!(gateway.sas().count(), 2);
        drop((gateway, spd));
        let text = read_file(&path).expect("read");
        let spd = PySpd::from_text(&text).expect("policy file loads");
        drop((spd, text));
    });
    let _ = std::fs::remove_file(&path);
    assert_eq!(found, 0, "freed blocks still holding the key");
}
