//! [`advise_huge_pages`]: the large arrays of a compiled SPD, on transparent huge pages
//! where the kernel offers them.
//!
//! A lookup in a classifier of 100,000 policies reads a few dozen cache lines spread
//! over tens of MiB: on 4 KiB pages nearly every one also misses the TLB (a few
//! thousand entries cover a dozen MiB), and the page walk adds to the miss. Once the
//! compile has written an array, Linux is asked to back it with 2 MiB pages
//! (`madvise(MADV_HUGEPAGE)`, honoured under the usual `transparent_hugepage=madvise`
//! and under `always`) and, with glibc's bindings, to do so at once
//! (`MADV_COLLAPSE`, Linux 6.1 and later: the compile's arrays reuse memory the
//! allocator already had, whose 4 KiB pages the first advice alone would leave until
//! the kernel's background collapsing reaches them). Only the whole, 2 MiB-aligned
//! parts of each array get huge pages (36 MiB of the 130 of a 100,000-policy
//! SPD). `spd_acl bench`, 100,000 policies, AMD EPYC Zen 4, interleaved pairs: IPv4
//! 61.5 -> 58.2 ns a lookup, IPv6 101.4 -> 99.0; 10,000 policies (arrays of a few
//! hundred KiB) unchanged. Every allocation of the process on huge pages (glibc's
//! `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, a deployment choice) gave 54 and 85 ns;
//! copying the arrays into 2 MiB-aligned allocations of their own put 65 MiB on huge
//! pages but gained no measurable time, and was not kept.
//!
//! The advice changes only how the kernel backs the pages, never their contents; where
//! it is refused (another kernel, no huge page free) nothing changes but the speed.
//! Nothing is asked where the administrator turned THP off (`never`), a setting
//! `MADV_COLLAPSE` alone would override; a process that opted out
//! (`prctl(PR_SET_THP_DISABLE)`) gets none either (the kernel accepts the first advice
//! without effect and refuses the collapse: measured on Linux 6.18). `rte_acl` gets
//! the same from DPDK's hugepage memory (the comparison in `scripts/spd-report.py` runs
//! it with `--no-huge`, on 4 KiB pages). To see it:
//! `grep AnonHugePages /proc/PID/smaps_rollup` of a process holding a large SPD.
//!
//! This module holds one `unsafe` block, justified below.
#![allow(unsafe_code)]

/// Arrays smaller than this are left alone: one 2 MiB page needs an aligned 2 MiB
/// inside the array, and a small array stays in the cache and its TLB entries anyway.
const HUGE_MIN_BYTES: usize = 2 << 20;

/// Asks the kernel to back the whole 2 MiB-aligned parts of `v` with huge pages, if
/// `v` is at least [`HUGE_MIN_BYTES`] (Linux; elsewhere nothing).
pub(crate) fn advise_huge_pages<T>(v: &[T]) {
    let bytes = size_of_val(v);
    if bytes >= HUGE_MIN_BYTES {
        advise(v.as_ptr().cast::<u8>(), bytes);
    }
}

/// Whether the system lets a process ask for huge pages: its
/// `transparent_hugepage/enabled` setting is `always` or `madvise` (read once). An
/// administrator who chose `never` (or a kernel without THP) is obeyed: nothing is
/// advised (`MADV_COLLAPSE` does not consult that setting).
#[cfg(all(target_os = "linux", not(miri)))]
fn huge_pages_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
    })
}

/// The advice for the whole 4 KiB pages of `len` bytes from `start` (not under Miri,
/// which has no `madvise`).
#[cfg(all(target_os = "linux", not(miri)))]
fn advise(start: *const u8, len: usize) {
    const PAGE: usize = 4096;
    let from = (start as usize).next_multiple_of(PAGE);
    let to = (start as usize + len) & !(PAGE - 1);
    if to <= from || !huge_pages_allowed() {
        return;
    }
    let advice = [
        libc::MADV_HUGEPAGE,
        #[cfg(target_env = "gnu")]
        libc::MADV_COLLAPSE,
    ];
    for a in advice {
        // SAFETY: `madvise` with `MADV_HUGEPAGE` or `MADV_COLLAPSE` reads and writes no
        // memory of the program: it marks the virtual range so that the kernel may back
        // it with 2 MiB pages, or replaces its 4 KiB pages by 2 MiB pages holding the
        // same bytes; the contents of every page stay what they are. The range is whole
        // pages inside the live slice `v` the caller borrows (`from..to` lies within
        // `start..start + len`).
        let refused = unsafe { libc::madvise(from as *mut libc::c_void, to - from, a) } != 0;
        if refused {
            // An old kernel, or the kernel refused for this process: the pages stay
            // as they were, and nothing more is asked.
            break;
        }
    }
}

#[cfg(any(not(target_os = "linux"), miri))]
fn advise(_: *const u8, _: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The advice keeps every byte (an advice that drops pages, `MADV_DONTNEED`,
    /// would read them back as zeros).
    #[test]
    fn advised_arrays_keep_their_contents() {
        let n = (HUGE_MIN_BYTES / 8) * 3 + 5;
        let big: Vec<u64> = (0..n as u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9) | 1)
            .collect();
        let want = big.clone();
        advise_huge_pages(&big);
        assert_eq!(big, want);
        let small: Vec<u32> = (1..1000).collect();
        advise_huge_pages(&small);
        assert!(small.iter().zip(1..).all(|(&x, i)| x == i));
    }
}
