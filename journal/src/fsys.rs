//! File-system plumbing shared by the writer, recovery and the reader: directory listings of
//! segments and snapshots, directory fsync, the single-writer lock, preallocation, and the two
//! `unsafe` memory mappings (each with its soundness argument).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use memmap2::{Advice, Mmap, MmapMut, MmapOptions};

use crate::error::JournalError;

/// Journal, snapshot and lock files are the owner's alone: they hold every card's balance and
/// every PIN's hash.
pub(crate) const FILE_MODE: u32 = 0o600;
/// ... and so is a journal directory.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and its parents) readable by its owner only; an existing one is tightened.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
}
use crate::format::{self, SegmentHeader};

/// Name of the lock file every writer holds (with `flock`) for as long as it has the directory.
pub(crate) const LOCK_FILE_NAME: &str = "journal.lock";

/// A segment or snapshot file found in the directory, with the sequence number from its name.
#[derive(Clone, Debug)]
pub(crate) struct NumberedFile {
    pub seq: u64,
    pub path: PathBuf,
}

/// Segment files in `dir`, ordered by first sequence number. Other files are ignored.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<NumberedFile>, JournalError> {
    list_numbered(dir, format::parse_segment_file_name)
}

/// Snapshot files in `dir`, ordered by sequence number. Other files are ignored.
pub(crate) fn list_snapshots(dir: &Path) -> Result<Vec<NumberedFile>, JournalError> {
    list_numbered(dir, format::parse_snapshot_file_name)
}

fn list_numbered(
    dir: &Path,
    parse: fn(&str) -> Option<u64>,
) -> Result<Vec<NumberedFile>, JournalError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(JournalError::io(dir, "list journal directory"))? {
        let entry = entry.map_err(JournalError::io(dir, "list journal directory"))?;
        let name = entry.file_name();
        if let Some(seq) = name.to_str().and_then(parse) {
            found.push(NumberedFile { seq, path: entry.path() });
        }
    }
    found.sort_by_key(|file| file.seq);
    Ok(found)
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    let handle = File::open(dir).map_err(JournalError::io(dir, "open journal directory"))?;
    handle.sync_all().map_err(JournalError::io(dir, "fsync journal directory"))
}

/// Opens `path` for reading and writing, creating it (owner-only) if absent, never truncating.
fn open_or_create(path: &Path, action: &'static str) -> Result<File, JournalError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map_err(JournalError::io(path, action))
}

/// An exclusive `flock` on `journal.lock`, released when dropped (the kernel drops the lock
/// with the last descriptor). It is what makes "this process is the only writer" true, which
/// the mappings below rely on.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, JournalError> {
        let path = dir.join(LOCK_FILE_NAME);
        let file = open_or_create(&path, "open lock file")?;
        // SAFETY: `flock` only reads its two integer arguments; the descriptor is valid because
        // `file` owns it and outlives the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                return Err(JournalError::Locked { path });
            }
            return Err(JournalError::Io { path, action: "lock journal directory", source: error });
        }
        Ok(DirLock { _file: file })
    }
}

/// Creates `journal-{first_seq}.seg`: preallocated to `segment_bytes` with `posix_fallocate`
/// (so later page write-backs never need to allocate blocks, and the unused tail reads as
/// zeros), header written, file and directory made durable, then mapped for writing.
///
/// The header is durable before any record is written into the segment, which is what lets
/// recovery call a last segment with an invalid header and nothing after it a torn roll.
pub(crate) fn create_segment(
    dir: &Path,
    first_seq: u64,
    segment_bytes: u64,
) -> Result<(PathBuf, File, MmapMut), JournalError> {
    let path = dir.join(format::segment_file_name(first_seq));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(JournalError::io(&path, "create segment"))?;
    preallocate(&path, &file, segment_bytes, "preallocate segment")?;
    let header = SegmentHeader { first_seq, segment_bytes }.encode();
    file.write_all_at(&header, 0).map_err(JournalError::io(&path, "write segment header"))?;
    // fdatasync covers the new size and the allocation as well as the header bytes.
    file.sync_data().map_err(JournalError::io(&path, "fdatasync new segment"))?;
    sync_dir(dir)?;
    let map = map_segment_mut(&path, &file)?;
    Ok((path, file, map))
}

/// Makes the spare segment ready (`format::SPARE_SEGMENT_FILE_NAME`): a file of
/// `segment_bytes` preallocated and all zeros, with no header, that the next roll turns into a
/// segment ([`install_spare`]). A full disk then never fails a roll: the space of the next
/// segment is taken while nothing waits for it, and a shard that cannot take it keeps writing
/// into the segment it has and refuses writes only once that one is full.
///
/// An existing spare is kept (only its header bytes can have been written, by a roll that did
/// not finish, and the next roll writes them again); one of another length is started over.
/// On an error the partial file is removed, so a failed attempt holds no space.
pub(crate) fn create_spare(dir: &Path, segment_bytes: u64) -> Result<File, JournalError> {
    let path = dir.join(format::SPARE_SEGMENT_FILE_NAME);
    let file = open_or_create(&path, "create spare segment")?;
    let prepared = (|| {
        let length = file.metadata().map_err(JournalError::io(&path, "stat spare segment"))?.len();
        if length != segment_bytes {
            file.set_len(0).map_err(JournalError::io(&path, "truncate spare segment"))?;
        }
        preallocate(&path, &file, segment_bytes, "preallocate spare segment")?;
        file.sync_data().map_err(JournalError::io(&path, "fdatasync spare segment"))?;
        sync_dir(dir)
    })();
    match prepared {
        Ok(()) => Ok(file),
        Err(error) => {
            // Give the partial allocation back; a later attempt starts over.
            let _ = std::fs::remove_file(&path);
            Err(error)
        }
    }
}

/// Turns the spare segment into the segment starting at `first_seq`: header written and made
/// durable, then the rename and the directory's fsync, then the mapping. The header is durable
/// before the file has a segment's name, so recovery never meets a segment without one.
pub(crate) fn install_spare(
    dir: &Path,
    spare: File,
    first_seq: u64,
    segment_bytes: u64,
) -> Result<(PathBuf, File, MmapMut), JournalError> {
    let spare_path = dir.join(format::SPARE_SEGMENT_FILE_NAME);
    let path = dir.join(format::segment_file_name(first_seq));
    if path.exists() {
        return Err(JournalError::corrupt(
            &path,
            0,
            "a segment with this name exists already; the spare is not renamed over it",
        ));
    }
    let header = SegmentHeader { first_seq, segment_bytes }.encode();
    spare
        .write_all_at(&header, 0)
        .map_err(JournalError::io(&spare_path, "write segment header"))?;
    spare.sync_data().map_err(JournalError::io(&spare_path, "fdatasync new segment"))?;
    std::fs::rename(&spare_path, &path)
        .map_err(JournalError::io(&path, "rename spare segment into place"))?;
    sync_dir(dir)?;
    let map = map_segment_mut(&path, &spare)?;
    Ok((path, spare, map))
}

/// `posix_fallocate` of `0..length`: every block of the file is allocated, so writes into it
/// never need space (and write-back never has to allocate).
fn preallocate(
    path: &Path,
    file: &File,
    length: u64,
    action: &'static str,
) -> Result<(), JournalError> {
    let length = libc::off_t::try_from(length).map_err(|_| JournalError::InvalidOptions {
        reason: format!("segment_bytes {length} does not fit off_t"),
    })?;
    // SAFETY: `posix_fallocate` only reads its integer arguments; the descriptor is valid
    // because `file` owns it and outlives the call.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, length) };
    if rc != 0 {
        // posix_fallocate returns the error number instead of setting errno.
        return Err(JournalError::Io {
            path: path.to_path_buf(),
            action,
            source: std::io::Error::from_raw_os_error(rc),
        });
    }
    Ok(())
}

/// Maps a whole segment file for reading and writing.
pub(crate) fn map_segment_mut(path: &Path, file: &File) -> Result<MmapMut, JournalError> {
    let length = segment_length(path, file)?;
    // Drop whatever of this file the page cache holds (recovery just read it; a previous run
    // wrote it). All of it is clean here: recovery made it durable, a new segment was synced.
    // SAFETY: `posix_fadvise` only reads its integer arguments; the descriptor is valid because
    // `file` owns it and outlives the call. The advice never changes file contents.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(JournalError::Io {
            path: path.to_path_buf(),
            action: "drop cached segment pages",
            source: std::io::Error::from_raw_os_error(rc),
        });
    }
    // SAFETY: the mapping is sound as long as nobody truncates the file or writes it through
    // another path while it is mapped (a shrink would turn accesses into SIGBUS, and foreign
    // writes would race with our `&mut [u8]`). Only a `Journal` or `Recovery` maps segments
    // writable, and it holds the directory's exclusive `flock` (`DirLock`) for as long as the
    // mapping lives, so no other writer in any process has the directory. This crate never
    // truncates a segment (torn tails are zeroed in place; torn rolls are unlinked, and only
    // before being mapped), and the `Reader` of other processes only reads. The directory is
    // documented as private to the journal: operators copy it, they do not edit it in place.
    let map = unsafe { MmapOptions::new().len(length).map_mut(file) }
        .map_err(JournalError::io(path, "map segment"))?;
    // Why: on kernels with large page-cache folios (ext4 since 6.x), sequential faults make the
    // kernel read ahead into folios of up to 2 MiB; a 100-byte append then dirties the whole
    // folio and every commit writes megabytes (measured: 2 MiB per msync, ~3 ms instead of
    // ~0.15 ms). Random access advice keeps each fault to one 4 KiB page, and no huge pages.
    map.advise(Advice::Random).map_err(JournalError::io(path, "advise segment mapping"))?;
    // Not every kernel has transparent huge pages; without them there is nothing to turn off.
    let _ = map.advise(Advice::NoHugePage);
    Ok(map)
}

/// Maps a whole segment file read-only (recovery's scan of every segment, the last one's
/// before it is mapped for appends).
pub(crate) fn map_segment(path: &Path, file: &File) -> Result<Mmap, JournalError> {
    let length = segment_length(path, file)?;
    // SAFETY: as for `map_segment_mut`: the caller holds the directory's `DirLock`, so no
    // writer exists in any process, and nothing in this crate truncates a segment. A read-only
    // mapping additionally never writes, so the only requirement is that the file keeps its
    // length while mapped, which the lock and the no-truncation rule guarantee.
    let map = unsafe { MmapOptions::new().len(length).map(file) }
        .map_err(JournalError::io(path, "map segment"))?;
    // Scanned front to back once: ask for aggressive readahead.
    let _ = map.advise(Advice::Sequential);
    Ok(map)
}

/// Maps a whole snapshot file read-only. Recovery reads images of hundreds of megabytes: a
/// mapping serves them straight from the page cache, where reading would copy every byte into
/// freshly zeroed memory first (measured: half of a 10-million-card recovery).
pub(crate) fn map_snapshot(path: &Path, file: &File) -> Result<Mmap, JournalError> {
    let length = segment_length(path, file)?;
    // SAFETY: snapshot files are written under a temporary name and renamed into place only
    // after their fsync; nothing ever writes to or truncates a renamed snapshot (pruning
    // deletes whole files, which leaves existing mappings intact), and the caller holds the
    // directory's `DirLock`, so no other process writes there either.
    let map = unsafe { MmapOptions::new().len(length).map(file) }
        .map_err(JournalError::io(path, "map snapshot"))?;
    // Read front to back once (checksum, then decode): ask for aggressive readahead.
    let _ = map.advise(Advice::Sequential);
    Ok(map)
}

/// Publishes `durable_offset` (the byte offset up to which the segment's records are durable) in
/// the header of the writable mapping `map` (see [`format::DURABLE_END_OFFSET`]). One atomic
/// release store; the header page becomes dirty and reaches the disk with the kernel's
/// write-back or the next `msync` that covers it, which only readers after a power loss see.
pub(crate) fn store_durable_end(map: &mut MmapMut, durable_offset: usize) {
    let raw = format::encode_durable_end(durable_offset as u64).to_le();
    let field =
        map[format::DURABLE_END_OFFSET..format::DURABLE_END_OFFSET + 4].as_mut_ptr().cast::<u32>();
    assert!(field.is_aligned(), "mappings are page-aligned and the field is at a multiple of 4");
    // SAFETY: `field` points at 4 bytes inside the mapping (the slice above is bounds-checked)
    // and is aligned for `u32` (asserted), so it is valid for an `AtomicU32` for as long as the
    // mapping lives, which outlives this call (`map` is borrowed). No other access to these 4
    // bytes can race with the store: in this process only this function and recovery's scan
    // (before the journal exists, on the same thread) touch them; in other processes the
    // `Reader` only loads them atomically (`load_durable_end`). The rest of the page is written
    // non-atomically, but those are other bytes.
    let atomic = unsafe { AtomicU32::from_ptr(field) };
    atomic.store(raw, Ordering::Release);
}

/// The durable end a segment's header publishes, in bytes (`None`: the writer of this segment
/// kept no watermark), read by the tailing reader of another process with an atomic acquire
/// load from a read-only shared mapping of the header, so the value is never torn. The caller
/// has checked the header (so the file is at least a header long and its creation is complete).
pub(crate) fn load_durable_end(path: &Path, file: &File) -> Result<Option<u64>, JournalError> {
    let map = MmapOptions::new()
        .len(format::SEGMENT_HEADER_BYTES)
        .map_raw_read_only(file)
        .map_err(JournalError::io(path, "map segment header"))?;
    // SAFETY: the mapping is `SEGMENT_HEADER_BYTES` long and page-aligned, so the field at
    // `DURABLE_END_OFFSET` (a multiple of 4, `+ 4 <= SEGMENT_HEADER_BYTES`) is in bounds and
    // aligned for `u32`; `map` lives until after the load. Nobody truncates a segment (a torn
    // roll is unlinked, which leaves mappings valid), so the page cannot vanish (SIGBUS). The
    // writer in another process changes these bytes only with atomic stores
    // (`store_durable_end`), and `MmapRaw` never hands out references, so the atomic load does
    // not race with any non-atomic access of the memory model.
    let raw = unsafe {
        let field = map.as_ptr().add(format::DURABLE_END_OFFSET).cast::<u32>().cast_mut();
        debug_assert!(field.is_aligned());
        AtomicU32::from_ptr(field).load(Ordering::Acquire)
    };
    Ok(format::decode_durable_end(u32::from_le(raw)))
}

fn segment_length(path: &Path, file: &File) -> Result<usize, JournalError> {
    let length = file.metadata().map_err(JournalError::io(path, "stat segment"))?.len();
    usize::try_from(length).map_err(|_| {
        JournalError::corrupt(path, 0, format!("segment of {length} bytes does not fit in memory"))
    })
}

/// Puts the calling thread in the SCHED_IDLE class. Snapshot threads serialize images of
/// hundreds of megabytes for seconds; on a machine with one core per shard they would
/// otherwise take part of a shard's core just when it is busiest. SCHED_IDLE runs the thread on
/// what the normal threads leave (its weight is 3 against a normal thread's 1,024, below even
/// nice 19's 15; at nice 10, the previous setting, it took a tenth of a contended core), yet never
/// starves it outright, so a snapshot always finishes. No privilege is needed; scheduling
/// classes are per thread on Linux, so this leaves the shard threads alone.
///
/// Its disk writes go in the idle I/O class too (`ioprio_set`), which the `mq-deadline`, `bfq`
/// and `kyber`-less queues honour: a snapshot's pages reach the disk when the journal's
/// flushes leave it room. (With the `none` scheduler the class is ignored; the paced writes of
/// `snapshot::write` still bound what waits in front of a commit.)
pub fn lower_thread_priority() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` reads `param`, which lives across the call; pid 0 is the
    // calling thread, whose scheduling class is all it changes.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // IOPRIO_WHO_PROCESS with id 0 is the calling thread; IOPRIO_CLASS_IDLE (3) in the class bits.
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE_VALUE: libc::c_long = 3 << 13;
    // SAFETY: `ioprio_set` takes three integers and only changes the calling thread's I/O class.
    let result = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_long,
            IOPRIO_CLASS_IDLE_VALUE,
        )
    };
    if result == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Starts writeback of `length` bytes of `file` at `offset` and waits for it
/// (`sync_file_range` WAIT_BEFORE | WRITE | WAIT_AFTER): the pages are on their way to the disk
/// when it returns. Not a durability point (no disk cache flush, no metadata): the caller still
/// syncs the file.
pub(crate) fn flush_range(file: &File, offset: usize, length: usize) -> std::io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: `sync_file_range` takes a descriptor that `file` keeps open across the call and
    // three integers; it reads and writes no memory of ours.
    let result = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            length as libc::off64_t,
            flags,
        )
    };
    if result == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}
