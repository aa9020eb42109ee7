//! Sleeping on a 32-bit word until another thread changes it: `futex(2)` on Linux, short
//! sleeps elsewhere. Used by host requesters waiting for completions and by idle daemon
//! workers waiting for the doorbell. (GPU requesters never sleep: they poll.)

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `*word == expected`, at most `timeout` (spurious wake-ups are fine).
#[cfg(target_os = "linux")]
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; FUTEX_WAIT only
    // reads it. The relative timeout is passed by pointer to a live local.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Wakes every thread sleeping on `word`.
#[cfg(target_os = "linux")]
pub(crate) fn wake(word: &AtomicU32) {
    wake_n(word, i32::MAX);
}

/// Wakes at most one thread sleeping on `word`.
#[cfg(target_os = "linux")]
pub(crate) fn wake_one(word: &AtomicU32) {
    wake_n(word, 1);
}

#[cfg(target_os = "linux")]
fn wake_n(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        );
    }
}

/// Portable stand-in: a short sleep (sleepers poll).
#[cfg(not(target_os = "linux"))]
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let _ = (word, expected);
    std::thread::sleep(timeout.min(Duration::from_micros(100)));
}

/// Portable stand-in: nothing to wake (sleepers poll).
#[cfg(not(target_os = "linux"))]
pub(crate) fn wake(word: &AtomicU32) {
    let _ = word;
}

/// Portable stand-in: nothing to wake (sleepers poll).
#[cfg(not(target_os = "linux"))]
pub(crate) fn wake_one(word: &AtomicU32) {
    let _ = word;
}
