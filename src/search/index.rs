//! The tantivy [`SearchIndex`]: a disk index in the data dir written by one background indexer
//! thread, plus an in-memory tail index that searches fill (from the caller's snapshot) with
//! whatever the disk index has not committed yet.
//!
//! Both are scored under the statistics of the two together, so a message scores the same
//! whether it sits in the tail or on disk; deletions since the last commit are excluded by a
//! non-scoring clause. Commits happen on a time/size policy (many tiny commits explode the
//! segment count), each carrying the log positions it covers in its payload.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use tantivy::collector::{Collector, SegmentCollector, TopDocs};
use tantivy::columnar::Column;
use tantivy::query::{
    Bm25StatisticsProvider, BooleanQuery, ConstScoreQuery, Occur, PhrasePrefixQuery, PhraseQuery,
    Query, RangeQuery, TermQuery, TermSetQuery,
};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::{
    DocAddress, DocId, Index, IndexReader, IndexWriter, ReloadPolicy, Score, Searcher,
    SegmentOrdinal, SegmentReader, TantivyDocument,
};

use super::analysis::{
    PAIR_TOKENIZER, PREFIX_TOKENIZER, TOKENIZER, analyzer, gram, indexed_part, pair, pair_analyzer,
    paired, prefix_analyzer, tokens,
};
use super::waiting::{Needs, Waiting};
use super::{Doc, Heads, Hit, IndexError, Request, SearchIndex, Source, Status, sort_hits};
use crate::domain::Term;

/// Bumped when the schema or analysis changes: an index of another version is rebuilt.
const VERSION: u32 = 5;
/// Messages read from the source at a time.
const BATCH: usize = 2000;
/// The longest wait between indexing attempts after failures.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);
/// The most expansions of a prefix at the end of a multi-word prefix term.
const MAX_PREFIX_EXPANSIONS: u32 = 1000;
/// The in-memory tail's indexing budget.
const TAIL_WRITER_MEMORY: usize = 20 << 20;

#[derive(Clone, Debug)]
pub struct IndexOptions {
    pub dir: PathBuf,
    /// Names the database: an index built from another database is rebuilt.
    pub database: String,
    /// Commit at least this often while there is something to commit…
    pub commit_interval: Duration,
    /// …or as soon as this many changes wait.
    pub commit_changes: usize,
    /// How often the indexer looks for new writes.
    pub poll: Duration,
    /// A new index over at most this many messages is built before `open` returns; a bigger
    /// one in the background (searches answer 503 meanwhile).
    pub build_in_foreground: i64,
    pub writer_memory: usize,
    /// Indexing threads of the disk index's writer as it follows the database: one, which
    /// keeps a server's other cores for its requests (see [`IndexOptions::bulk`]).
    pub threads: usize,
    /// The disk index's writer is closed once it had nothing to commit for this long, and
    /// opened again for the next write.
    pub writer_idle: Duration,
}

impl IndexOptions {
    pub fn new(dir: impl Into<PathBuf>, database: impl Into<String>) -> IndexOptions {
        IndexOptions {
            dir: dir.into(),
            database: database.into(),
            commit_interval: Duration::from_secs(1),
            commit_changes: 50_000,
            poll: Duration::from_millis(100),
            build_in_foreground: 20_000,
            writer_memory: 64 << 20,
            threads: 1,
            writer_idle: Duration::from_secs(30),
        }
    }

    /// For a process that writes in bulk and serves nothing (an import, which ends only when
    /// the index holds what it wrote): an indexing thread per core. Analysis is most of an
    /// import's CPU, and with one thread the index's last stretch ran on one core alone.
    /// (Committing less often than every second saved nothing: BENCHMARKS.md.)
    pub fn bulk(mut self) -> IndexOptions {
        self.threads = threads_per_core();
        self
    }
}

#[derive(Clone, Copy)]
struct Fields {
    seq: Field,
    session: Field,
    directory: Field,
    role: Field,
    created_at: Field,
    text: Field,
    prefix: Field,
    /// Adjacent token pairs ([`pair_analyzer`]): a two-word phrase is one term of it.
    pairs: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let seq = builder.add_i64_field("seq", INDEXED | FAST);
    let session = builder.add_text_field("session_id", STRING);
    let directory = builder.add_text_field("directory", STRING);
    let role = builder.add_text_field("role", STRING);
    let created_at = builder.add_i64_field("created_at", FAST);
    let text = builder.add_text_field(
        "text",
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        ),
    );
    let prefix = builder.add_text_field(
        "prefix",
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(PREFIX_TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqs),
        ),
    );
    let pairs = builder.add_text_field(
        "pairs",
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(PAIR_TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqs),
        ),
    );
    (
        builder.build(),
        Fields {
            seq,
            session,
            directory,
            role,
            created_at,
            text,
            prefix,
            pairs,
        },
    )
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Payload {
    version: u32,
    database: String,
    heads: Heads,
}

/// What searches read, swapped together under one lock (held only to copy it).
struct View {
    main: Searcher,
    committed: Heads,
    /// The newest heads the indexer saw (for the lag).
    seen: Heads,
    building: Option<Heads>,
    progress: f64,
    /// The tail as last committed, and the heads it covers (the same as [`Tail::fed`]).
    tail: Searcher,
    tail_fed: Heads,
    /// [`Tail::waiting`] and [`Tail::read`] as last published.
    waiting: Arc<[Arc<Waiting>]>,
    read: i64,
    /// Sessions deleted since the last commit of the disk index.
    excluded: Arc<[String]>,
}

/// Everything after the last commit, in memory. Behind a lock of its own, taken before the
/// view's: a search that must feed it (a tantivy commit, milliseconds) never holds up the
/// searches that need nothing new.
struct Tail {
    /// The tail holds every message `committed.messages < seq <= fed.messages` and every
    /// deletion `committed.events < seq <= fed.events`.
    fed: Heads,
    /// The in-memory index, and its writer once the tail first takes something (see
    /// [`opened`]).
    index: Index,
    writer: Option<IndexWriter>,
    reader: IndexReader,
    /// The messages the tail index holds (to rebuild it from when the disk index took some).
    docs: Vec<Arc<Waiting>>,
    /// `(event seq, session)` of deletions the disk index has not committed.
    deleted: Vec<(i64, String)>,
    /// The messages `fed.messages < seq <= read`: read from the database, not yet in the
    /// tail index. A search that none of them can match answers without them; the first one
    /// that may match gives them all to the tail index in one commit.
    waiting: Vec<Arc<Waiting>>,
    read: i64,
    /// The tail's own connection: a search that feeds the tail reads everything written so
    /// far through it, not only up to its own snapshot, so the searches queued behind it find
    /// themselves covered and one commit serves them all. `None` while a feed uses it, and
    /// once the index is closed.
    source: Option<Box<dyn Source + Send>>,
}

impl Tail {
    /// Forgets what was given to the writer since its last commit.
    fn rollback(&mut self) {
        if let Some(writer) = &mut self.writer {
            let _ = writer.rollback();
        }
    }

    /// Publishes what the tail holds now.
    fn publish(&self, view: &mut View) {
        view.tail = self.reader.searcher();
        view.tail_fed = self.fed;
        view.waiting = self.waiting.iter().cloned().collect();
        view.read = self.read;
        view.excluded = self.deleted.iter().map(|(_, s)| s.clone()).collect();
    }
}

pub struct TantivyIndex {
    fields: Fields,
    view: Mutex<View>,
    tail: Mutex<Tail>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn register(index: &Index) {
    index.tokenizers().register(TOKENIZER, analyzer());
    index
        .tokenizers()
        .register(PREFIX_TOKENIZER, prefix_analyzer());
    index.tokenizers().register(PAIR_TOKENIZER, pair_analyzer());
}

/// The text goes in as text: the index's own tokenizers (registered by [`register`]) analyse
/// it on the writer's threads.
fn document(fields: &Fields, doc: &Doc) -> TantivyDocument {
    let text = indexed_part(&doc.text);
    let mut out = TantivyDocument::default();
    out.add_i64(fields.seq, doc.seq);
    out.add_text(fields.session, &doc.session_id);
    out.add_text(fields.directory, &doc.directory);
    out.add_text(fields.role, &doc.role);
    out.add_i64(fields.created_at, doc.created_at);
    out.add_text(fields.text, text);
    out.add_text(fields.prefix, text);
    out.add_text(fields.pairs, text);
    out
}

/// Opens the index in `dir` when it is whole, ours, of this version and of this database.
fn open_existing(dir: &Path, options: &IndexOptions) -> anyhow::Result<(Index, Heads)> {
    let index = Index::open_in_dir(dir).context("opening the search index")?;
    register(&index);
    if index.schema() != schema().0 {
        anyhow::bail!("the search index has another schema");
    }
    let metas = index.load_metas().context("reading the index metadata")?;
    let payload: Payload = serde_json::from_str(metas.payload.as_deref().unwrap_or(""))
        .context("reading the index payload")?;
    if payload.version != VERSION || payload.database != options.database {
        anyhow::bail!("the search index belongs to another database or version");
    }
    Ok((index, payload.heads))
}

fn commit(writer: &mut IndexWriter, database: &str, heads: Heads) -> anyhow::Result<()> {
    let started = Instant::now();
    let payload = serde_json::to_string(&Payload {
        version: VERSION,
        database: database.to_owned(),
        heads,
    })
    .context("encoding the index payload")?;
    let mut prepared = writer
        .prepare_commit()
        .context("preparing an index commit")?;
    prepared.set_payload(&payload);
    prepared.commit().context("committing the search index")?;
    metrics::histogram!(crate::telemetry::metrics::SEARCH_INDEX_COMMIT)
        .record(started.elapsed().as_secs_f64());
    Ok(())
}

/// Merges of the disk index running at once. tantivy's default is 4 threads per writer; on a
/// small machine more than two only compete with the requests, and each is a thread that sits
/// idle most of the time.
const MERGE_THREADS: usize = 2;

/// How much less CPU priority the disk index's threads (analysis, merges, commits) get than
/// the requests. Under a write burst tantivy's merges took 40% of the server's CPU on a two-core
/// machine (a profile of `message_burst` on the 1M seed, BENCHMARKS.md); nothing waits for them,
/// since searches read the old segments and the tail until they are done. The tail's writer
/// keeps the normal priority: a search waits for it.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const BACKGROUND_NICENESS: i32 = 10;

/// Lowers the calling thread's CPU priority by [`BACKGROUND_NICENESS`]; threads it starts
/// inherit it. Linux only (elsewhere `setpriority` applies to the whole process); a failure
/// only costs the requests some CPU, so it is logged and ignored.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        let lowered = rustix::process::getpriority_process(None).and_then(|now| {
            rustix::process::setpriority_process(None, (now + BACKGROUND_NICENESS).min(19))
        });
        if let Err(error) = lowered {
            tracing::debug!(%error, "could not lower the search indexer's priority");
        }
    }
}

/// Runs `work` on a thread of lowered priority ([`lower_thread_priority`]) and waits for it.
/// Whatever starts tantivy's threads for the disk index goes through here (opening its writer,
/// which starts the merge threads; every commit and rollback, which start the next indexing
/// threads), so they inherit the lower priority. A thread's priority cannot be raised again
/// without privileges, so no thread that also works for searches lowers its own.
fn in_background<T: Send>(work: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("search-index-setup".into())
            .spawn_scoped(scope, || {
                lower_thread_priority();
                work()
            })
            .context("starting a search index thread")?
            .join()
            .map_err(|_| anyhow::anyhow!("a search index thread panicked"))?
    })
}

/// The disk index's writer, its threads of lowered priority.
fn background_writer(
    index: &Index,
    threads: usize,
    memory_per_thread: usize,
) -> anyhow::Result<IndexWriter> {
    in_background(|| {
        index
            .writer_with_options(writer_options(threads, memory_per_thread, MERGE_THREADS))
            .context("opening the index writer")
    })
}

/// The writer in `slot`, opened by `open` when there is none.
///
/// Both indexes open their writers only when they have something to write, and the disk
/// index's is dropped after [`IndexOptions::writer_idle`] with nothing to commit: tantivy
/// allocates and fills a queue of 10,000 documents (2.5 MB) for every writer as it opens, and
/// starts its threads, which an idle server need not hold. Dropping a writer (rather than
/// waiting for its merges, which after a build can take minutes and would hold the indexer up)
/// abandons a merge under way: tantivy discards its result, and the next writer's first commit
/// considers the segments again.
fn opened(
    slot: &mut Option<IndexWriter>,
    open: impl FnOnce() -> anyhow::Result<IndexWriter>,
) -> anyhow::Result<&mut IndexWriter> {
    match slot {
        Some(writer) => Ok(writer),
        empty => Ok(empty.insert(open()?)),
    }
}

/// The disk index's writer in `slot`, opened again when it was closed for idling.
fn disk_writer<'a>(
    slot: &'a mut Option<IndexWriter>,
    disk: &Index,
    options: &IndexOptions,
) -> anyhow::Result<&'a mut IndexWriter> {
    opened(slot, || {
        background_writer(disk, options.threads, options.writer_memory)
    })
}

/// The tail's writer in `slot`, opened when the tail first takes something.
fn tail_writer<'a>(
    slot: &'a mut Option<IndexWriter>,
    index: &Index,
) -> anyhow::Result<&'a mut IndexWriter> {
    opened(slot, || {
        index
            .writer_with_options(writer_options(1, TAIL_WRITER_MEMORY, 1))
            .context("opening the tail index")
    })
}

/// An indexing thread per core, up to four (a thread's segments cost merging later).
fn threads_per_core() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// A writer with `threads` indexing threads of `memory_per_thread` bytes each and
/// `merge_threads` merge threads.
fn writer_options(
    threads: usize,
    memory_per_thread: usize,
    merge_threads: usize,
) -> tantivy::indexer::IndexWriterOptions {
    tantivy::indexer::IndexWriterOptions::builder()
        .num_worker_threads(threads)
        .memory_budget_per_thread(memory_per_thread)
        .num_merge_threads(merge_threads)
        .build()
}

/// Hands every message `after < seq <= upto` to `each` in `seq` order, read [`BATCH`] at a
/// time; returns how many there were.
fn read_messages(
    source: &dyn Source,
    after: i64,
    upto: i64,
    mut each: impl FnMut(Doc) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let mut after = after;
    let mut count = 0;
    while after < upto {
        let docs = source.messages(after, upto, BATCH)?;
        let full = docs.len() == BATCH;
        count += docs.len();
        for doc in docs {
            after = doc.seq;
            each(doc)?;
        }
        if !full {
            break;
        }
    }
    Ok(count)
}

/// Feeds messages `after < seq <= upto` to `writer`; returns how many were added.
fn feed_messages(
    fields: &Fields,
    writer: &IndexWriter,
    source: &dyn Source,
    after: i64,
    upto: i64,
) -> anyhow::Result<usize> {
    read_messages(source, after, upto, |doc| {
        writer
            .add_document(document(fields, &doc))
            .context("indexing a message")?;
        Ok(())
    })
}

/// Gives `docs` to the tail index, then deletes the sessions in `deleted` from it (not
/// committed).
fn add_to_tail(
    fields: &Fields,
    writer: &IndexWriter,
    docs: &[Arc<Waiting>],
    deleted: &[(i64, String)],
) -> anyhow::Result<()> {
    for waiting in docs {
        writer
            .add_document(document(fields, &waiting.doc))
            .context("indexing a message")?;
    }
    for (_, session) in deleted {
        writer.delete_term(tantivy::Term::from_field_text(fields.session, session));
    }
    Ok(())
}

/// Documents holding a term of `field` that starts with `stem`: the range from `stem` up to
/// `stem` followed by the last code point, which no token holds (tokens are letters and
/// digits), and which sorts after every other character in UTF-8 as in code points.
fn starting_with(field: Field, stem: &str) -> RangeQuery {
    let mut end = String::with_capacity(stem.len() + 4);
    end.push_str(stem);
    end.push(char::MAX);
    RangeQuery::new(
        Bound::Included(tantivy::Term::from_field_text(field, stem)),
        Bound::Excluded(tantivy::Term::from_field_text(field, &end)),
    )
}

/// Bm25 statistics of the disk index, the tail and the messages waiting outside it together
/// (as if the tail had been fed them: see [`super::waiting`]).
struct Combined<'a> {
    main: &'a Searcher,
    tail: &'a Searcher,
    waiting: &'a [Arc<Waiting>],
    fields: &'a Fields,
}

impl Combined<'_> {
    fn waiting_tokens(&self, field: Field) -> u64 {
        let count = |pick: fn(&Waiting) -> u64| self.waiting.iter().map(|w| pick(w)).sum();
        match field {
            f if f == self.fields.text => count(|w| w.counts.text),
            f if f == self.fields.prefix => count(|w| w.counts.prefix),
            f if f == self.fields.pairs => count(|w| w.counts.pairs),
            _ => 0,
        }
    }

    fn waiting_with(&self, term: &tantivy::Term) -> u64 {
        let value = term.value();
        let Some(text) = value.as_str() else {
            return 0;
        };
        let field = term.field();
        let holds = |w: &Waiting| match field {
            f if f == self.fields.text => w.has(text),
            f if f == self.fields.prefix => w.has_prefix(text),
            f if f == self.fields.pairs => w.has_pair(text),
            _ => false,
        };
        self.waiting.iter().filter(|w| holds(w)).count() as u64
    }
}

impl Bm25StatisticsProvider for Combined<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        Ok(self.main.total_num_tokens(field)?
            + self.tail.total_num_tokens(field)?
            + self.waiting_tokens(field))
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(Bm25StatisticsProvider::total_num_docs(self.main)?
            + Bm25StatisticsProvider::total_num_docs(self.tail)?
            + self.waiting.len() as u64)
    }

    fn doc_freq(&self, term: &tantivy::Term) -> tantivy::Result<u64> {
        Ok(self.main.doc_freq(term)? + self.tail.doc_freq(term)? + self.waiting_with(term))
    }
}

/// Collects every match with its score: the unpruned reference, and continuing by rank.
struct Every {
    seq: &'static str,
}

struct EverySegment {
    seqs: Column<i64>,
    hits: Vec<Hit>,
}

impl Collector for Every {
    type Fruit = Vec<Hit>;
    type Child = EverySegment;

    fn for_segment(
        &self,
        _segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<EverySegment> {
        Ok(EverySegment {
            seqs: reader.fast_fields().i64(self.seq)?,
            hits: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    fn merge_fruits(&self, fruits: Vec<Vec<Hit>>) -> tantivy::Result<Vec<Hit>> {
        Ok(fruits.into_iter().flatten().collect())
    }
}

impl SegmentCollector for EverySegment {
    type Fruit = Vec<Hit>;

    fn collect(&mut self, doc: DocId, score: Score) {
        if let Some(seq) = self.seqs.first(doc) {
            self.hits.push(Hit { seq, score });
        }
    }

    fn harvest(self) -> Vec<Hit> {
        self.hits
    }
}

fn seqs_of(searcher: &Searcher, found: Vec<(Score, DocAddress)>) -> tantivy::Result<Vec<Hit>> {
    let mut columns: Vec<Option<Column<i64>>> = vec![None; searcher.segment_readers().len()];
    let mut hits = Vec::with_capacity(found.len());
    for (score, address) in found {
        let slot = &mut columns[address.segment_ord as usize];
        if slot.is_none() {
            *slot = Some(
                searcher
                    .segment_reader(address.segment_ord)
                    .fast_fields()
                    .i64("seq")?,
            );
        }
        if let Some(seq) = slot.as_ref().and_then(|c| c.first(address.doc_id)) {
            hits.push(Hit { seq, score });
        }
    }
    Ok(hits)
}

/// What kind of query this is, for the metrics.
fn kind(request: &Request<'_>) -> &'static str {
    let terms = request.terms.terms();
    match terms {
        [Term::Word(_)] => "word",
        [Term::Phrase(_)] => "phrase",
        [Term::Prefix(_)] => "prefix",
        _ if terms.iter().all(|t| matches!(t, Term::Word(_))) => "conjunction",
        _ => "mixed",
    }
}

/// A consistent view for one search.
struct Snapshot {
    main: Searcher,
    tail: Searcher,
    waiting: Arc<[Arc<Waiting>]>,
    excluded: Arc<[String]>,
}

/// Whether a search up to `heads` needs any of the `waiting` messages in the tail index.
fn needed(waiting: &[Arc<Waiting>], heads: Heads, needs: &Needs<'_>) -> bool {
    waiting
        .iter()
        .any(|w| w.doc.seq <= heads.messages && needs.may_match(w))
}

impl View {
    /// What a search up to `heads` reads, when this view holds it: the tail covers `heads`, or
    /// what it lacks is read and cannot match.
    fn snapshot(&self, heads: Heads, needs: &Needs<'_>) -> Result<Option<Snapshot>, IndexError> {
        if self.building.is_some() {
            // A build that already covers the caller's heads could serve, but it is only
            // published at its end; until then the answer would be partial.
            return Err(IndexError::Building {
                progress: self.progress,
            });
        }
        let covered = self.tail_fed.covers(&heads)
            || (heads.events <= self.tail_fed.events
                && heads.messages <= self.read
                && !needed(&self.waiting, heads, needs));
        Ok(covered.then(|| Snapshot {
            main: self.main.clone(),
            tail: self.tail.clone(),
            waiting: self.waiting.clone(),
            excluded: self.excluded.clone(),
        }))
    }
}

impl TantivyIndex {
    /// Opens (or creates, or rebuilds) the index in `options.dir` and starts its indexer, which
    /// reads the database through `source`; searches bring the in-memory tail up to date
    /// through `tail_source` (a connection of its own), or through their own snapshot when it
    /// fails. Blocking.
    pub fn open(
        options: IndexOptions,
        source: Box<dyn Source + Send>,
        tail_source: Box<dyn Source + Send>,
    ) -> anyhow::Result<Arc<TantivyIndex>> {
        let (schema, fields) = schema();
        let heads = source.heads().context("reading the log heads")?;
        let existing = match open_existing(&options.dir, &options) {
            Ok((index, committed)) => {
                let oldest = source.oldest_event()?;
                // Deletions we never saw were pruned from the log: the index may hold
                // messages the database no longer has.
                let missed = oldest.is_some_and(|o| o > committed.events + 1);
                if missed || !heads.covers(&committed) {
                    tracing::warn!("the search index is behind the retained log; rebuilding it");
                    None
                } else {
                    Some((index, committed))
                }
            }
            Err(error) if options.dir.exists() => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "the search index cannot be used; rebuilding it"
                );
                None
            }
            Err(_) => None,
        };
        let opened = existing.and_then(|(index, committed)| {
            let writer = background_writer(&index, 1, options.writer_memory).ok()?;
            let reader = index
                .reader_builder()
                .reload_policy(ReloadPolicy::Manual)
                .try_into()
                .ok()?;
            Some((index, writer, reader, committed, false))
        });
        let (disk, mut writer, reader, committed, fresh) = match opened {
            Some(opened) => opened,
            None => {
                match std::fs::remove_dir_all(&options.dir) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => {
                        return Err(error).with_context(|| {
                            format!("removing the search index {}", options.dir.display())
                        });
                    }
                }
                std::fs::create_dir_all(&options.dir).with_context(|| {
                    format!("creating the search index dir {}", options.dir.display())
                })?;
                let index = Index::create_in_dir(&options.dir, schema.clone())
                    .context("creating the search index")?;
                register(&index);
                let mut writer = background_writer(&index, 1, options.writer_memory)?;
                // Deletions before now are already reflected in what the database holds.
                let start = Heads {
                    messages: 0,
                    events: heads.events,
                };
                in_background(|| commit(&mut writer, &options.database, start))?;
                let reader = index
                    .reader_builder()
                    .reload_policy(ReloadPolicy::Manual)
                    .try_into()
                    .context("opening the index reader")?;
                (index, writer, reader, start, true)
            }
        };

        let mut committed = committed;
        let mut building = None;
        let gap = heads.messages - committed.messages;
        if gap > options.build_in_foreground {
            // Far behind (new, or an interrupted build): built in the background, never
            // served partial and never through a tail this big.
            tracing::info!(
                messages = gap,
                fresh,
                "building the search index in the background"
            );
            building = Some(heads);
            // Analysis is most of a build: give it a thread per core (it ends up in as many
            // segments, which the merge policy folds together afterwards).
            let threads = threads_per_core();
            if threads > 1 {
                drop(writer);
                writer = background_writer(&disk, threads, options.writer_memory)
                    .context("opening the index writer for a build")?;
            }
        } else if !committed.covers(&heads) {
            // A short way behind (a crash lost the last commit's worth): caught up before
            // serving, so the tail starts small.
            feed_messages(
                &fields,
                &writer,
                &*source,
                committed.messages,
                heads.messages,
            )?;
            if heads.events > committed.events {
                for (_, session) in source.deletions(committed.events, heads.events)? {
                    writer.delete_term(tantivy::Term::from_field_text(fields.session, &session));
                }
            }
            committed = committed.max(heads);
            in_background(|| commit(&mut writer, &options.database, committed))?;
            reader.reload().context("reloading the index reader")?;
        }
        // Opened above, also to learn that the index can be written; kept only for a build.
        let writer = building.map(|_| writer);

        let tail_index = Index::create_in_ram(schema);
        register(&tail_index);
        let tail_reader = tail_index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .context("opening the tail reader")?;
        let view = View {
            main: reader.searcher(),
            committed,
            seen: heads,
            building,
            progress: if building.is_some() { 0.0 } else { 1.0 },
            tail: tail_reader.searcher(),
            tail_fed: committed,
            waiting: Arc::new([]),
            read: committed.messages,
            excluded: Arc::new([]),
        };
        let tail = Tail {
            fed: committed,
            index: tail_index,
            writer: None,
            reader: tail_reader,
            docs: Vec::new(),
            deleted: Vec::new(),
            waiting: Vec::new(),
            read: committed.messages,
            source: Some(tail_source),
        };
        let index = Arc::new(TantivyIndex {
            fields,
            view: Mutex::new(view),
            tail: Mutex::new(tail),
            stop: Arc::new((Mutex::new(false), Condvar::new())),
            thread: Mutex::new(None),
        });
        let indexer = Indexer {
            index: Arc::downgrade(&index),
            stop: index.stop.clone(),
            fields,
            disk,
            writer,
            reader,
            source,
            fed: committed,
            committed,
            pending: 0,
            last_commit: Instant::now(),
            pause: options.poll,
            options,
        };
        let thread = std::thread::Builder::new()
            .name("search-indexer".into())
            .spawn(move || indexer.run())
            .context("starting the search indexer")?;
        *lock(&index.thread) = Some(thread);
        Ok(index)
    }

    /// Brings the tail up to `heads` (as far as `needs` requires) and takes what one search
    /// reads.
    fn snapshot(
        &self,
        source: &dyn Source,
        heads: Heads,
        needs: &Needs<'_>,
    ) -> Result<Snapshot, IndexError> {
        if let Some(snapshot) = lock(&self.view).snapshot(heads, needs)? {
            return Ok(snapshot);
        }
        let mut tail = lock(&self.tail);
        // Whoever fed the tail while this search waited may have covered it already.
        if let Some(snapshot) = lock(&self.view).snapshot(heads, needs)? {
            return Ok(snapshot);
        }
        let own = tail.source.take();
        // Everything written so far, which covers this search's snapshot and, under load, the
        // snapshots of the searches queued behind it; failing that (the connection is down),
        // exactly this search's snapshot.
        let newest = own.as_deref().and_then(|own| {
            let newest = own.heads().ok().filter(|n| n.covers(&heads))?;
            self.catch_up(&mut tail, own, newest, heads, needs).ok()
        });
        tail.source = own;
        if newest.is_none() {
            self.catch_up(&mut tail, source, heads, heads, needs)
                .map_err(IndexError::Internal)?;
        }
        let mut view = lock(&self.view);
        tail.publish(&mut view);
        view.snapshot(heads, needs)?.ok_or_else(|| {
            IndexError::Internal(anyhow::anyhow!("the tail was not brought up to date"))
        })
    }

    /// Reads what was written up to `upto` through `source` and, when a search up to `heads`
    /// may match any of it (or sessions were deleted), gives everything read to the tail index
    /// in one commit. On failure nothing half-fed stays behind (the next search feeds the same
    /// range again).
    fn catch_up(
        &self,
        tail: &mut Tail,
        source: &dyn Source,
        upto: Heads,
        heads: Heads,
        needs: &Needs<'_>,
    ) -> anyhow::Result<()> {
        if upto.messages > tail.read {
            let mut read = Vec::new();
            read_messages(source, tail.read, upto.messages, |doc| {
                read.push(Arc::new(Waiting::new(doc)));
                Ok(())
            })?;
            tail.waiting.extend(read);
            tail.read = upto.messages;
        }
        let deleted = if upto.events > tail.fed.events {
            source.deletions(tail.fed.events, upto.events)?
        } else {
            Vec::new()
        };
        if deleted.is_empty() && !needed(&tail.waiting, heads, needs) {
            // Nothing was deleted in between, so the tail covers those events as it is.
            tail.fed.events = tail.fed.events.max(upto.events);
            metrics::counter!(crate::telemetry::metrics::SEARCH_TAIL_FEEDS, "outcome" => "skipped")
                .increment(1);
            return Ok(());
        }
        let fed = self.feed_tail(tail, &deleted);
        if fed.is_err() {
            tail.rollback();
            return fed;
        }
        metrics::counter!(crate::telemetry::metrics::SEARCH_TAIL_FEEDS, "outcome" => "fed")
            .increment(1);
        let fed = std::mem::take(&mut tail.waiting);
        tail.docs.extend(fed);
        tail.deleted.extend(deleted);
        tail.fed = tail.fed.max(Heads {
            messages: tail.read,
            events: upto.events,
        });
        Ok(())
    }

    fn feed_tail(&self, tail: &mut Tail, deleted: &[(i64, String)]) -> anyhow::Result<()> {
        let writer = tail_writer(&mut tail.writer, &tail.index)?;
        add_to_tail(&self.fields, writer, &tail.waiting, deleted)?;
        writer.commit().context("committing the tail index")?;
        tail.reader.reload().context("reloading the tail index")?;
        Ok(())
    }

    /// The query for one index; `None` when nothing can match.
    /// `upto` bounds the `seq`s it matches (the tail may hold messages newer than the caller's
    /// snapshot).
    fn query(
        &self,
        request: &Request<'_>,
        excluded: &[String],
        upto: Option<i64>,
    ) -> Option<Box<dyn Query>> {
        let fields = &self.fields;
        let mut analyzer = analyzer();
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let text_term = |t: &str| tantivy::Term::from_field_text(fields.text, t);
        for term in request.terms.terms() {
            let words: Vec<String> = tokens(&mut analyzer, term.text())
                .into_iter()
                .map(|t| t.text)
                .collect();
            let query: Box<dyn Query> = match (term, words.as_slice()) {
                (_, []) => return None,
                (Term::Prefix(_), [stem]) => {
                    let gram = gram(stem);
                    let scored = Box::new(TermQuery::new(
                        tantivy::Term::from_field_text(fields.prefix, gram),
                        IndexRecordOption::WithFreqs,
                    ));
                    if gram.len() == stem.len() {
                        scored
                    } else {
                        let exact =
                            ConstScoreQuery::new(Box::new(starting_with(fields.text, stem)), 0.0);
                        Box::new(BooleanQuery::new(vec![
                            (Occur::Must, scored as Box<dyn Query>),
                            (Occur::Must, Box::new(exact)),
                        ]))
                    }
                }
                (Term::Prefix(_), words) => {
                    let mut query =
                        PhrasePrefixQuery::new(words.iter().map(|w| text_term(w)).collect());
                    query.set_max_expansions(MAX_PREFIX_EXPANSIONS);
                    Box::new(query)
                }
                (_, [word]) => Box::new(TermQuery::new(
                    text_term(word),
                    IndexRecordOption::WithFreqs,
                )),
                (_, [first, second]) if paired(first, second) => Box::new(TermQuery::new(
                    tantivy::Term::from_field_text(fields.pairs, &pair(first, second)),
                    IndexRecordOption::WithFreqs,
                )),
                (_, words) => Box::new(PhraseQuery::new(
                    words.iter().map(|w| text_term(w)).collect(),
                )),
            };
            clauses.push((Occur::Must, query));
        }
        if clauses.is_empty() {
            return None;
        }
        let filter = |field: Field, value: &str| -> Box<dyn Query> {
            Box::new(ConstScoreQuery::new(
                Box::new(TermQuery::new(
                    tantivy::Term::from_field_text(field, value),
                    IndexRecordOption::Basic,
                )),
                0.0,
            ))
        };
        if let Some(session) = request.session_id {
            clauses.push((Occur::Must, filter(fields.session, session)));
        }
        if let Some(directory) = request.directory {
            clauses.push((Occur::Must, filter(fields.directory, directory)));
        }
        if let Some(upto) = upto {
            clauses.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(
                    Box::new(RangeQuery::new(
                        Bound::Unbounded,
                        Bound::Included(tantivy::Term::from_field_i64(fields.seq, upto)),
                    )),
                    0.0,
                )),
            ));
        }
        if !excluded.is_empty() {
            clauses.push((
                Occur::MustNot,
                Box::new(TermSetQuery::new(
                    excluded
                        .iter()
                        .map(|s| tantivy::Term::from_field_text(fields.session, s)),
                )),
            ));
        }
        if clauses.len() == 1 {
            return clauses.pop().map(|(_, q)| q);
        }
        Some(Box::new(BooleanQuery::new(clauses)))
    }

    fn run<C: Collector>(
        &self,
        source: &dyn Source,
        heads: Heads,
        request: &Request<'_>,
        collector: &C,
        to_hits: impl Fn(&Searcher, C::Fruit) -> tantivy::Result<Vec<Hit>>,
    ) -> Result<Vec<Hit>, IndexError> {
        let snapshot = self.snapshot(source, heads, &Needs::of(request))?;
        let (Some(main_query), Some(tail_query)) = (
            self.query(request, &snapshot.excluded, None),
            self.query(request, &[], Some(heads.messages)),
        ) else {
            return Ok(Vec::new());
        };
        let stats = Combined {
            main: &snapshot.main,
            tail: &snapshot.tail,
            waiting: &snapshot.waiting,
            fields: &self.fields,
        };
        let search = |searcher: &Searcher, query: &dyn Query| -> anyhow::Result<Vec<Hit>> {
            let fruit = searcher
                .search_with_statistics_provider(query, collector, &stats)
                .context("searching the index")?;
            to_hits(searcher, fruit).context("reading hits")
        };
        let mut hits = search(&snapshot.main, &*main_query)?;
        hits.extend(search(&snapshot.tail, &*tail_query)?);
        sort_hits(&mut hits);
        Ok(hits)
    }
}

impl SearchIndex for TantivyIndex {
    fn top(
        &self,
        source: &dyn Source,
        heads: Heads,
        request: &Request<'_>,
        k: usize,
    ) -> Result<Vec<Hit>, IndexError> {
        metrics::counter!(crate::telemetry::metrics::SEARCHES, "kind" => kind(request))
            .increment(1);
        let collector = TopDocs::with_limit(k.max(1)).order_by_score();
        let mut hits = self.run(source, heads, request, &collector, seqs_of)?;
        hits.truncate(k);
        Ok(hits)
    }

    fn every(
        &self,
        source: &dyn Source,
        heads: Heads,
        request: &Request<'_>,
    ) -> Result<Vec<Hit>, IndexError> {
        metrics::counter!(crate::telemetry::metrics::SEARCHES, "kind" => "unpruned").increment(1);
        self.run(source, heads, request, &Every { seq: "seq" }, |_, hits| {
            Ok(hits)
        })
    }

    fn status(&self) -> Status {
        let view = lock(&self.view);
        Status {
            building: view.building.is_some(),
            progress: view.progress,
            committed: view.committed,
            lag: (view.seen.messages - view.committed.messages).max(0),
            segments: view.main.segment_readers().len(),
        }
    }

    fn close(&self) {
        // Its connection closes here, on the caller's (blocking) thread.
        lock(&self.tail).source = None;
        let (stopping, wake) = &*self.stop;
        *lock(stopping) = true;
        wake.notify_all();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

/// Rebuilds the tail index from the messages it still holds, rather than deleting those the
/// disk index took: deleted documents would go on counting in the tail's term statistics (doc
/// frequencies, token totals) until merged away, on top of the same messages on disk, and so
/// move every score (and a page continuing by rank would skip or repeat hits).
fn rebuild_tail(fields: &Fields, tail: &mut Tail, kept: &[Arc<Waiting>]) -> anyhow::Result<()> {
    let rebuilt = (|| -> anyhow::Result<()> {
        let writer = tail_writer(&mut tail.writer, &tail.index)?;
        writer
            .delete_all_documents()
            .context("emptying the tail index")?;
        add_to_tail(fields, writer, kept, &tail.deleted)?;
        writer.commit().context("rebuilding the tail index")?;
        Ok(())
    })();
    if rebuilt.is_err() {
        tail.rollback();
    }
    rebuilt?;
    tail.reader.reload().context("reloading the tail index")
}

/// The background writer of the disk index.
struct Indexer {
    index: std::sync::Weak<TantivyIndex>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    fields: Fields,
    disk: Index,
    /// Open while there is something to write, and for `options.writer_idle` after (see
    /// [`opened`]).
    writer: Option<IndexWriter>,
    reader: IndexReader,
    source: Box<dyn Source + Send>,
    /// What was given to the writer…
    fed: Heads,
    /// …and what of it is committed.
    committed: Heads,
    pending: usize,
    last_commit: Instant,
    /// Until the next step: `options.poll`, longer after failures.
    pause: Duration,
    options: IndexOptions,
}

impl Indexer {
    fn run(mut self) {
        loop {
            let stopping = {
                let (stopping, wake) = &*self.stop;
                let guard = lock(stopping);
                if *guard {
                    true
                } else {
                    let (guard, _) = wake
                        .wait_timeout(guard, self.pause)
                        .unwrap_or_else(|e| e.into_inner());
                    *guard
                }
            };
            let stepped = self.step(stopping);
            // A database that cannot be read (PostgreSQL down) is retried less and less often,
            // up to every few seconds, rather than warned about at every poll.
            self.pause = match stepped {
                Ok(()) => self.options.poll,
                Err(_) => (self.pause * 2).min(MAX_RETRY_PAUSE),
            };
            if let Err(error) = stepped {
                tracing::warn!(
                    error = format!("{error:#}"),
                    retry_in_ms = self.pause.as_millis() as u64,
                    "search indexing failed; retrying"
                );
                // What was fed but not committed is fed again from the last commit.
                // A rollback starts the writer's threads again: at the lower priority.
                if let Some(writer) = &mut self.writer {
                    let _ = in_background(|| writer.rollback().map_err(anyhow::Error::from));
                }
                self.fed = self.committed;
                self.pending = 0;
            } else if self.writer.is_some()
                && self.pending == 0
                && self.last_commit.elapsed() >= self.options.writer_idle
                && self
                    .index
                    .upgrade()
                    .is_some_and(|i| lock(&i.view).building.is_none())
            {
                self.writer = None;
            }
            if stopping || self.index.strong_count() == 0 {
                return;
            }
        }
    }

    fn step(&mut self, stopping: bool) -> anyhow::Result<()> {
        let heads = self.source.heads()?;
        let building = self.index.upgrade().and_then(|i| lock(&i.view).building);
        while self.fed.messages < heads.messages {
            let upto = heads.messages.min(self.fed.messages + BATCH as i64 * 10);
            let writer = disk_writer(&mut self.writer, &self.disk, &self.options)?;
            let added =
                feed_messages(&self.fields, writer, &*self.source, self.fed.messages, upto)?;
            self.fed.messages = upto;
            self.pending += added.max(1);
            if self.pending >= self.options.commit_changes {
                self.commit(building, heads)?;
            }
            if self.stop_requested() && building.is_some() {
                break;
            }
        }
        if self.fed.messages >= heads.messages && self.fed.events < heads.events {
            let deletions = self.source.deletions(self.fed.events, heads.events)?;
            if !deletions.is_empty() {
                let session = self.fields.session;
                let writer = disk_writer(&mut self.writer, &self.disk, &self.options)?;
                for (_, deleted) in &deletions {
                    writer.delete_term(tantivy::Term::from_field_text(session, deleted));
                }
                self.pending += deletions.len();
            }
            self.fed.events = heads.events;
        }
        let due = self.last_commit.elapsed() >= self.options.commit_interval;
        let built = building.is_some_and(|target| self.fed.covers(&target));
        if self.pending > 0 && (due || stopping || built) {
            self.commit(building, heads)?;
        } else if let Some(index) = self.index.upgrade() {
            lock(&index.view).seen = heads;
        }
        Ok(())
    }

    fn stop_requested(&self) -> bool {
        *lock(&self.stop.0)
    }

    fn commit(&mut self, building: Option<Heads>, heads: Heads) -> anyhow::Result<()> {
        // A commit starts the writer's next indexing threads; they inherit the committing
        // thread's priority. This thread keeps the normal one, because it also commits the
        // tail's writer (which searches wait for) and holds the tail's lock meanwhile.
        let fed = self.fed;
        let writer = disk_writer(&mut self.writer, &self.disk, &self.options)?;
        let database = &self.options.database;
        in_background(|| commit(writer, database, fed))?;
        self.committed = self.fed;
        self.pending = 0;
        self.last_commit = Instant::now();
        self.reader.reload().context("reloading the index reader")?;
        let searcher = self.reader.searcher();
        let Some(index) = self.index.upgrade() else {
            return Ok(());
        };
        // The trimmed tail and the new disk searcher are published together, so no search
        // sees a message twice or not at all; searches meanwhile read the old pair.
        let mut tail = lock(&index.tail);
        let committed = self.committed;
        let complete = building.is_none_or(|target| committed.covers(&target));
        if complete {
            tail.deleted.retain(|(seq, _)| *seq > committed.events);
            let kept: Vec<Arc<Waiting>> = tail
                .docs
                .iter()
                .filter(|w| w.doc.seq > committed.messages)
                .cloned()
                .collect();
            if kept.len() != tail.docs.len() {
                // On failure the tail stays as it was (with the old disk searcher published
                // beside it), and the next commit trims it again.
                rebuild_tail(&self.fields, &mut tail, &kept)?;
                tail.docs = kept;
            }
            tail.waiting.retain(|w| w.doc.seq > committed.messages);
            tail.read = tail.read.max(committed.messages);
            tail.fed = tail.fed.max(committed);
        }
        let mut view = lock(&index.view);
        view.seen = heads;
        if let Some(target) = building {
            if complete {
                tracing::info!("the search index is built");
                view.building = None;
                view.progress = 1.0;
            } else {
                view.progress = committed.messages as f64 / target.messages.max(1) as f64;
                // Not published before the build is complete: a partial index answers wrongly.
                view.committed = committed;
                return Ok(());
            }
        }
        view.main = searcher;
        view.committed = committed;
        tail.publish(&mut view);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SearchTerms;

    /// A log in memory: messages by seq, deletions as events.
    #[derive(Default)]
    struct Memory {
        docs: Mutex<Vec<Doc>>,
        deletions: Mutex<Vec<(i64, String)>>,
    }

    struct Shared(Arc<Memory>);

    impl Source for Shared {
        fn heads(&self) -> anyhow::Result<Heads> {
            Ok(Heads {
                messages: lock(&self.0.docs).last().map_or(0, |d| d.seq),
                events: lock(&self.0.deletions).last().map_or(0, |d| d.0),
            })
        }

        fn messages(&self, after: i64, upto: i64, limit: usize) -> anyhow::Result<Vec<Doc>> {
            let deleted: Vec<String> = lock(&self.0.deletions)
                .iter()
                .map(|d| d.1.clone())
                .collect();
            Ok(lock(&self.0.docs)
                .iter()
                .filter(|d| d.seq > after && d.seq <= upto && !deleted.contains(&d.session_id))
                .take(limit)
                .cloned()
                .collect())
        }

        fn deletions(&self, after: i64, upto: i64) -> anyhow::Result<Vec<(i64, String)>> {
            Ok(lock(&self.0.deletions)
                .iter()
                .filter(|d| d.0 > after && d.0 <= upto)
                .cloned()
                .collect())
        }

        fn oldest_event(&self) -> anyhow::Result<Option<i64>> {
            Ok(lock(&self.0.deletions).first().map(|d| d.0))
        }
    }

    /// Zipf-like: word `i` is drawn about `1/(i+1)` as often as word 0. The hundred most
    /// frequent words are short and the rest long, so phrases are both pair terms and phrase
    /// queries ([`paired`]).
    fn word(rng: &mut fastrand::Rng, vocabulary: usize) -> String {
        let rank = ((vocabulary as f64).powf(rng.f64()) as usize - 1).min(vocabulary - 1);
        if rank < 100 {
            format!("w{rank}")
        } else {
            format!("word{rank}")
        }
    }

    fn corpus(rng: &mut fastrand::Rng, seqs: std::ops::Range<i64>) -> Vec<Doc> {
        seqs.map(|seq| Doc {
            seq,
            session_id: format!("s{}", seq % 40),
            directory: format!("/d{}", seq % 4),
            role: "user".into(),
            created_at: seq,
            text: (0..rng.usize(3..40))
                .map(|_| word(rng, 300))
                .collect::<Vec<_>>()
                .join(" "),
        })
        .collect()
    }

    fn random_query(rng: &mut fastrand::Rng, docs: &[Doc]) -> String {
        match rng.u8(0..5) {
            0 => word(rng, 300),
            1 => format!("{} {}", word(rng, 300), word(rng, 300)),
            // Phrases of two (one pair term) and three words (a phrase query), taken from a
            // document so that they match; or ending in a random word, which mostly does not.
            2 | 3 => {
                let doc = &docs[rng.usize(..docs.len())];
                let mut words: Vec<String> = doc.text.split(' ').map(str::to_owned).collect();
                let len = rng.usize(2..4).min(words.len());
                let at = rng.usize(..=words.len() - len);
                if rng.u8(0..4) == 0 {
                    words[at + len - 1] = word(rng, 300);
                }
                format!("\"{}\"", words[at..at + len].join(" "))
            }
            // Prefixes of one gram, and of long words longer than a gram (a filter).
            _ => {
                let word = word(rng, 300);
                let keep = if rng.bool() { 2 } else { word.len().min(6) };
                format!("{}*", &word[..keep])
            }
        }
    }

    /// An index over `memory` in `dir` that never commits in the background, so the tail keeps
    /// what the test adds after opening it.
    fn open_without_commits(dir: &Path, memory: &Arc<Memory>) -> Arc<TantivyIndex> {
        let mut options = IndexOptions::new(dir.join("search"), "db");
        options.build_in_foreground = i64::MAX;
        options.commit_interval = Duration::from_secs(3600);
        options.commit_changes = usize::MAX;
        TantivyIndex::open(
            options,
            Box::new(Shared(memory.clone())),
            Box::new(Shared(memory.clone())),
        )
        .unwrap()
    }

    #[test]
    fn pruned_top_k_equals_scoring_every_match_on_disk_and_in_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = fastrand::Rng::with_seed(14);
        let memory = Arc::new(Memory::default());
        let docs = corpus(&mut rng, 1..3001);
        lock(&memory.docs).extend(docs.iter().cloned());
        let index = open_without_commits(dir.path(), &memory);
        let tail_docs = corpus(&mut rng, 3001..3601);
        lock(&memory.docs).extend(tail_docs.iter().cloned());
        let all: Vec<Doc> = docs.iter().chain(&tail_docs).cloned().collect();
        let source = Shared(memory.clone());

        let mut analyzer = analyzer();
        let mut compared = 0;
        let mut phrases = 0;
        for _ in 0..300 {
            let q = random_query(&mut rng, &all);
            let terms = SearchTerms::parse(&q).unwrap();
            let session = format!("s{}", rng.u8(0..40));
            let request = Request {
                terms: &terms,
                session_id: rng.bool().then_some(session.as_str()),
                directory: None,
            };
            let heads = source.heads().unwrap();
            let k = 10;
            let top = index.top(&source, heads, &request, k).unwrap();
            let every = index.every(&source, heads, &request).unwrap();
            assert_eq!(top.len(), every.len().min(k), "{q}");
            for (pruned, full) in top.iter().zip(&every) {
                assert!(
                    (pruned.score - full.score).abs() <= 1e-4,
                    "{q}: {top:?} {every:?}"
                );
            }
            if let Some(last) = top.last() {
                // Ties at the cut may be broken either way; everything above it must agree.
                let above = |hits: &[Hit]| -> Vec<i64> {
                    hits.iter()
                        .filter(|h| h.score > last.score + 1e-4)
                        .map(|h| h.seq)
                        .collect()
                };
                assert_eq!(above(&top), above(&every[..top.len()]), "{q}");
                compared += 1;
            }
            // The unpruned side against a plain scan of the corpus (words and phrases).
            let mut scan = |matches: &dyn Fn(&[String]) -> bool| {
                all.iter()
                    .filter(|d| request.session_id.is_none_or(|s| s == d.session_id))
                    .filter(|d| {
                        let words: Vec<String> = tokens(&mut analyzer, &d.text)
                            .into_iter()
                            .map(|t| t.text)
                            .collect();
                        matches(&words)
                    })
                    .count()
            };
            match terms.terms() {
                [Term::Word(_)] | [Term::Word(_), Term::Word(_)] => {
                    let wanted: Vec<String> =
                        terms.terms().iter().map(|t| t.text().to_owned()).collect();
                    let expected = scan(&|words| wanted.iter().all(|w| words.contains(w)));
                    assert_eq!(every.len(), expected, "{q}");
                }
                [Term::Prefix(stem)] => {
                    let expected =
                        scan(&|words| words.iter().any(|w| w.starts_with(stem.as_str())));
                    assert_eq!(every.len(), expected, "{q}");
                }
                [Term::Phrase(phrase)] => {
                    let wanted: Vec<String> = phrase.split(' ').map(str::to_owned).collect();
                    let expected = scan(&|words| words.windows(wanted.len()).any(|w| w == wanted));
                    assert_eq!(every.len(), expected, "{q}");
                    phrases += usize::from(expected > 0);
                }
                _ => {}
            }
        }
        assert!(compared > 100, "only {compared} queries matched anything");
        assert!(phrases > 50, "only {phrases} phrases matched anything");

        // A deleted session leaves every answer at once, in the index and in the tail.
        lock(&memory.deletions).push((1, "s7".into()));
        let heads = source.heads().unwrap();
        let terms = SearchTerms::parse("w0").unwrap();
        let request = Request {
            terms: &terms,
            session_id: None,
            directory: None,
        };
        let hits = index.every(&source, heads, &request).unwrap();
        assert!(!hits.is_empty());
        assert!(hits.iter().all(|h| h.seq % 40 != 7), "{hits:?}");
        let top = index.top(&source, heads, &request, 3000).unwrap();
        assert_eq!(top.len(), hits.len());
        index.close();
    }

    /// New messages that a search cannot match wait outside the tail index; the first search
    /// that may match one of them commits them all, and a deletion always does.
    #[test]
    fn messages_no_search_can_match_wait_outside_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        let memory = Arc::new(Memory::default());
        lock(&memory.docs).extend(corpus(&mut rng, 1..501));
        let index = open_without_commits(dir.path(), &memory);
        let source = Shared(memory.clone());
        let doc = |seq: i64, session: &str, text: String| Doc {
            seq,
            session_id: session.into(),
            directory: "/new".into(),
            role: "user".into(),
            created_at: seq,
            text,
        };
        lock(&memory.docs).extend((501..511).map(|seq| {
            doc(
                seq,
                &format!("n{}", seq % 2),
                format!("Alpha beta number{seq}"),
            )
        }));
        let every = |heads: Heads, query: &str| {
            let terms = SearchTerms::parse(query).unwrap();
            let request = Request {
                terms: &terms,
                session_id: None,
                directory: None,
            };
            index.every(&source, heads, &request).unwrap()
        };
        let heads = source.heads().unwrap();
        let count = |query: &str| every(heads, query).len();
        let waiting_w0 = every(heads, "w0");
        let old_w0 = waiting_w0.len();
        assert!(old_w0 > 0);
        let tail = |index: &TantivyIndex| {
            let tail = lock(&index.tail);
            (tail.fed.messages, tail.read, tail.waiting.len())
        };
        // Read, but not committed to the tail: none of them holds w0 or a word starting "w1".
        assert_eq!(tail(&index), (500, 510, 10));
        assert!(count("w1*") > 0);
        assert_eq!(tail(&index), (500, 510, 10));
        // A query they may match commits them all, and finds them.
        assert_eq!(count("alpha \"beta number505\""), 1);
        assert_eq!(tail(&index), (510, 510, 0));
        assert_eq!(count("alph*"), 10);
        // The waiting messages counted in the statistics already: the scores are the same.
        let fed_w0 = every(heads, "w0");
        assert_eq!(fed_w0.len(), old_w0);
        for (waiting, fed) in waiting_w0.iter().zip(&fed_w0) {
            assert_eq!(waiting.seq, fed.seq);
            assert!(
                (waiting.score - fed.score).abs() < 1e-5,
                "{waiting:?} {fed:?}"
            );
        }
        // More new messages; a deletion feeds the tail even for a query they cannot match.
        lock(&memory.docs).push(doc(511, "n1", "gamma".into()));
        lock(&memory.deletions).push((1, "n1".into()));
        let heads = source.heads().unwrap();
        assert_eq!(every(heads, "w0").len(), old_w0);
        assert_eq!(tail(&index), (511, 511, 0));
        let hits = every(heads, "alpha");
        assert_eq!(hits.len(), 5, "{hits:?}");
        assert!(hits.iter().all(|h| h.seq % 2 == 0), "{hits:?}");
        index.close();
    }

    /// A search that feeds the tail reads everything written so far through the tail's own
    /// source; a search of an older snapshot still answers exactly that snapshot.
    #[test]
    fn a_tail_fed_past_a_snapshot_answers_only_up_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let memory = Arc::new(Memory::default());
        lock(&memory.docs).extend(corpus(&mut rng, 1..501));
        let index = open_without_commits(dir.path(), &memory);
        let source = Shared(memory.clone());
        lock(&memory.docs).extend(corpus(&mut rng, 501..701));
        let old = source.heads().unwrap();
        lock(&memory.docs).extend(corpus(&mut rng, 701..801));
        let newest = source.heads().unwrap();
        let terms = SearchTerms::parse("w0").unwrap();
        let request = Request {
            terms: &terms,
            session_id: None,
            directory: None,
        };
        let count = |upto: i64| {
            let docs = lock(&memory.docs);
            let mut analyzer = analyzer();
            docs.iter()
                .filter(|d| d.seq <= upto)
                .filter(|d| {
                    tokens(&mut analyzer, &d.text)
                        .iter()
                        .any(|t| t.text == "w0")
                })
                .count()
        };
        // The first search feeds the tail up to the newest heads, past its own snapshot.
        let hits = index.every(&source, old, &request).unwrap();
        assert!(hits.iter().all(|h| h.seq <= old.messages), "{hits:?}");
        assert_eq!(hits.len(), count(old.messages));
        assert_eq!(lock(&index.tail).fed, newest);
        let top = index.top(&source, old, &request, 5).unwrap();
        assert!(top.iter().all(|h| h.seq <= old.messages));
        let hits = index.every(&source, newest, &request).unwrap();
        assert_eq!(hits.len(), count(newest.messages));
        assert!(hits.iter().any(|h| h.seq > old.messages));
        index.close();
    }

    /// The disk index's writer opens when there is something to write and closes once idle,
    /// and opens again for the next write; the tail's opens only when a search first feeds it.
    #[test]
    fn writers_open_when_needed_and_close_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let memory = Arc::new(Memory::default());
        let mut options = IndexOptions::new(dir.path().join("search"), "db");
        options.commit_interval = Duration::ZERO;
        options.poll = Duration::from_millis(5);
        options.writer_idle = Duration::ZERO;
        let index = TantivyIndex::open(
            options,
            Box::new(Shared(memory.clone())),
            Box::new(Shared(memory.clone())),
        )
        .unwrap();
        let source = Shared(memory.clone());
        assert!(lock(&index.tail).writer.is_none());
        let until = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done() {
                assert!(Instant::now() < deadline, "never {what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        // Another writer can open only once the index's own has closed.
        let released = || {
            until("released", &|| {
                Index::open_in_dir(dir.path().join("search"))
                    .and_then(|i| i.writer_with_num_threads::<TantivyDocument>(1, 15_000_000))
                    .map(drop)
                    .is_ok()
            })
        };
        let committed = |messages: i64| {
            until("committed", &|| {
                index.status().committed.messages == messages
            })
        };
        let doc = |seq: i64, text: &str| Doc {
            seq,
            session_id: "s".into(),
            directory: "/d".into(),
            role: "user".into(),
            created_at: seq,
            text: text.into(),
        };
        let add = |seq: i64, text: &str| lock(&memory.docs).push(doc(seq, text));
        released();
        add(1, "alpha");
        committed(1);
        released();
        add(2, "alpha beta");
        committed(2);
        let terms = SearchTerms::parse("alpha").unwrap();
        let request = Request {
            terms: &terms,
            session_id: None,
            directory: None,
        };
        let search = |index: &TantivyIndex, source: &Shared| {
            index
                .every(source, source.heads().unwrap(), &request)
                .unwrap()
        };
        let hits = search(&index, &source);
        assert_eq!(hits.len(), 2, "{hits:?}");
        // Answered from disk: the tail took nothing.
        assert!(lock(&index.tail).writer.is_none());
        index.close();

        // Where the disk index has not taken a message yet, the search that needs it feeds
        // the tail, which opens its writer then.
        let other = tempfile::tempdir().unwrap();
        let memory = Arc::new(Memory::default());
        let index = open_without_commits(other.path(), &memory);
        let source = Shared(memory.clone());
        assert!(lock(&index.tail).writer.is_none());
        lock(&memory.docs).push(doc(1, "alpha"));
        let hits = search(&index, &source);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert!(lock(&index.tail).writer.is_some());
        index.close();
    }
}
