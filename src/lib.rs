//! sessiond: a fast HTTP API server that stores AI-agent and chat sessions and their messages,
//! searches them, and streams every change.
//!
//! The binary is a thin shell over this library: [`app::Application`] builds the server from a
//! [`config::Config`], so the tests, the benchmarks and `sessiond bench` run the same code.

pub mod app;
pub mod bench;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod http;
pub mod ratelimit;
pub mod search;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod transfer;
pub mod webhooks;
pub mod workers;
