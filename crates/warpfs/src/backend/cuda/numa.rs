//! Host memory placement near a GPU: which NUMA node a device's PCIe root sits on, the CPUs of
//! that node, and scoped memory/CPU binding so pinned staging buffers and the threads that fill
//! them live on the GPU's socket.
//!
//! Everything here reads sysfs (`/sys/bus/pci/devices/<bus id>/numa_node`,
//! `/sys/devices/system/node/node<N>/cpulist`) and uses two plain syscalls
//! (`set_mempolicy`, `sched_setaffinity`). On a machine with one node (or where sysfs says
//! `-1`) nothing is bound: placement only matters with several sockets.

use super::driver::{check, CudaResult};
use cudarc::driver::sys;
use std::path::Path;

/// `MPOL_DEFAULT` and `MPOL_PREFERRED` of `<linux/mempolicy.h>`.
const MPOL_DEFAULT: libc::c_int = 0;
const MPOL_PREFERRED: libc::c_int = 1;

/// Where a GPU sits: its PCI bus id and the NUMA node of its PCIe root (None when the machine
/// does not say or has a single node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// PCI bus id as the driver gives it, e.g. `0000:1b:00.0`.
    pub pci_bus_id: String,
    /// The NUMA node to bind to, only when the machine has more than one.
    pub node: Option<u32>,
    /// The CPUs of that node (empty when `node` is None).
    pub cpus: Vec<usize>,
}

/// Looks up where device `dev` sits. Costs one driver call and a few sysfs reads.
pub fn placement(dev: sys::CUdevice) -> CudaResult<Placement> {
    let mut buf = [0i8; 64];
    // SAFETY: buf holds 64 bytes, the length passed; dev is a valid device handle.
    check(
        unsafe { sys::cuDeviceGetPCIBusId(buf.as_mut_ptr(), buf.len() as i32, dev) },
        "cuDeviceGetPCIBusId",
    )?;
    // SAFETY: the driver wrote a NUL-terminated string into buf.
    let id = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .to_ascii_lowercase();
    Ok(placement_from_sysfs(Path::new("/sys"), &id))
}

/// [`placement`] from a sysfs tree rooted at `sys` (a test can pass a fake one).
pub fn placement_from_sysfs(sys: &Path, pci_bus_id: &str) -> Placement {
    let none = Placement {
        pci_bus_id: pci_bus_id.to_string(),
        node: None,
        cpus: Vec::new(),
    };
    if online_nodes(sys) < 2 {
        return none;
    }
    let node = std::fs::read_to_string(
        sys.join("bus/pci/devices")
            .join(pci_bus_id)
            .join("numa_node"),
    )
    .ok()
    .and_then(|s| s.trim().parse::<i64>().ok())
    .and_then(|n| u32::try_from(n).ok());
    let Some(node) = node else { return none };
    let cpus = std::fs::read_to_string(sys.join(format!("devices/system/node/node{node}/cpulist")))
        .ok()
        .and_then(|s| parse_cpulist(&s))
        .unwrap_or_default();
    if cpus.is_empty() {
        return none;
    }
    Placement {
        pci_bus_id: pci_bus_id.to_string(),
        node: Some(node),
        cpus,
    }
}

/// The number of online NUMA nodes (1 when sysfs does not say).
fn online_nodes(sys: &Path) -> usize {
    std::fs::read_to_string(sys.join("devices/system/node/online"))
        .ok()
        .and_then(|s| parse_cpulist(&s))
        .map_or(1, |v| v.len().max(1))
}

/// Parses a kernel list such as `0-7,16-23` or `3`; None if malformed or absurdly large.
pub fn parse_cpulist(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<usize>().ok()?,
                b.trim().parse::<usize>().ok()?,
            ),
            None => {
                let v = part.trim().parse::<usize>().ok()?;
                (v, v)
            }
        };
        if a > b || b >= 1 << 16 {
            return None;
        }
        out.extend(a..=b);
    }
    Some(out)
}

/// While alive, the calling thread's page allocations prefer one NUMA node (first touch and
/// the driver's pinning land there); dropping restores the default policy. A no-op for None.
#[derive(Debug)]
pub struct PreferNode(bool);

impl PreferNode {
    /// Prefers `node` for this thread's allocations until dropped. Failure (old kernel,
    /// seccomp) is logged and ignored: placement is an optimisation.
    pub fn new(node: Option<u32>) -> Self {
        let Some(node) = node.filter(|&n| n < 64) else {
            return Self(false);
        };
        let mask: libc::c_ulong = 1 << node;
        // SAFETY: set_mempolicy reads `maxnode` bits from the mask word we pass by pointer;
        // 64 bits fit one c_ulong.
        let r = unsafe {
            libc::syscall(
                libc::SYS_set_mempolicy,
                MPOL_PREFERRED,
                &mask as *const libc::c_ulong,
                64 as libc::c_ulong,
            )
        };
        if r != 0 {
            tracing::info!(node, error = %std::io::Error::last_os_error(), "set_mempolicy failed; staging memory placed by the default policy");
            return Self(false);
        }
        Self(true)
    }
}

impl Drop for PreferNode {
    fn drop(&mut self) {
        if self.0 {
            // SAFETY: MPOL_DEFAULT takes no mask (null, 0).
            unsafe {
                libc::syscall(
                    libc::SYS_set_mempolicy,
                    MPOL_DEFAULT,
                    std::ptr::null::<libc::c_ulong>(),
                    0 as libc::c_ulong,
                )
            };
        }
    }
}

/// Restricts the calling thread to `cpus` (no-op when empty). Failure is logged and ignored.
pub fn bind_thread(cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: c is below CPU_SETSIZE, the set's capacity.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: set is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "sched_setaffinity failed; thread left unbound");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulists_parse() {
        assert_eq!(
            parse_cpulist("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpulist("5"), Some(vec![5]));
        assert_eq!(parse_cpulist(""), Some(vec![]));
        assert_eq!(parse_cpulist("3-1"), None);
        assert_eq!(parse_cpulist("x"), None);
        assert_eq!(parse_cpulist("0-99999999"), None);
    }

    #[test]
    fn placement_reads_a_fake_sysfs() {
        let dir = std::env::temp_dir().join(format!("warpfs-numa-{}", std::process::id()));
        let id = "0000:1b:00.0";
        std::fs::create_dir_all(dir.join("bus/pci/devices").join(id)).unwrap();
        std::fs::create_dir_all(dir.join("devices/system/node/node1")).unwrap();
        std::fs::write(dir.join("devices/system/node/online"), "0\n").unwrap();
        std::fs::write(
            dir.join("bus/pci/devices").join(id).join("numa_node"),
            "1\n",
        )
        .unwrap();
        std::fs::write(dir.join("devices/system/node/node1/cpulist"), "16-19\n").unwrap();
        // One node: nothing to bind.
        assert_eq!(placement_from_sysfs(&dir, id).node, None);
        std::fs::write(dir.join("devices/system/node/online"), "0-1\n").unwrap();
        let p = placement_from_sysfs(&dir, id);
        assert_eq!(p.node, Some(1));
        assert_eq!(p.cpus, vec![16, 17, 18, 19]);
        // A device sysfs places nowhere (-1) is not bound.
        std::fs::write(
            dir.join("bus/pci/devices").join(id).join("numa_node"),
            "-1\n",
        )
        .unwrap();
        assert_eq!(placement_from_sysfs(&dir, id).node, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
