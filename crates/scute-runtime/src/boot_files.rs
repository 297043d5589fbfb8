//! QEMU keeps the guest kernel and initramfs mapped for the VM's whole life:
//! its fw_cfg would hand them to the guest again on a reset, which a scute
//! VM never has (`-no-reboot`, a panic ends QEMU). Once the agent is ready
//! those pages are dead weight in every sandbox, ~24 MiB with scute's
//! kernel, so scute has the host kernel page them out of QEMU
//! (`process_madvise(MADV_PAGEOUT)`). They are clean file pages: dropped
//! from memory unless another VM maps them too (then they are shared and
//! stay), and read back from disk should QEMU ever touch them again.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A file as `/proc/<pid>/maps` names it: device major, minor, inode.
type FileId = (u32, u32, u64);

fn file_id(path: &Path) -> std::io::Result<FileId> {
    let m = std::fs::metadata(path)?;
    let dev = m.dev();
    Ok((libc::major(dev), libc::minor(dev), m.ino()))
}

/// The address ranges of `maps` (the text of `/proc/<pid>/maps`) that map
/// one of `files`.
fn ranges(maps: &str, files: &[FileId]) -> Vec<(u64, u64)> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (range, _perms, _offset, dev, inode) =
                (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let (major, minor) = dev.split_once(':')?;
            let id = (
                u32::from_str_radix(major, 16).ok()?,
                u32::from_str_radix(minor, 16).ok()?,
                inode.parse::<u64>().ok()?,
            );
            if id.2 == 0 || !files.contains(&id) {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let (start, end) = (
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            );
            (end > start).then_some((start, end))
        })
        .collect()
}

/// Pages `files` out of process `pid`'s mappings. Returns how many bytes
/// of mappings were advised (0 when the process maps none of them).
pub fn page_out(pid: u32, files: &[&Path]) -> std::io::Result<u64> {
    let ids = files
        .iter()
        .map(|p| file_id(p))
        .collect::<std::io::Result<Vec<_>>>()?;
    // The pidfd first: the maps read after it are the process it names.
    let pidfd = crate::procs::pidfd_open(pid).ok_or_else(std::io::Error::last_os_error)?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let found = ranges(&maps, &ids);
    if found.is_empty() {
        return Ok(0);
    }
    let iov: Vec<libc::iovec> = found
        .iter()
        .map(|&(start, end)| libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: (end - start) as usize,
        })
        .collect();
    // SAFETY: the iovecs describe addresses in another process, which the
    // kernel validates; this process's memory is only read (the array).
    let n = unsafe {
        libc::syscall(
            libc::SYS_process_madvise,
            pidfd.as_raw_fd(),
            iov.as_ptr(),
            iov.len(),
            libc::MADV_PAGEOUT,
            0u32,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d4c8a00000-55d4c8b00000 r--p 00000000 fe:01 131 /usr/bin/qemu-system-x86_64
7f0000000000-7f0000c00000 r--p 00000000 fe:01 4242 /var/lib/scute/assets/vmlinux
7f0001000000-7f0001b9b000 r--p 00000000 fe:01 4243 /var/lib/scute/assets/initrd-scute.img (deleted)
7f0002000000-7f0002001000 rw-p 00000000 00:00 0 
7f0003000000-7f0003001000 r--p 00000000 00:1c 4242 /other/fs/same-inode
garbage line
";

    #[test]
    fn only_the_named_files_ranges_are_found() {
        let r = ranges(MAPS, &[(0xfe, 1, 4242), (0xfe, 1, 4243)]);
        assert_eq!(
            r,
            [
                (0x7f0000000000, 0x7f0000c00000),
                (0x7f0001000000, 0x7f0001b9b000)
            ]
        );
        assert!(ranges(MAPS, &[(0xfe, 1, 1)]).is_empty());
        // Anonymous mappings (inode 0) never match.
        assert!(ranges(MAPS, &[(0, 0, 0)]).is_empty());
    }

    #[test]
    fn a_file_this_process_maps_is_paged_out_of_it() {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        f.flush().unwrap();
        // Written back and dropped, so the reads below fault the file in
        // from disk, as QEMU's do (pages fresh from write() may sit in
        // forms reclaim skips).
        f.as_file().sync_all().unwrap();
        // SAFETY: an advice call on a descriptor this test owns.
        let r = unsafe {
            libc::posix_fadvise(f.as_file().as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
        };
        assert_eq!(r, 0);
        let file = std::fs::File::open(f.path()).unwrap();
        // SAFETY: a private read-only mapping of a file nobody else writes.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                1 << 20,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        // SAFETY: reads inside the mapping just made.
        let sum: u64 = (0..256)
            .map(|i| unsafe { *(map as *const u8).add(i * 4096) } as u64)
            .sum();
        assert_eq!(sum, 7 * 256);
        let resident = || {
            let mut vec = vec![0u8; 256];
            // SAFETY: `vec` has one byte per page of the 1 MiB mapping.
            assert_eq!(unsafe { libc::mincore(map, 1 << 20, vec.as_mut_ptr()) }, 0);
            vec.iter().filter(|b| *b & 1 == 1).count()
        };
        assert_eq!(resident(), 256);
        // Pages still in a CPU's LRU batch are skipped; each call drains
        // the calling CPU's batch, so a few tries see them all.
        for _ in 0..20 {
            let advised = page_out(std::process::id(), &[f.path()]).unwrap();
            assert_eq!(advised, 1 << 20);
            if resident() < 16 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            resident() < 16,
            "{} of 256 pages still resident",
            resident()
        );
        assert_eq!(page_out(std::process::id(), &[Path::new("/")]).unwrap(), 0);
        // SAFETY: the mapping made above, unmapped once.
        unsafe { libc::munmap(map, 1 << 20) };
    }
}
