//! [`Spool`]: open and recover, append with group commit, read, checkpoint.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use super::SEGMENT_BYTES;
use super::format::{DecodeError, MIN_RECORD, Payload, SpoolSignal};

/// Most bytes one append group writes before its `fsync`.
const GROUP_BYTES: usize = 16 * 1024 * 1024;
/// Most bytes read from a segment at once.
const READ_BYTES: usize = 2 * 1024 * 1024;
const CHECKPOINT: &str = "checkpoint";
const LOCK: &str = "lock";
const QUARANTINE: &str = "quarantine";

/// A place in the spool: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Segment id (its file name).
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
}

/// The spool cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Another collector holds the folder (each collector needs its own).
    #[error(
        "spool folder {dir} is in use by another collector{}: each collector needs its own spool folder",
        .holder.as_ref().map(|pid| format!(" (process {pid})")).unwrap_or_default()
    )]
    InUse {
        /// The folder.
        dir: PathBuf,
        /// The process id written in its lock file, if readable.
        holder: Option<String>,
    },
    /// A file operation failed.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// An append was refused; the client is told to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The events not yet in the database already fill the cap.
    #[error("spool full: {used} of {max} bytes hold events not yet in the database")]
    Full {
        /// Bytes waiting.
        used: u64,
        /// The cap.
        max: u64,
    },
    /// Writing or syncing failed (for example, the disk is full).
    #[error("spool write failed: {0}")]
    Io(String),
    /// The spool is shutting down.
    #[error("spool closed")]
    Closed,
    /// The record is larger than a spool record can be (and could not be read back).
    #[error("a request of {bytes} bytes in the spool is more than a spool record holds ({max})")]
    TooLarge {
        /// Its body's bytes.
        bytes: usize,
        /// The most a record holds.
        max: usize,
    },
}

impl AppendError {
    /// Every reason label.
    pub const REASONS: [&'static str; 4] = ["spool_full", "spool_io", "shutdown", "too_large"];

    /// Low-cardinality reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            AppendError::Full { .. } => "spool_full",
            AppendError::Io(_) => "spool_io",
            AppendError::Closed => "shutdown",
            AppendError::TooLarge { .. } => "too_large",
        }
    }
}

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records after the checkpoint, to be replayed.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes cut from torn tails.
    pub torn_bytes: u64,
    /// Damaged byte ranges copied to `quarantine/` (one file each).
    pub quarantined: Vec<PathBuf>,
}

/// Records read for the writer.
#[derive(Debug, Clone)]
pub struct ReadBatch {
    /// The requests, in order.
    pub records: Vec<Payload>,
    /// Position after each record, in the same order (the key an appender was given).
    pub ends: Vec<Position>,
    /// Position after the last one: commit it once they are in the database.
    pub end: Position,
}

#[derive(Debug)]
struct State {
    /// Durable length of every live segment.
    segments: BTreeMap<u64, u64>,
    checkpoint: Position,
    /// Records appended after the checkpoint and not yet committed.
    records: u64,
}

impl State {
    fn waiting_bytes(&self) -> u64 {
        self.segments
            .range(self.checkpoint.segment..)
            .map(|(id, len)| {
                if *id == self.checkpoint.segment {
                    len.saturating_sub(self.checkpoint.offset)
                } else {
                    *len
                }
            })
            .sum()
    }
}

struct Append {
    payload: Payload,
    done: oneshot::Sender<Result<Position, AppendError>>,
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    state: Mutex<State>,
    durable: watch::Sender<Position>,
}

/// The durable log between receiver and writer.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
    appends: mpsc::Sender<Append>,
    /// The folder's exclusive lock, released when the last handle is dropped.
    _lock: Arc<File>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Takes the folder's exclusive lock (released when the file is closed, also by a crash) and
/// writes this process's id in it, so a second collector can name the first.
fn lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path)
                .ok()
                .map(|pid| pid.trim().to_owned())
                .filter(|pid| !pid.is_empty());
            return Err(SpoolError::InUse {
                dir: dir.to_owned(),
                holder,
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
    }
    file.set_len(0)
        .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .map_err(io(&path))?;
    Ok(file)
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, recovering per the module's rules.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Spool, Recovery), SpoolError> {
        Self::open_with(dir, max_bytes, SEGMENT_BYTES)
    }

    /// As [`Spool::open`], with segments closed at `segment_bytes`.
    pub(crate) fn open_with(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> Result<(Spool, Recovery), SpoolError> {
        fs::create_dir_all(dir.join(QUARANTINE)).map_err(io(dir))?;
        let lock = lock(dir)?;
        let mut ids: Vec<u64> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let name = entry.map_err(io(dir))?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".wal").and_then(|n| n.parse().ok()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut checkpoint = read_checkpoint(dir).unwrap_or_default();
        let mut recovery = Recovery::default();
        let mut segments = BTreeMap::new();
        let last = ids.last().copied();
        for id in ids {
            let path = segment_path(dir, id);
            if id < checkpoint.segment {
                fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            let len = recover_segment(dir, &path, Some(id) == last, &mut recovery)?;
            if id == checkpoint.segment && !on_boundary(&path, checkpoint.offset.min(len))? {
                // Damage that still parses: every read from there would fail, for good.
                tracing::warn!(segment = %path.display(), offset = checkpoint.offset, "spool: the checkpoint is not at a record; replaying its whole segment (already written rows are no-ops)");
                checkpoint.offset = 0;
            }
            let from = if id == checkpoint.segment {
                checkpoint.offset.min(len)
            } else {
                0
            };
            recovery.records += count_records(&path, from, len)?;
            recovery.bytes += len - from;
            segments.insert(id, len);
        }
        // Segments with nothing left to write (empty, or wholly before the checkpoint) go, so
        // restarts without traffic do not leave a trail of empty files.
        let done: Vec<u64> = segments
            .iter()
            .filter(|(id, len)| {
                **len == 0 || (**id == checkpoint.segment && checkpoint.offset >= **len)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let path = segment_path(dir, id);
            fs::remove_file(&path).map_err(io(&path))?;
            segments.remove(&id);
        }
        if !segments.contains_key(&checkpoint.segment) {
            // The checkpoint's segment is gone (fully written and deleted): start at the next.
            checkpoint = Position {
                segment: segments
                    .keys()
                    .next()
                    .copied()
                    .unwrap_or(checkpoint.segment + 1),
                offset: 0,
            };
        } else {
            checkpoint.offset = checkpoint.offset.min(segments[&checkpoint.segment]);
        }
        // Appends always go to a fresh segment.
        let active = segments
            .keys()
            .last()
            .map_or(checkpoint.segment, |id| id + 1);
        let path = segment_path(dir, active);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        sync_dir(dir).map_err(io(dir))?;
        segments.insert(active, 0);
        let (durable, _) = watch::channel(Position {
            segment: active,
            offset: 0,
        });
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes,
            state: Mutex::new(State {
                segments,
                checkpoint,
                records: recovery.records,
            }),
            durable,
        });
        let (appends, queue) = mpsc::channel(4096);
        let appender = Appender {
            inner: inner.clone(),
            file,
            segment: active,
            len: 0,
        };
        std::thread::Builder::new()
            .name("spool-append".into())
            .spawn(move || appender.run(queue))
            .map_err(io(dir))?;
        Ok((
            Spool {
                inner,
                appends,
                _lock: Arc::new(lock),
            },
            recovery,
        ))
    }

    /// Appends a request; resolves once it is on disk (`fsync`ed). A body larger than a record
    /// holds is refused: it could not be read back.
    pub async fn append(&self, payload: Payload) -> Result<Position, AppendError> {
        if payload.body.len() > super::format::MAX_BODY {
            return Err(AppendError::TooLarge {
                bytes: payload.body.len(),
                max: super::format::MAX_BODY,
            });
        }
        let (done, result) = oneshot::channel();
        self.appends
            .send(Append { payload, done })
            .await
            .map_err(|_| AppendError::Closed)?;
        result.await.map_err(|_| AppendError::Closed)?
    }

    /// Where the writer starts: the checkpoint.
    pub fn checkpoint(&self) -> Position {
        self.lock().checkpoint
    }

    /// (records, bytes) appended and not yet committed to the database.
    pub fn depth(&self) -> (u64, u64) {
        let state = self.lock();
        (state.records, state.waiting_bytes())
    }

    /// The cap on waiting bytes.
    pub fn capacity(&self) -> u64 {
        self.inner.max_bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until durable data exists after `from`.
    pub async fn wait_after(&self, from: Position) {
        let mut durable = self.inner.durable.subscribe();
        // The sender lives as long as `self`; an error cannot happen while we hold it.
        let _changed = durable
            .wait_for(|end| *end > from || self.has_later_segment(from))
            .await;
    }

    fn has_later_segment(&self, from: Position) -> bool {
        let state = self.lock();
        state
            .segments
            .get(&from.segment)
            .is_some_and(|len| *len > from.offset)
            || state
                .segments
                .range(from.segment + 1..)
                .any(|(_, len)| *len > 0)
    }

    /// Reads up to `max_records` durable records from `from` (across segment ends).
    pub async fn read(&self, from: Position, max_records: usize) -> Result<ReadBatch, SpoolError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_blocking(from, max_records))
            .await
            .unwrap_or_else(|e| {
                Err(SpoolError::Io {
                    path: PathBuf::new(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    fn read_blocking(
        &self,
        mut from: Position,
        max_records: usize,
    ) -> Result<ReadBatch, SpoolError> {
        let mut batch = ReadBatch {
            records: Vec::new(),
            ends: Vec::new(),
            end: from,
        };
        let mut read = 0;
        while batch.records.len() < max_records && read < READ_BYTES {
            let (len, next) = {
                let state = self.lock();
                let len = state.segments.get(&from.segment).copied();
                let next = state
                    .segments
                    .range(from.segment + 1..)
                    .next()
                    .map(|(id, _)| *id);
                (len, next)
            };
            let Some(len) = len else { break };
            if from.offset >= len {
                // Only a sealed segment (one with a successor) is left behind.
                match next {
                    Some(next) => {
                        from = Position {
                            segment: next,
                            offset: 0,
                        };
                        batch.end = from;
                        continue;
                    }
                    None => break,
                }
            }
            let path = segment_path(&self.inner.dir, from.segment);
            let mut file = File::open(&path).map_err(io(&path))?;
            file.seek(SeekFrom::Start(from.offset)).map_err(io(&path))?;
            // Read a window, but never less than the first record (a request may exceed it).
            let left = (len - from.offset) as usize;
            let mut header = vec![0u8; super::format::HEADER.min(left)];
            file.read_exact(&mut header).map_err(io(&path))?;
            let first = super::format::claimed_len(&header).unwrap_or(header.len());
            let want = left.min(READ_BYTES.max(first));
            let mut buf = vec![0; want];
            buf[..header.len()].copy_from_slice(&header);
            file.read_exact(&mut buf[header.len()..])
                .map_err(io(&path))?;
            let mut at = 0;
            while batch.records.len() < max_records && at < buf.len() {
                match Payload::decode(&buf[at..]) {
                    Ok((payload, used)) => {
                        at += used;
                        if payload.signal == SpoolSignal::Padding {
                            continue; // damaged bytes, quarantined at recovery
                        }
                        batch.records.push(payload);
                        batch.ends.push(Position {
                            segment: from.segment,
                            offset: from.offset + at as u64,
                        });
                    }
                    Err(DecodeError::Truncated) if at > 0 => break,
                    Err(e) => {
                        return Err(SpoolError::Io {
                            path,
                            source: std::io::Error::other(format!(
                                "unreadable record at offset {}: {e}",
                                from.offset + at as u64
                            )),
                        });
                    }
                }
            }
            read += at;
            from.offset += at as u64;
            batch.end = from;
        }
        Ok(batch)
    }

    /// Records that everything before `end` (`records` requests) is in the database: moves the
    /// checkpoint, persists it, and deletes segments wholly before it.
    pub async fn commit(&self, end: Position, records: u64) -> Result<(), SpoolError> {
        let doomed: Vec<u64> = {
            let mut state = self.lock();
            if end <= state.checkpoint {
                return Ok(());
            }
            state.checkpoint = end;
            state.records = state.records.saturating_sub(records);
            let doomed: Vec<u64> = state
                .segments
                .range(..end.segment)
                .map(|(id, _)| *id)
                .collect();
            for id in &doomed {
                state.segments.remove(id);
            }
            doomed
        };
        let dir = self.inner.dir.clone();
        tokio::task::spawn_blocking(move || {
            write_checkpoint(&dir, end)?;
            for id in doomed {
                let path = segment_path(&dir, id);
                fs::remove_file(&path).map_err(io(&path))?;
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| {
            Err(SpoolError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(e.to_string()),
            })
        })
    }
}

struct Appender {
    inner: Arc<Inner>,
    file: File,
    segment: u64,
    len: u64,
}

impl Appender {
    fn run(mut self, mut queue: mpsc::Receiver<Append>) {
        let mut buf = Vec::with_capacity(1024 * 1024);
        while let Some(first) = queue.blocking_recv() {
            let mut group = vec![first];
            let mut bytes = group[0].payload.record_len();
            while bytes < GROUP_BYTES {
                match queue.try_recv() {
                    Ok(next) => {
                        bytes += next.payload.record_len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            self.write_group(group, &mut buf);
        }
        if let Err(e) = self.file.sync_data() {
            tracing::error!(error = %e, "spool: final sync failed");
        }
    }

    fn write_group(&mut self, group: Vec<Append>, buf: &mut Vec<u8>) {
        buf.clear();
        let mut pending = Vec::with_capacity(group.len());
        for append in group {
            let len = append.payload.record_len() as u64;
            let waiting = self
                .inner
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .waiting_bytes();
            let used = waiting + buf.len() as u64;
            if used + len > self.inner.max_bytes {
                let full = AppendError::Full {
                    used,
                    max: self.inner.max_bytes,
                };
                // The requester may have given up; nothing was written for it.
                append.done.send(Err(full)).ok();
                continue;
            }
            let filled = self.len + buf.len() as u64;
            if filled > 0 && filled + len > self.inner.segment_bytes {
                self.write_pending(buf, &mut pending);
                if let Err(e) = self.rotate() {
                    tracing::error!(error = %e, dir = %self.inner.dir.display(), "spool: cannot start a new segment");
                    append.done.send(Err(AppendError::Io(e.to_string()))).ok();
                    continue;
                }
            }
            append.payload.encode_into(buf);
            pending.push((append.done, self.len + buf.len() as u64));
        }
        self.write_pending(buf, &mut pending);
    }

    /// Writes and syncs `buf`, then answers the appends it holds.
    fn write_pending(
        &mut self,
        buf: &mut Vec<u8>,
        pending: &mut Vec<(oneshot::Sender<Result<Position, AppendError>>, u64)>,
    ) {
        if pending.is_empty() {
            buf.clear();
            return;
        }
        match self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data())
        {
            Ok(()) => {
                self.len += buf.len() as u64;
                {
                    let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
                    state.segments.insert(self.segment, self.len);
                    state.records += pending.len() as u64;
                }
                self.inner.durable.send_replace(Position {
                    segment: self.segment,
                    offset: self.len,
                });
                for (done, end) in pending.drain(..) {
                    done.send(Ok(Position {
                        segment: self.segment,
                        offset: end,
                    }))
                    .ok();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, segment = self.segment, "spool: write failed; refusing the requests");
                // Undo a partial write so the segment stays a clean sequence of records.
                if let Err(undo) = self.file.set_len(self.len) {
                    tracing::error!(error = %undo, segment = self.segment, "spool: cannot undo a partial write");
                }
                for (done, _) in pending.drain(..) {
                    done.send(Err(AppendError::Io(e.to_string()))).ok();
                }
            }
        }
        buf.clear();
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let next = self.segment + 1;
        let path = segment_path(&self.inner.dir, next);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        sync_dir(&self.inner.dir)?;
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .segments
            .insert(next, 0);
        self.file = file;
        self.segment = next;
        self.len = 0;
        Ok(())
    }
}

/// The recorded checkpoint; none on a first start. An unreadable or garbled one is logged and
/// ignored: the writer then replays every kept segment, which the idempotent inserts make safe.
fn read_checkpoint(dir: &Path) -> Option<Position> {
    let path = dir.join(CHECKPOINT);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "spool: cannot read the checkpoint; replaying every kept segment (already written rows are no-ops)");
            return None;
        }
    };
    let mut parts = text.split_whitespace();
    let parsed = (|| {
        Some(Position {
            segment: parts.next()?.parse().ok()?,
            offset: parts.next()?.parse().ok()?,
        })
    })();
    if parsed.is_none() {
        tracing::warn!(path = %path.display(), content = text.trim(), "spool: garbled checkpoint; replaying every kept segment (already written rows are no-ops)");
    }
    parsed
}

fn write_checkpoint(dir: &Path, at: Position) -> Result<(), SpoolError> {
    let tmp = dir.join("checkpoint.tmp");
    fs::write(&tmp, format!("{} {}\n", at.segment, at.offset)).map_err(io(&tmp))?;
    // No fsync: after a crash an older checkpoint only means replaying rows that are already
    // written, which the idempotent inserts turn into no-ops.
    let path = dir.join(CHECKPOINT);
    fs::rename(&tmp, &path).map_err(io(&path))
}

/// Checks every record of a segment. Damaged bytes followed by a valid record are copied to
/// quarantine and replaced by a padding record of the same length (positions do not move, the
/// records after them are replayed); damage at the end is a torn tail when the last record's
/// write was incomplete (never acknowledged: cut), else corruption (copied to quarantine, then
/// cut). Returns the segment's valid length.
fn recover_segment(
    dir: &Path,
    path: &Path,
    is_last: bool,
    recovery: &mut Recovery,
) -> Result<u64, SpoolError> {
    let data = fs::read(path).map_err(io(path))?;
    let mut at = 0;
    while at < data.len() {
        let error = match Payload::decode(&data[at..]) {
            Ok((_, used)) => {
                at += used;
                continue;
            }
            Err(error) => error,
        };
        match Payload::next_valid(&data, at + 1) {
            Some(next) if next - at >= MIN_RECORD => {
                quarantine(dir, path, at, &data[at..next], &error, recovery)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io(path))?;
                file.seek(SeekFrom::Start(at as u64)).map_err(io(path))?;
                file.write_all(&Payload::padding(next - at))
                    .and_then(|()| file.sync_data())
                    .map_err(io(path))?;
                at = next;
            }
            _ => {
                let incomplete = matches!(error, DecodeError::Truncated)
                    || super::format::claimed_len(&data[at..])
                        .is_none_or(|len| at + len > data.len());
                if is_last && incomplete {
                    recovery.torn_bytes += (data.len() - at) as u64;
                    tracing::info!(
                        segment = %path.display(),
                        offset = at,
                        bytes = data.len() - at,
                        "spool: cut a torn tail left by a crash (never acknowledged)"
                    );
                } else {
                    quarantine(dir, path, at, &data[at..], &error, recovery)?;
                }
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io(path))?;
                file.set_len(at as u64).map_err(io(path))?;
                file.sync_all().map_err(io(path))?;
                return Ok(at as u64);
            }
        }
    }
    Ok(at as u64)
}

/// Copies damaged bytes to `quarantine/<segment>.<offset>.<time>`, counts and logs them.
fn quarantine(
    dir: &Path,
    path: &Path,
    offset: usize,
    bytes: &[u8],
    error: &DecodeError,
    recovery: &mut Recovery,
) -> Result<(), SpoolError> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = dir
        .join(QUARANTINE)
        .join(format!("{name}.{offset}.{stamp}"));
    fs::write(&target, bytes).map_err(io(&target))?;
    tracing::warn!(
        segment = %path.display(),
        offset,
        bytes = bytes.len(),
        error = %error,
        quarantined = %target.display(),
        "spool: damaged bytes copied to quarantine; the records after them are kept"
    );
    recovery.quarantined.push(target);
    Ok(())
}

/// Whether a record starts at `offset` of a recovered segment (or `offset` is its end).
fn on_boundary(path: &Path, offset: u64) -> Result<bool, SpoolError> {
    let data = fs::read(path).map_err(io(path))?;
    let mut at = 0;
    while (at as u64) < offset {
        match Payload::decode(&data[at..]) {
            Ok((_, used)) => at += used,
            Err(_) => return Ok(false),
        }
    }
    Ok(at as u64 == offset)
}

fn count_records(path: &Path, from: u64, len: u64) -> Result<u64, SpoolError> {
    if from >= len {
        return Ok(0);
    }
    let data = fs::read(path).map_err(io(path))?;
    let mut at = from as usize;
    let mut count = 0;
    while at < len as usize {
        match Payload::decode(&data[at..len as usize]) {
            Ok((payload, used)) => {
                at += used;
                if payload.signal != SpoolSignal::Padding {
                    count += 1;
                }
            }
            Err(_) => break,
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SpoolSignal;

    fn temp_dir() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("spool-test-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn payload(n: u8) -> Payload {
        Payload {
            signal: SpoolSignal::Logs,
            received_unix_nano: u64::from(n),
            body: vec![n; 100].into(),
        }
    }

    fn wal_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .collect();
        files.sort();
        files
    }

    #[tokio::test]
    async fn appended_records_are_read_back_and_replayed_until_committed() {
        let dir = temp_dir();
        let (spool, recovery) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(recovery, Recovery::default());
        for n in 0..3 {
            spool.append(payload(n)).await.unwrap();
        }
        assert_eq!(spool.depth().0, 3);
        let batch = spool.read(spool.checkpoint(), 2).await.unwrap();
        assert_eq!(batch.records, [payload(0), payload(1)]);
        spool.commit(batch.end, 2).await.unwrap();
        drop(spool);

        let (spool, recovery) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(
            recovery.records, 1,
            "only the uncommitted record is replayed"
        );
        let batch = spool.read(spool.checkpoint(), 10).await.unwrap();
        assert_eq!(batch.records, [payload(2)]);
        spool.commit(batch.end, 1).await.unwrap();
        assert_eq!(spool.depth(), (0, 0));
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_garbled_checkpoint_replays_every_kept_record() {
        let dir = temp_dir();
        let (spool, _) = Spool::open(&dir, 1 << 20).unwrap();
        for n in 0..3 {
            spool.append(payload(n)).await.unwrap();
        }
        let batch = spool.read(spool.checkpoint(), 2).await.unwrap();
        spool.commit(batch.end, 2).await.unwrap();
        drop(spool);
        fs::write(dir.join(CHECKPOINT), "not a position\n").unwrap();

        let (spool, recovery) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(recovery.records, 3, "nothing is skipped on a guess");
        let batch = spool.read(spool.checkpoint(), 10).await.unwrap();
        assert_eq!(batch.records, [payload(0), payload(1), payload(2)]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_the_rest_kept() {
        let dir = temp_dir();
        let (spool, _) = Spool::open(&dir, 1 << 20).unwrap();
        for n in 0..3 {
            spool.append(payload(n)).await.unwrap();
        }
        drop(spool);
        let last = wal_files(&dir).pop().unwrap();
        let mut torn = Vec::new();
        payload(9).encode_into(&mut torn);
        let mut file = OpenOptions::new().append(true).open(&last).unwrap();
        file.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(file);

        let (spool, recovery) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(recovery.records, 3);
        assert_eq!(recovery.torn_bytes, (torn.len() / 2) as u64);
        assert!(recovery.quarantined.is_empty());
        let batch = spool.read(spool.checkpoint(), 10).await.unwrap();
        assert_eq!(batch.records, [payload(0), payload(1), payload(2)]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_corrupt_record_quarantines_its_segment_and_keeps_what_came_before() {
        let dir = temp_dir();
        let (spool, _) = Spool::open(&dir, 1 << 20).unwrap();
        for n in 0..3 {
            spool.append(payload(n)).await.unwrap();
        }
        drop(spool);
        // A later start writes to a new segment, so the first one is no longer the last.
        let (spool, _) = Spool::open(&dir, 1 << 20).unwrap();
        spool.append(payload(3)).await.unwrap();
        drop(spool);
        let first = wal_files(&dir).remove(0);
        let mut data = fs::read(&first).unwrap();
        let record = payload(0).record_len();
        data[record + 20] ^= 0xff; // inside the second record's payload
        fs::write(&first, &data).unwrap();

        let (spool, recovery) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(recovery.quarantined.len(), 1);
        assert!(recovery.quarantined[0].starts_with(dir.join(QUARANTINE)));
        assert_eq!(
            fs::read(&recovery.quarantined[0]).unwrap(),
            data[record..2 * record],
            "the damaged record's bytes are kept"
        );
        let batch = spool.read(spool.checkpoint(), 10).await.unwrap();
        assert_eq!(
            batch.records,
            [payload(0), payload(2), payload(3)],
            "the records after the damaged one are replayed"
        );
        drop(spool);
        let (_, again) = Spool::open(&dir, 1 << 20).unwrap();
        assert!(again.quarantined.is_empty(), "repaired once, for good");
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_damaged_length_in_the_last_segment_keeps_the_records_after_it() {
        let dir = temp_dir();
        let (spool, _) = Spool::open(&dir, 1 << 20).unwrap();
        for n in 0..5 {
            spool.append(payload(n)).await.unwrap();
        }
        drop(spool);
        let last = wal_files(&dir).pop().unwrap();
        let mut data = fs::read(&last).unwrap();
        let record = payload(0).record_len();
        data[record + 5] ^= 0x40; // the second record's length field
        fs::write(&last, &data).unwrap();

        let (spool, recovery) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(recovery.records, 4);
        assert_eq!(recovery.torn_bytes, 0, "not mistaken for a torn tail");
        assert_eq!(recovery.quarantined.len(), 1);
        let batch = spool.read(spool.checkpoint(), 10).await.unwrap();
        assert_eq!(
            batch.records,
            [payload(0), payload(2), payload(3), payload(4)]
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_second_spool_on_the_same_folder_is_refused_and_names_the_first() {
        let dir = temp_dir();
        let (spool, _) = Spool::open(&dir, 1 << 20).unwrap();
        spool.append(payload(1)).await.unwrap();
        let error = Spool::open(&dir, 1 << 20).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("in use by another collector")
                && text.contains(&std::process::id().to_string()),
            "{text}"
        );
        assert_eq!(spool.depth().0, 1, "the first spool keeps its records");
        drop(spool);
        let (_, recovery) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(recovery.records, 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_body_larger_than_a_record_holds_is_refused_before_writing() {
        let dir = temp_dir();
        let (spool, _) = Spool::open(&dir, u64::MAX).unwrap();
        let huge = Payload {
            signal: SpoolSignal::Rows,
            received_unix_nano: 1,
            body: vec![0; super::super::format::MAX_BODY + 1].into(),
        };
        let refused = spool.append(huge).await.unwrap_err();
        assert!(
            matches!(refused, AppendError::TooLarge { .. }),
            "{refused:?}"
        );
        assert_eq!(spool.depth(), (0, 0));
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn full_segments_roll_over_and_are_deleted_once_committed() {
        let dir = temp_dir();
        let record = payload(0).record_len() as u64;
        let (spool, _) = Spool::open_with(&dir, 1 << 20, record * 2).unwrap();
        for n in 0..5 {
            spool.append(payload(n)).await.unwrap();
        }
        assert_eq!(wal_files(&dir).len(), 3);
        let batch = spool.read(spool.checkpoint(), 10).await.unwrap();
        assert_eq!(batch.records.len(), 5);
        spool.commit(batch.end, 5).await.unwrap();
        assert_eq!(wal_files(&dir).len(), 1, "only the active segment is left");
        drop(spool);
        let (_, recovery) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(recovery.records, 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_record_larger_than_the_read_window_is_read_whole() {
        let dir = temp_dir();
        let (spool, _) = Spool::open(&dir, 1 << 30).unwrap();
        let big = Payload {
            signal: SpoolSignal::Logs,
            received_unix_nano: 1,
            body: vec![7; READ_BYTES + 1000].into(),
        };
        spool.append(big.clone()).await.unwrap();
        spool.append(payload(1)).await.unwrap();
        let batch = spool.read(spool.checkpoint(), 10).await.unwrap();
        assert_eq!(batch.records[0], big);
        let rest = spool.read(batch.end, 10).await.unwrap();
        let mut all = batch.records;
        all.extend(rest.records);
        assert_eq!(all.len(), 2);
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn restarts_without_traffic_leave_no_trail_of_segments() {
        let dir = temp_dir();
        let (spool, _) = Spool::open(&dir, 1 << 20).unwrap();
        spool.append(payload(0)).await.unwrap();
        let batch = spool.read(spool.checkpoint(), 10).await.unwrap();
        spool.commit(batch.end, 1).await.unwrap();
        drop(spool);
        for _ in 0..3 {
            let (spool, recovery) = Spool::open(&dir, 1 << 20).unwrap();
            assert_eq!(recovery.records, 0);
            drop(spool);
        }
        let segments = fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "wal")
            })
            .count();
        assert_eq!(segments, 1, "only the active segment");
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn appends_past_the_cap_are_refused_until_the_writer_catches_up() {
        let dir = temp_dir();
        let cap = payload(0).record_len() as u64 * 2;
        let (spool, _) = Spool::open(&dir, cap).unwrap();
        spool.append(payload(0)).await.unwrap();
        spool.append(payload(1)).await.unwrap();
        let refused = spool.append(payload(2)).await.unwrap_err();
        assert!(matches!(refused, AppendError::Full { .. }), "{refused:?}");
        let batch = spool.read(spool.checkpoint(), 1).await.unwrap();
        spool.commit(batch.end, 1).await.unwrap();
        spool.append(payload(2)).await.unwrap();
        fs::remove_dir_all(dir).unwrap();
    }
}
