//! Host-wide facts every berth process shares: which kernel boot a record
//! belongs to, and the one lock that serialises changes to host-wide
//! objects (the `inet berth` table, shared published ports, overlay
//! datapaths) between the CNI plugins and berthd.

use std::fs;
use std::io;
use std::path::Path;

/// The directory whose flock is berth's host-wide lock.
pub const LOCK_DIR: &str = "/run/berth";

/// This boot's ID (random per boot, from the kernel). Where /run outlives
/// a reboot (it is ext4 on some hosts), a record from another boot is
/// stale. Empty when the kernel does not say.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Takes berth's host-wide lock ([`LOCK_DIR`]), held until dropped.
pub fn lock() -> io::Result<nix::fcntl::Flock<fs::File>> {
    crate::file::lock_dir(Path::new(LOCK_DIR))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_boot_id_is_the_kernels() {
        let id = super::boot_id();
        assert_eq!(id.len(), 36, "{id:?}");
        assert_eq!(id, super::boot_id());
    }
}
