//! HTTP API tests: each test runs its own server on a random port with a fresh data dir.

mod helpers;

mod access;
mod bench;
mod browser;
mod errors;
mod events;
mod messages;
mod observability;
mod ops;
mod pagination;
mod performance;
mod process;
mod profiling;
mod scale;
mod search;
mod sessions;
mod status_page;
mod summarize;
mod transfer;
mod webhooks;
