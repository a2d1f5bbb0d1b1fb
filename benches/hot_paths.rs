//! Micro-benchmarks of the per-request hot paths: `cargo bench --bench hot_paths`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::value::RawValue;
use sessiond::domain::{
    IdGenerator, Message, MessageCursor, MessageId, Order, Role, SearchTerms, SessionCursor,
    SessionId,
};
use sessiond::http::response::PageBody;

fn ids(c: &mut Criterion) {
    let mut generator = IdGenerator::default();
    let mut ms = 1_763_800_000_000;
    c.bench_function("id/generate+encode", |b| {
        b.iter(|| {
            ms += 1;
            let (_, value) = generator.next(black_box(ms));
            black_box(MessageId::from_value(value))
        })
    });
    let (_, value) = generator.next(ms);
    let id = SessionId::from_value(value).into_string();
    c.bench_function("id/parse", |b| {
        b.iter(|| black_box(SessionId::parse(black_box(&id))))
    });
}

fn cursors(c: &mut Criterion) {
    let mut generator = IdGenerator::default();
    let (ms, value) = generator.next(1_763_800_000_000);
    let sessions = SessionCursor {
        updated_at: ms,
        id: SessionId::from_value(value),
    };
    let messages = MessageCursor {
        order: Order::Asc,
        created_at: ms,
        id: MessageId::from_value(value),
    };
    c.bench_function("cursor/sessions/encode", |b| {
        b.iter(|| black_box(&sessions).encode())
    });
    let encoded = sessions.encode();
    c.bench_function("cursor/sessions/decode", |b| {
        b.iter(|| SessionCursor::decode(black_box(&encoded)))
    });
    let encoded = messages.encode();
    c.bench_function("cursor/messages/decode", |b| {
        b.iter(|| MessageCursor::decode(black_box(&encoded)))
    });
}

fn search_queries(c: &mut Criterion) {
    let q = r#"login "token expired" auth* NEAR(x) col:y ((z))"#;
    let text = "Why does the login fail when the token expired? The auth middleware \
                retries NEAR the gateway, then col:y gives up. "
        .repeat(8);
    c.bench_function("search/parse+snippet", |b| {
        b.iter(|| {
            let terms = SearchTerms::parse(black_box(q)).unwrap_or_else(|e| panic!("{e}"));
            black_box(sessiond::search::snippet(&text, &terms))
        })
    });
}

fn page_json(c: &mut Criterion) {
    let mut generator = IdGenerator::default();
    let (_, session) = generator.next(1_763_800_000_000);
    let items: Vec<Message> = (0..50)
        .map(|i| {
            let (ms, value) = generator.next(1_763_800_000_000 + i);
            let text = "The root cause is that the connection pool holds a lock while it waits on the network. ".repeat(3);
            Message {
                id: MessageId::from_value(value),
                session_id: SessionId::from_value(session),
                role: if i % 2 == 0 { Role::User } else { Role::Assistant },
                parts: RawValue::from_string(
                    serde_json::json!([{"type": "text", "text": text},
                                       {"type": "tool", "name": "bash", "input": {"command": "ls"}}])
                    .to_string(),
                )
                .unwrap_or_else(|e| panic!("{e}")),
                metadata: RawValue::from_string(r#"{"model":"agent-large","tokens":812}"#.to_owned())
                    .unwrap_or_else(|e| panic!("{e}")),
                created_at: ms,
            }
        })
        .collect();
    let page = PageBody {
        items,
        next_cursor: Some("AQIAAAABogS6EXFtc2dfMDFtODJibTRiaDhuMWZkYm1xcjBocjV2cm0".to_owned()),
    };
    let size = serde_json::to_vec(&page).map(|v| v.len()).unwrap_or(0);
    c.bench_function(&format!("json/page_of_50_messages ({size} bytes)"), |b| {
        b.iter(|| serde_json::to_vec(black_box(&page)))
    });
}

/// The webhook circuit breaker on the delivery path: one permit and one verdict per attempt,
/// closed (the common case) and cycling through open and half-open; and a signature.
fn webhooks(c: &mut Criterion) {
    use sessiond::webhooks::breaker::{Breaker, OpenTimes};
    let times = OpenTimes {
        first_ms: 5_000,
        cap_ms: 36_000_000,
    };
    let mut closed = Breaker::default();
    let mut now = 0_i64;
    c.bench_function("webhooks/breaker/closed allow+success", |b| {
        b.iter(|| {
            now += 1;
            black_box(closed.allow(black_box(now)));
            black_box(closed.record(true, now, times, 0.0))
        })
    });
    let mut cycling = Breaker::default();
    let mut n = 0_u64;
    c.bench_function("webhooks/breaker/mixed allow+record", |b| {
        b.iter(|| {
            n += 1;
            now += 1_000;
            black_box(cycling.allow(black_box(now)));
            black_box(cycling.record(!n.is_multiple_of(3), now, times, 0.5))
        })
    });
    let secret = sessiond::webhooks::signing::generate_secret().expect("random");
    let body = vec![b'x'; 1024];
    c.bench_function("webhooks/sign 1 KiB", |b| {
        b.iter(|| {
            black_box(sessiond::webhooks::signing::signature_header(
                &[&secret],
                "evt_42",
                1_763_800_000,
                black_box(&body),
            ))
        })
    });
}

criterion_group!(benches, ids, cursors, search_queries, page_json, webhooks);
criterion_main!(benches);
