//! A log writer that never makes a request wait: each formatted line is appended to a shared
//! buffer, which a thread of its own writes out.
//!
//! While lines keep coming, the thread takes the whole buffer every [`BATCH_WINDOW`] (swapping
//! it with an empty one of the same capacity) and writes it with one `write`, instead of
//! sleeping until told: a request that logs then never has to wake it (a futex call per line).
//! Idle, it sleeps until a line comes, so the first line after a quiet spell is written at
//! once.
//!
//! A line costs its request one short lock and a copy into memory that is already there: no
//! allocation per line, and no memory handed to another thread to free (with glibc's malloc,
//! freeing another thread's block takes that thread's arena lock, and the request threads
//! contended on it). Writing every line straight to stderr would cost a system call per line on
//! the request path, and a slow consumer of stderr (a pipe to a busy log shipper, a terminal)
//! would block the request that logs. When [`PENDING_BYTES`] are waiting, a line is dropped and
//! counted ([`dropped`], exported as `sessiond_log_lines_dropped_total`), so the log can lose
//! lines under an overload but never slows the server down. [`flush`] writes what waits, at
//! shutdown.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// Bytes of lines that may wait for the writer thread (about 10,000 access-log lines).
const PENDING_BYTES: usize = 2 * 1024 * 1024;
/// How long a busy log gathers lines between writes: the most a line waits to be written.
const BATCH_WINDOW: Duration = Duration::from_millis(10);

static DROPPED: AtomicU64 = AtomicU64::new(0);
static INSTALLED: OnceLock<NonBlocking> = OnceLock::new();

/// Lines dropped because too much was waiting, since the process started.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// What the request threads and the writer thread share.
struct Pending {
    /// Whole lines, in the order they were logged.
    bytes: Vec<u8>,
    /// Most bytes that may wait.
    capacity: usize,
    /// Lines appended and lines written out, since the start: a flush waits for the second to
    /// reach what the first was when it began.
    appended: u64,
    written: u64,
    /// The writer thread sleeps until told (nothing was pending when it last looked).
    idle: bool,
    /// A flush is waiting: the writer thread skips its gathering window.
    hurry: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer thread (a line after a quiet spell, or a flush).
    wake: Condvar,
    /// Tells flushes that lines were written.
    written: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves whole lines behind: keep going.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A [`MakeWriter`] whose writers append their line to the shared buffer.
#[derive(Clone)]
pub struct NonBlocking {
    shared: Arc<Shared>,
}

impl NonBlocking {
    /// Starts the writer thread, writing to `out`; at most `capacity` bytes wait for it.
    pub fn spawn(out: impl Write + Send + 'static, capacity: usize) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                bytes: Vec::with_capacity(capacity.min(64 * 1024)),
                capacity,
                appended: 0,
                written: 0,
                idle: false,
                hurry: false,
            }),
            wake: Condvar::new(),
            written: Condvar::new(),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("sessiond-log".to_owned())
            .spawn(move || write_lines(&writer, out))?;
        Ok(NonBlocking { shared })
    }

    /// The writer of the process's logs to stderr (one per process; later calls share it).
    pub fn stderr() -> io::Result<Self> {
        if let Some(installed) = INSTALLED.get() {
            return Ok(installed.clone());
        }
        let writer = NonBlocking::spawn(io::stderr(), PENDING_BYTES)?;
        Ok(INSTALLED.get_or_init(|| writer).clone())
    }

    /// Waits (at most `timeout`) until every line logged so far is written.
    pub fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut pending = self.shared.lock();
        let target = pending.appended;
        pending.hurry = true;
        self.shared.wake.notify_one();
        while pending.written < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            pending = self
                .shared
                .written
                .wait_timeout(pending, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Writes what is left in the stderr log's buffer (at most `timeout`): call before exiting.
pub fn flush(timeout: Duration) {
    if let Some(log) = INSTALLED.get() {
        log.flush(timeout);
    }
}

fn write_lines(shared: &Shared, mut out: impl Write) {
    let mut spare = Vec::with_capacity(64 * 1024);
    loop {
        let lines = {
            let mut pending = shared.lock();
            // Idle: sleep until a line (or a flush) comes.
            while pending.bytes.is_empty() && pending.written == pending.appended {
                pending.idle = true;
                pending.hurry = false;
                pending = shared.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
            }
            pending.idle = false;
            std::mem::swap(&mut pending.bytes, &mut spare);
            pending.appended
        };
        let _ = out.write_all(&spare);
        let _ = out.flush();
        spare.clear();
        let hurry = {
            let mut pending = shared.lock();
            pending.written = lines;
            shared.written.notify_all();
            std::mem::take(&mut pending.hurry)
        };
        // Busy: gather for a window before the next write.
        if !hurry {
            std::thread::sleep(BATCH_WINDOW);
        }
    }
}

/// One event's line, appended to the shared buffer as the formatter writes it (the formatter
/// writes a whole event with one `write_all`; the lock is held until the line is dropped, so
/// even a line written in pieces stays whole).
pub struct Line<'a> {
    log: &'a NonBlocking,
    pending: Option<MutexGuard<'a, Pending>>,
    /// The line did not fit and is being dropped.
    refused: bool,
    /// Bytes of this line appended so far (taken back if the rest does not fit).
    start: usize,
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            log: self,
            pending: None,
            refused: false,
            start: 0,
        }
    }
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.refused || bytes.is_empty() {
            return Ok(bytes.len());
        }
        let pending = match &mut self.pending {
            Some(pending) => pending,
            None => {
                let pending = self.log.shared.lock();
                self.start = pending.bytes.len();
                self.pending.insert(pending)
            }
        };
        if pending.bytes.len() + bytes.len() > pending.capacity {
            let start = self.start;
            pending.bytes.truncate(start);
            self.refused = true;
        } else {
            pending.bytes.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.refused {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(mut pending) = self.pending.take() else {
            return;
        };
        pending.appended += 1;
        // Only a sleeping writer needs a wake-up: a busy one takes the line in its next window.
        if pending.idle {
            pending.idle = false;
            drop(pending);
            self.log.shared.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{self, Receiver};

    /// An output that records what reached it; while `gate` is held, it blocks, and it says
    /// on `entered` each time it is called.
    #[derive(Clone)]
    struct Recorder {
        written: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
        entered: mpsc::SyncSender<()>,
    }

    impl Recorder {
        fn new() -> (Recorder, Receiver<()>) {
            let (entered, calls) = mpsc::sync_channel(1024);
            let recorder = Recorder {
                written: Arc::default(),
                gate: Arc::default(),
                entered,
            };
            (recorder, calls)
        }

        fn text(&self) -> String {
            String::from_utf8(self.written.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Recorder {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let _ = self.entered.try_send(());
            let _open = self.gate.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            let _ = self.entered.try_send(());
            let _open = self.gate.lock().unwrap();
            Ok(())
        }
    }

    /// Writes a line the way the formatter does: one `write_all` of the whole event.
    fn log_line(log: &NonBlocking, text: &str) {
        let mut line = log.make_writer();
        line.write_all(format!("{text}\n").as_bytes()).unwrap();
    }

    #[test]
    fn lines_arrive_whole_and_in_order() {
        let (out, _calls) = Recorder::new();
        let log = NonBlocking::spawn(out.clone(), 1 << 20).unwrap();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let log = &log;
                scope.spawn(move || {
                    for i in 0..1000 {
                        log_line(log, &format!("thread {thread} line {i}"));
                    }
                });
            }
        });
        log.flush(Duration::from_secs(10));
        let written = out.text();
        assert_eq!(written.lines().count(), 4000);
        for thread in 0..4 {
            let prefix = format!("thread {thread} line ");
            let numbers: Vec<usize> = written
                .lines()
                .filter_map(|line| line.strip_prefix(&prefix))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(numbers, (0..1000).collect::<Vec<_>>(), "thread {thread}");
        }
    }

    #[test]
    fn a_line_written_in_pieces_stays_whole() {
        let (out, _calls) = Recorder::new();
        let log = NonBlocking::spawn(out.clone(), 1 << 20).unwrap();
        std::thread::scope(|scope| {
            for thread in 0..2 {
                let log = &log;
                scope.spawn(move || {
                    for i in 0..500 {
                        let mut line = log.make_writer();
                        write!(line, "thread {thread}").unwrap();
                        write!(line, " line {i}").unwrap();
                        line.write_all(b"\n").unwrap();
                    }
                });
            }
        });
        log.flush(Duration::from_secs(10));
        let written = out.text();
        assert_eq!(written.lines().count(), 1000);
        assert!(written.lines().all(|line| {
            let mut words = line.split(' ');
            words.next() == Some("thread")
                && words.next().is_some_and(|n| n.parse::<u32>().is_ok())
                && words.next() == Some("line")
                && words.next().is_some_and(|n| n.parse::<u32>().is_ok())
                && words.next().is_none()
        }));
    }

    #[test]
    fn a_stuck_output_drops_lines_instead_of_blocking() {
        let (out, calls) = Recorder::new();
        // Room for four lines of 7 bytes ("line 1\n" … "line 4\n").
        let log = NonBlocking::spawn(out.clone(), 28).unwrap();
        let shut = out.gate.lock().unwrap();
        log_line(&log, "line 0");
        // The writer thread has taken line 0 and is stuck writing it out.
        calls.recv().unwrap();
        let before = dropped();
        for i in 1..100 {
            log_line(&log, &format!("line {i}"));
        }
        // Every call returned although nothing could be written: 4 lines wait, 95 dropped
        // (other tests in this process drop none).
        assert_eq!(dropped() - before, 95);
        drop(shut);
        log.flush(Duration::from_secs(10));
        assert_eq!(out.text(), "line 0\nline 1\nline 2\nline 3\nline 4\n");
    }
}
