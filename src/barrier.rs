//! Asymmetric barriers: a Dekker handshake where one side runs constantly and the other
//! rarely, so the rare side pays for both.
//!
//! The single producer's claim (`store/lanes.rs`) stores the tail with no read-modify-write;
//! `close`, and a consumer about to sleep, must still be sure to see that claim or be seen by
//! it (store, then load, on both sides: the classic Dekker pattern, which needs a full barrier
//! between the store and the load on *both* sides). Here the producer's side, [`light`], is a
//! compiler fence only, and the rare side, [`heavy`], asks the kernel to run a full barrier on
//! every CPU that is running a thread of this process (Linux `membarrier`,
//! `MEMBARRIER_CMD_PRIVATE_EXPEDITED`, about half a microsecond here): any thread then either
//! executed its store before that barrier (so the heavy side's load sees it) or executes its
//! load after it (so it sees the heavy side's store). A thread that is not running has passed a
//! context switch, itself a full barrier. This is the pattern of Linux's `sys_membarrier`
//! documentation, liburcu, folly's `asymmetricHeavyBarrier` and the `haphazard` crate.
//!
//! Where `membarrier` is unavailable (another OS, an old kernel, a sandbox that filters the
//! call), [`register`] says so and the store builds no single-producer lane: its producer
//! handle claims on the shared ring with the CAS, as every other producer does. Under loom both
//! barriers are SeqCst fences (loom cannot model `membarrier`; fences on both sides are the
//! C++ model's reading of it).

#[cfg(loom)]
use crate::sync::{Ordering, fence};
#[cfg(not(loom))]
use std::sync::atomic::{Ordering as StdOrdering, compiler_fence};

/// Registers the process for expedited `membarrier` (once); true if [`light`] and [`heavy`]
/// may be used. Called when a store with a single-producer lane is built, so the registration
/// happens-before the lane's producer exists.
pub(crate) fn register() -> bool {
    #[cfg(all(target_os = "linux", not(loom)))]
    {
        static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *REGISTERED.get_or_init(linux::register)
    }
    #[cfg(all(not(target_os = "linux"), not(loom)))]
    return false;
    #[cfg(loom)]
    return true;
}

/// The frequent side's barrier, between its store and its load. Only valid once [`register`]
/// returned true.
#[inline(always)]
pub(crate) fn light() {
    // Keeps the compiler from moving the load above the store; the CPU is handled by `heavy`.
    #[cfg(not(loom))]
    compiler_fence(StdOrdering::SeqCst);
    #[cfg(loom)]
    fence(Ordering::SeqCst);
}

/// The rare side's barrier, between its store and its load: pairs with every [`light`] run by
/// any thread of the process. Only valid once [`register`] returned true.
pub(crate) fn heavy() {
    #[cfg(all(target_os = "linux", not(loom)))]
    linux::barrier();
    #[cfg(all(not(target_os = "linux"), not(loom)))]
    unreachable!("no single-producer lane without membarrier");
    #[cfg(loom)]
    fence(Ordering::SeqCst);
}

#[cfg(all(target_os = "linux", not(loom)))]
mod linux {
    /// `MEMBARRIER_CMD_QUERY`: which commands the kernel supports.
    const QUERY: libc::c_int = 0;
    /// `MEMBARRIER_CMD_PRIVATE_EXPEDITED`: a full barrier on every CPU running this process.
    const PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    /// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED`: required once before the above.
    const REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

    fn membarrier(cmd: libc::c_int) -> libc::c_long {
        // SAFETY: `membarrier(cmd, flags = 0, cpu_id = 0)` takes no pointers; an unknown or
        // filtered command only returns an error.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                cmd,
                0 as libc::c_uint,
                0 as libc::c_int,
            )
        }
    }

    /// True once the process may use [`barrier`].
    pub(super) fn register() -> bool {
        let supported = membarrier(QUERY);
        supported >= 0
            && supported & libc::c_long::from(PRIVATE_EXPEDITED) != 0
            && membarrier(REGISTER_PRIVATE_EXPEDITED) == 0
    }

    /// The heavy barrier. Cannot fail once registered (the kernel guarantees it).
    pub(super) fn barrier() {
        let done = membarrier(PRIVATE_EXPEDITED);
        // A failure here would leave the light sides unprotected; the kernel documents none
        // for a registered process, so treat one as the bug it would be.
        assert_eq!(done, 0, "membarrier failed after registration");
    }
}
