//! A log writer that never makes a request wait: each formatted line is handed to a thread of
//! its own, which writes through a large buffer.
//!
//! While lines keep coming, the thread gathers them for [`BATCH_WINDOW`] between writes instead
//! of sleeping on the queue: a request that queues a line then never has to wake it (a futex
//! call per line), and the log costs one `write` per window rather than one per request. Idle,
//! it sleeps on the queue, so the first line after a quiet spell is written at once.
//!
//! Writing every line straight to stderr costs a system call per line on the request path, and
//! a slow consumer of stderr (a pipe to a busy log shipper, a terminal) blocks the request that
//! logs. Here a request only appends to a bounded queue; when the queue is full the line is
//! dropped and counted ([`dropped`], exported as `sessiond_log_lines_dropped_total`), so the
//! log can lose lines under an overload but never slows the server down. [`flush`] empties the
//! queue at shutdown.

use std::io::{self, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Lines that may wait for the writer thread.
const QUEUE_LINES: usize = 16 * 1024;
/// Bytes gathered before the writer thread writes (it also writes at the end of each window).
const WRITE_BUFFER: usize = 64 * 1024;
/// How long a busy log gathers lines between writes: the most a line waits to be written.
const BATCH_WINDOW: Duration = Duration::from_millis(10);

static DROPPED: AtomicU64 = AtomicU64::new(0);
static INSTALLED: OnceLock<NonBlocking> = OnceLock::new();

/// Lines dropped because the queue was full, since the process started.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

enum Message {
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

/// A [`MakeWriter`] whose writers queue their line for the writer thread.
#[derive(Clone)]
pub struct NonBlocking {
    queue: SyncSender<Message>,
}

impl NonBlocking {
    /// Starts the writer thread, writing to `out`.
    pub fn spawn(out: impl Write + Send + 'static, queue_lines: usize) -> io::Result<Self> {
        let (queue, lines) = mpsc::sync_channel(queue_lines);
        std::thread::Builder::new()
            .name("sessiond-log".to_owned())
            .spawn(move || write_lines(lines, out))?;
        Ok(NonBlocking { queue })
    }

    /// The writer of the process's logs to stderr (one per process; later calls share it).
    pub fn stderr() -> io::Result<Self> {
        if let Some(installed) = INSTALLED.get() {
            return Ok(installed.clone());
        }
        let writer = NonBlocking::spawn(io::stderr(), QUEUE_LINES)?;
        Ok(INSTALLED.get_or_init(|| writer).clone())
    }

    /// Waits (at most `timeout`) until every line queued so far is written.
    pub fn flush(&self, timeout: Duration) {
        let (done, written) = mpsc::channel();
        // `send`, not `try_send`: a flush must not be dropped; the queue drains meanwhile.
        if self.queue.send(Message::Flush(done)).is_ok() {
            let _ = written.recv_timeout(timeout);
        }
    }
}

/// Writes what is left in the stderr log's queue (at most `timeout`): call before exiting.
pub fn flush(timeout: Duration) {
    if let Some(log) = INSTALLED.get() {
        log.flush(timeout);
    }
}

fn write_lines(lines: Receiver<Message>, out: impl Write) {
    let mut out = io::BufWriter::with_capacity(WRITE_BUFFER, out);
    let mut waiting = Vec::new();
    // Idle: sleep on the queue until a line comes.
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        // Busy: drain, write, and gather for a window, until a window brings nothing.
        loop {
            while let Some(message) = next {
                match message {
                    Message::Line(line) => {
                        let _ = out.write_all(&line);
                    }
                    Message::Flush(done) => waiting.push(done),
                }
                next = lines.try_recv().ok();
            }
            let _ = out.flush();
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
            std::thread::sleep(BATCH_WINDOW);
            match lines.try_recv() {
                Ok(message) => next = Some(message),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
    }
    let _ = out.flush();
}

/// One event's line, gathered as the formatter writes it and queued when it is dropped.
pub struct Line<'a> {
    buffer: Vec<u8>,
    log: &'a NonBlocking,
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            buffer: Vec::with_capacity(256),
            log: self,
        }
    }
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buffer);
        match self.log.queue.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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

    fn log_line(log: &NonBlocking, text: &str) {
        let mut line = log.make_writer();
        line.write_all(text.as_bytes()).unwrap();
        line.write_all(b"\n").unwrap();
    }

    #[test]
    fn lines_arrive_whole_and_in_order() {
        let (out, _calls) = Recorder::new();
        let log = NonBlocking::spawn(out.clone(), 64).unwrap();
        for i in 0..1000 {
            log_line(&log, &format!("line {i}"));
            // Flushing now and then keeps the small queue from dropping anything.
            if i % 50 == 0 {
                log.flush(Duration::from_secs(10));
            }
        }
        log.flush(Duration::from_secs(10));
        let written = String::from_utf8(out.written.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert!(
            lines
                .iter()
                .enumerate()
                .all(|(i, l)| *l == format!("line {i}"))
        );
    }

    #[test]
    fn a_stuck_output_drops_lines_instead_of_blocking() {
        let (out, calls) = Recorder::new();
        let log = NonBlocking::spawn(out.clone(), 4).unwrap();
        let shut = out.gate.lock().unwrap();
        log_line(&log, "line 0");
        // The writer thread has taken line 0 and is stuck writing it out.
        calls.recv().unwrap();
        let before = dropped();
        for i in 1..100 {
            log_line(&log, &format!("line {i}"));
        }
        // Every call returned although nothing could be written: 4 lines queued, 95 dropped
        // (other tests in this process drop none).
        assert_eq!(dropped() - before, 95);
        drop(shut);
        log.flush(Duration::from_secs(10));
        let written = String::from_utf8(out.written.lock().unwrap().clone()).unwrap();
        assert_eq!(written, "line 0\nline 1\nline 2\nline 3\nline 4\n");
    }
}
