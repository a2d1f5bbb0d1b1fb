//! The named scenarios: what each simulates, its default load and its default thresholds.

use std::time::Duration;

use anyhow::bail;

use super::runner::Model;
use super::workload::{Mix, Op};

pub struct Scenario {
    pub name: &'static str,
    pub mix: Mix,
    pub model: Model,
    pub duration: Duration,
    pub thresholds: &'static [&'static str],
}

pub const NAMES: &[&str] = &[
    "health",
    "message_burst",
    "chat_list",
    "list_sessions",
    "search",
    "mixed",
    "soak",
    "ramp",
    "fanout",
    "webhooks",
];

/// A chat product's traffic: mostly reading lists and pages, a steady share of writes.
fn realistic_mix() -> Mix {
    Mix::new(
        &[
            (Op::ListMessages, 30),
            (Op::ListSessions, 22),
            (Op::GetSession, 10),
            (Op::GetMessage, 6),
            (Op::AppendMessage, 20),
            (Op::CreateSession, 3),
            (Op::UpdateSession, 2),
            (Op::Search, 4),
            (Op::Summarize, 1),
            (Op::Health, 2),
        ],
        0.3,
    )
}

impl Scenario {
    pub fn named(name: &str) -> anyhow::Result<Scenario> {
        let secs = Duration::from_secs;
        Ok(match name {
            // Liveness at a fixed arrival rate: the floor of what the server can promise.
            "health" => Scenario {
                name: "health",
                mix: Mix::new(&[(Op::Health, 1)], 0.0),
                model: Model::Open {
                    rate: 1000.0,
                    connections: 100,
                },
                duration: secs(30),
                thresholds: &["p99<50ms", "throughput>=950"],
            },
            // 100 agents streaming messages into sessions as fast as they can.
            "message_burst" => Scenario {
                name: "message_burst",
                mix: Mix::new(&[(Op::AppendMessage, 1)], 0.0),
                model: Model::Closed { connections: 100 },
                duration: secs(30),
                thresholds: &["p95<500ms", "errors==0"],
            },
            // 50 users browsing: list sessions of a directory, open one, page its messages.
            "chat_list" => Scenario {
                name: "chat_list",
                mix: Mix::new(&[(Op::ListSessions, 40), (Op::ListMessages, 60)], 0.5),
                model: Model::Closed { connections: 50 },
                duration: secs(30),
                thresholds: &["p95<200ms", "errors==0"],
            },
            // 32 clients listing the sessions of a directory, 50 at a time: the hottest read.
            "list_sessions" => Scenario {
                name: "list_sessions",
                mix: Mix::new(&[(Op::ListDirectory, 1)], 0.0),
                model: Model::Closed { connections: 32 },
                duration: secs(30),
                thresholds: &["p99<100ms", "errors==0"],
            },
            // 8 users searching message text at once (ranking is CPU-bound: more users queue).
            "search" => Scenario {
                name: "search",
                mix: Mix::new(&[(Op::Search, 1)], 0.0),
                model: Model::Closed { connections: 8 },
                duration: secs(30),
                thresholds: &["p95<300ms", "errors==0"],
            },
            // 200 users doing everything a chat product does.
            "mixed" => Scenario {
                name: "mixed",
                mix: realistic_mix(),
                model: Model::Closed { connections: 200 },
                duration: secs(60),
                thresholds: &["errors==0"],
            },
            // The mixed workload for a long time, watching the server's memory.
            "soak" => Scenario {
                name: "soak",
                mix: realistic_mix(),
                model: Model::Closed { connections: 50 },
                duration: secs(600),
                thresholds: &["errors==0", "anon_growth_mb_per_hour<64"],
            },
            // Raise the arrival rate step by step until p99 passes the SLO or errors appear.
            "ramp" => Scenario {
                name: "ramp",
                mix: realistic_mix(),
                model: Model::Open {
                    rate: 250.0,
                    connections: 25,
                },
                duration: secs(120),
                thresholds: &[],
            },
            // --subscribers clients follow /v1/events while messages are published at --rate.
            "fanout" => Scenario {
                name: "fanout",
                mix: Mix::new(&[(Op::Health, 1)], 0.0),
                model: Model::Open {
                    rate: 20.0,
                    connections: 1,
                },
                duration: secs(20),
                thresholds: &["delivered_ratio>=1", "errors==0"],
            },
            // Messages into a session 1, 10, then 100 webhook endpoints subscribe to, each step
            // for the duration: deliveries per second and publish → delivery latency.
            "webhooks" => Scenario {
                name: "webhooks",
                mix: Mix::new(&[(Op::Health, 1)], 0.0),
                model: Model::Open {
                    rate: 0.0,
                    connections: 8,
                },
                duration: secs(10),
                thresholds: &[],
            },
            other => bail!(
                "unknown scenario {other:?}; scenarios: {}",
                NAMES.join(", ")
            ),
        })
    }
}
