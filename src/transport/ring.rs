//! The FUSE-over-io_uring transport (Linux 6.14+, `fuse.enable_uring`).
//!
//! The kernel keeps one queue per possible CPU and puts each request on the queue of
//! the CPU that issued it. fastfs serves every queue with threads pinned to that CPU;
//! each thread owns an io_uring with a single registered entry, and answers a request
//! and fetches the next in one system call (COMMIT_AND_FETCH). One entry per thread
//! means a request that takes long (a 1 GiB copy, an fsync) holds one thread only:
//! the queue's other entries keep serving, and a queue keeps one thread idle: when all
//! but one are busy, one more is started, up to [`MAX_THREADS_PER_QUEUE`]. The spare
//! must be registered before it is needed: the kernel hands a newly registered entry
//! only requests that arrive after it (`fuse_uring_do_register` does not look at the
//! queue's waiting requests, which only a commit of another entry takes up), so a
//! request that arrives while every entry is busy waits for one of them to finish. For
//! the same reason no ring thread waits for a lock: such a request goes, with its
//! entry, to a thread of its own ([`Rings::hand_off_lock_wait`]).
//!
//! The kernel sends requests over the ring only once every queue has an entry; before
//! that, and always for INIT, FORGET and INTERRUPT, it uses `/dev/fuse`, so the
//! `/dev/fuse` threads keep running beside the rings. Notifications are written to
//! `/dev/fuse` too. Once the daemon has asked for io_uring in its INIT reply, a queue
//! without an entry would hang the mount: the rings are therefore created before the
//! INIT reply ([`prepare`]), and registered right after it ([`serve`]).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use parking_lot::Mutex;

use super::Dispatcher;
use super::wire::{self, OUT_HEADER_LEN, Reply};
use crate::sys;
use crate::sys::uring::RingEntry;

/// Threads (ring entries) each queue starts with.
const INITIAL_THREADS_PER_QUEUE: usize = 2;

/// The most threads a queue gets, however many of its requests block.
pub const MAX_THREADS_PER_QUEUE: usize = 64;

/// Rings created before the INIT reply, to be registered after it.
pub struct Prepared {
    dev: Arc<OwnedFd>,
    payload_len: usize,
    entries: Vec<(u16, RingEntry)>,
    queues: usize,
}

/// The number of CPUs the kernel could ever run (`/sys/devices/system/cpu/possible`,
/// e.g. `0-3` or `0,2-5`): the kernel makes one queue for each.
pub fn possible_cpus(text: &str) -> Option<usize> {
    let mut count = 0usize;
    for range in text.trim().split(',') {
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let cpu = range.parse::<usize>().ok()?;
                (cpu, cpu)
            }
        };
        if last < first {
            return None;
        }
        count = count.checked_add(last - first + 1)?;
    }
    // qid is a u16 in the protocol.
    (count > 0 && count <= usize::from(u16::MAX)).then_some(count)
}

/// Creates the rings for every queue of the connection on `dev`, with payload buffers of
/// `payload_len` bytes (at least the connection's max_write). Nothing is registered yet.
pub fn prepare(dev: &OwnedFd, payload_len: usize) -> io::Result<Prepared> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let queues = possible_cpus(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot read the possible CPUs from {text:?}"),
        )
    })?;
    let dev = Arc::new(dev.try_clone()?);
    let mut entries = Vec::with_capacity(queues * INITIAL_THREADS_PER_QUEUE);
    for qid in 0..queues as u16 {
        for _ in 0..INITIAL_THREADS_PER_QUEUE {
            entries.push((qid, RingEntry::new(dev.clone(), qid, payload_len)?));
        }
    }
    Ok(Prepared {
        dev,
        payload_len,
        entries,
        queues,
    })
}

/// Threads of one queue: started, and serving a request right now.
#[derive(Default)]
struct Queue {
    threads: AtomicUsize,
    busy: AtomicUsize,
}

struct Rings {
    dispatcher: Arc<Dispatcher>,
    dev: Arc<OwnedFd>,
    payload_len: usize,
    setxattr_ext: bool,
    queues: Vec<Queue>,
    started: Mutex<Vec<JoinHandle<()>>>,
}

/// The ring threads of a connection; [`Serving::join`] waits for them to end (they do
/// when the connection goes away).
pub struct Serving(Arc<Rings>);

/// Registers the prepared rings and serves them, each on a thread of its own.
pub fn serve(
    dispatcher: Arc<Dispatcher>,
    prepared: Prepared,
    setxattr_ext: bool,
) -> io::Result<Serving> {
    dispatcher.fs.stats.start_ring_counters(prepared.queues);
    dispatcher.fs.stats.count(&dispatcher.fs.stats.io_uring, 1);
    let rings = Arc::new(Rings {
        dispatcher,
        dev: prepared.dev,
        payload_len: prepared.payload_len,
        setxattr_ext,
        queues: (0..prepared.queues).map(|_| Queue::default()).collect(),
        started: Mutex::new(Vec::new()),
    });
    for (qid, entry) in prepared.entries {
        rings.start_thread(qid, entry, None)?;
    }
    Ok(Serving(rings))
}

impl Serving {
    /// Waits until every ring thread has ended.
    pub fn join(self) {
        loop {
            // Not held while joining: a thread starting another takes the lock.
            let next = self.0.started.lock().pop();
            let Some(thread) = next else {
                break;
            };
            if thread.join().is_err() {
                log::error!("an io_uring thread panicked");
            }
        }
    }
}

/// What the kernel said to a ring command.
enum Completion {
    Request,
    /// EAGAIN or EINTR: nothing changed; submit the same command again.
    Again,
    /// The request being answered is gone (ENOENT): the entry must be registered anew.
    RequestGone,
    /// The connection is gone (unmounted or aborted): the thread ends.
    Closed,
    Failed(i32),
}

fn completion(result: i32) -> Completion {
    match -result {
        0 => Completion::Request,
        libc::EAGAIN | libc::EINTR => Completion::Again,
        libc::ENOENT => Completion::RequestGone,
        libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED => Completion::Closed,
        errno => Completion::Failed(errno),
    }
}

impl Rings {
    /// Starts a thread serving `entry` of queue `qid`: it registers the entry, or with
    /// `holding` (a request the entry already holds) serves that first.
    fn start_thread(
        self: &Arc<Self>,
        qid: u16,
        entry: RingEntry,
        holding: Option<io::Result<i32>>,
    ) -> io::Result<()> {
        let queue = &self.queues[usize::from(qid)];
        let i = queue.threads.fetch_add(1, Ordering::Relaxed);
        let rings = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("fastfs-ring-{qid}-{i}"))
            .spawn(move || rings.serve_entry(qid, entry, holding));
        match spawned {
            Ok(thread) => {
                self.started.lock().push(thread);
                Ok(())
            }
            Err(e) => {
                queue.threads.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Starts one more thread for queue `qid` if no other of its threads is idle (and it
    /// may grow), with the daemon's rights (see `devfuse`).
    fn grow_if_all_busy(self: &Arc<Self>, qid: u16, busy: usize) {
        let queue = &self.queues[usize::from(qid)];
        let threads = queue.threads.load(Ordering::Relaxed);
        if busy + 1 < threads || threads >= MAX_THREADS_PER_QUEUE {
            return;
        }
        let started = self.dispatcher.fs.with_daemon_rights(|| {
            let entry = RingEntry::new(self.dev.clone(), qid, self.payload_len)?;
            self.start_thread(qid, entry, None)
        });
        if let Err(e) = started {
            log::warn!("cannot start another thread for io_uring queue {qid}: {e}");
        }
    }

    /// A request that may wait for a lock for as long as another process holds it goes,
    /// with the entry holding it, to a thread of its own, and this thread goes on with a
    /// fresh entry: a ring thread that waits would take up no queued request meanwhile
    /// (the kernel hands those only to an entry that commits; see the module's notes).
    /// Returns whether it did (`entry` is then the fresh one, not yet registered); false
    /// means the request is served here (the queue is full, or no entry can be made).
    fn hand_off_lock_wait(self: &Arc<Self>, qid: u16, entry: &mut RingEntry) -> bool {
        let opcode = wire::InHeader::decode(entry.request().in_out).map(|h| h.opcode);
        let queue = &self.queues[usize::from(qid)];
        if opcode.ok() != Some(wire::opcode::SETLKW)
            || queue.threads.load(Ordering::Relaxed) >= MAX_THREADS_PER_QUEUE
        {
            return false;
        }
        let fresh = match self
            .dispatcher
            .fs
            .with_daemon_rights(|| RingEntry::new(self.dev.clone(), qid, self.payload_len))
        {
            Ok(fresh) => fresh,
            Err(e) => {
                log::warn!("io_uring queue {qid}: no entry for a lock wait of its own: {e}");
                return false;
            }
        };
        let holding = std::mem::replace(entry, fresh);
        let started = self
            .dispatcher
            .fs
            .with_daemon_rights(|| self.start_thread(qid, holding, Some(Ok(0))));
        if let Err(e) = started {
            // The entry and its request went with the thread that could not start: the
            // request is answered when the connection ends.
            log::error!("io_uring queue {qid}: cannot start a lock-wait thread: {e}");
        }
        true
    }

    fn serve_entry(
        self: Arc<Self>,
        qid: u16,
        mut entry: RingEntry,
        holding: Option<io::Result<i32>>,
    ) {
        // The kernel hands a request to the queue of the CPU it was issued on; serving it
        // on that CPU avoids a cross-CPU wakeup. (A CPU outside the daemon's allowed set
        // cannot be pinned; its queue is served from wherever the thread runs.)
        if let Err(e) = sys::pin_thread_to_cpu(usize::from(qid)) {
            log::debug!("io_uring queue {qid}: cannot pin its thread: {e}");
        }
        let queue = &self.queues[usize::from(qid)];
        // A thread handed a lock request serves that one itself.
        let mut serve_here = holding.is_some();
        let mut outcome = match holding {
            Some(request) => request,
            None => entry.register(),
        };
        let mut body = Vec::with_capacity(4096);
        // The reply committed last, taken back if its request turns out to be gone.
        let mut last_reply: Option<Reply> = None;
        loop {
            let result = match outcome {
                Ok(result) => result,
                Err(e) => {
                    log::error!("io_uring queue {qid}: {e}");
                    break;
                }
            };
            match completion(result) {
                Completion::Request => {}
                Completion::Again => {
                    outcome = entry.resubmit();
                    continue;
                }
                Completion::RequestGone => {
                    log::warn!("io_uring queue {qid}: a request was gone before its reply");
                    if let Some(reply) = last_reply.take() {
                        self.dispatcher.undelivered(&reply);
                    }
                    outcome = entry.register();
                    continue;
                }
                Completion::Closed => break,
                Completion::Failed(errno) => {
                    // A failed registration makes the kernel serve the connection over
                    // /dev/fuse instead (fuse_uring_register); nothing is lost.
                    log::error!(
                        "io_uring queue {qid}: the kernel refused the ring ({}); \
                         serving over /dev/fuse",
                        io::Error::from_raw_os_error(errno)
                    );
                    self.dispatcher
                        .fs
                        .stats
                        .io_uring
                        .store(0, Ordering::Relaxed);
                    break;
                }
            }
            if !std::mem::take(&mut serve_here) && self.hand_off_lock_wait(qid, &mut entry) {
                outcome = entry.register();
                continue;
            }
            let busy = queue.busy.fetch_add(1, Ordering::Relaxed) + 1;
            self.grow_if_all_busy(qid, busy);
            self.dispatcher
                .fs
                .stats
                .count_ring_request(usize::from(qid));
            let request = entry.request();
            let parts = wire::split_ring_request(
                request.in_out,
                request.op_in,
                request.payload,
                self.setxattr_ext,
            );
            let served = self.dispatcher.serve(parts, request.in_out);
            queue.busy.fetch_sub(1, Ordering::Relaxed);
            let (unique, reply) = match served {
                Some((unique, Some(reply))) => (unique, reply),
                // A request without a reply still ends with a commit: the entry must
                // fetch the next one. (The kernel sends none of those over the ring.)
                Some((unique, None)) => (unique, Reply::Empty),
                None => {
                    log::error!("io_uring queue {qid}: undecodable request header");
                    let header = wire::InHeader::decode(request.in_out).ok();
                    (header.map_or(0, |h| h.unique), Reply::Error(libc::EIO))
                }
            };
            body.clear();
            let mut header = [0u8; OUT_HEADER_LEN];
            let encoded = wire::encode_reply(unique, &reply, &mut header, &mut body);
            outcome = match entry.commit_and_fetch(&header, encoded) {
                // Longer than the payload buffer (cannot happen within max_write): the
                // request still gets an answer.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    log::error!("reply to request {unique} does not fit the ring buffer");
                    body.clear();
                    let failed = Reply::Error(libc::EIO);
                    let encoded = wire::encode_reply(unique, &failed, &mut header, &mut body);
                    entry.commit_and_fetch(&header, encoded)
                }
                other => other,
            };
            last_reply = Some(reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn possible_cpu_lists_are_counted() {
        assert_eq!(possible_cpus("0\n"), Some(1));
        assert_eq!(possible_cpus("0-1\n"), Some(2));
        assert_eq!(possible_cpus("0-3,8-11"), Some(8));
        assert_eq!(possible_cpus("0,2,4-5"), Some(4));
        assert_eq!(possible_cpus(""), None);
        assert_eq!(possible_cpus("3-1"), None);
        assert_eq!(possible_cpus("0-x"), None);
        assert_eq!(possible_cpus("0-99999999999999999999"), None);
        assert_eq!(possible_cpus("0-65535"), None);
    }

    proptest! {
        #[test]
        fn any_text_gives_a_count_or_none(text in ".{0,40}") {
            if let Some(n) = possible_cpus(&text) {
                prop_assert!(n >= 1 && n <= usize::from(u16::MAX));
            }
        }

        #[test]
        fn generated_lists_count_their_cpus(ranges in proptest::collection::vec((0usize..64, 0usize..8), 1..6)) {
            let text = ranges
                .iter()
                .map(|&(a, n)| if n == 0 { a.to_string() } else { format!("{a}-{}", a + n) })
                .collect::<Vec<_>>()
                .join(",");
            let expected: usize = ranges.iter().map(|&(_, n)| n + 1).sum();
            prop_assert_eq!(possible_cpus(&text), Some(expected));
        }
    }
}
