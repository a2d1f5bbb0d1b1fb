#!/usr/bin/env python3
"""Generates an opencode installation to benchmark `sessiond import opencode` against.

Both storage forms of shared/formats/opencode.md: `--form files` writes the JSON-file storage
(one file per session, message and part, pretty-printed as opencode writes them) under
OUT/storage; `--form db` writes OUT/opencode.db (WAL mode); `--form db2` writes the same
history as OpenCode 2.x keeps it in OUT/opencode.db (`session_v2`, and a `session_message` row
per message with its content inside). The same seed makes the same data.

    bench/opencode-installation.py --out /tmp/oc --form db --sessions 10000 --messages 20
"""

import argparse
import json
import os
import random
import sqlite3
import string

ALNUM = string.ascii_letters + string.digits
WORDS = ("login token expiry cache index query migrate schema parser retry timeout socket "
         "handler request response session message search build deploy config überprüfen "
         "größe 日本語 テスト").split()


def oc_id(rng, prefix, ms, counter, invert=False):
    value = (ms * 4096 + counter) & 0xFFFFFFFFFFFF
    if invert:
        value = ~value & 0xFFFFFFFFFFFF
    return f"{prefix}_{value:012x}" + "".join(rng.choice(ALNUM) for _ in range(14))


def sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def generate(args):
    rng = random.Random(args.seed)
    t = 1_750_000_000_000
    for s in range(args.sessions):
        t += rng.randint(60_000, 600_000)
        sid = oc_id(rng, "ses", t, 0, invert=True)
        project = "global" if s % 7 == 0 else f"{s % 13:040x}"
        session = {
            "id": sid, "slug": f"calm-{s}", "projectID": project, "version": "1.1.3",
            "directory": f"/home/dev/project-{s % 13}", "title": sentence(rng, 5),
            "time": {"created": t, "updated": t + args.messages * 30_000},
            "summary": {"additions": rng.randint(0, 99), "deletions": rng.randint(0, 99), "files": 3},
        }
        messages = []
        at = t
        user_id = None
        for m in range(args.messages):
            at += rng.randint(1_000, 30_000)
            mid = oc_id(rng, "msg", at, m)
            if m % 2 == 0:
                info = {"id": mid, "sessionID": sid, "role": "user", "time": {"created": at},
                        "agent": "build", "model": {"providerID": "anthropic", "modelID": "claude-sonnet-4"}}
                user_id = mid
                parts = [{"type": "text", "text": sentence(rng, rng.randint(8, 40))}]
            else:
                info = {"id": mid, "sessionID": sid, "role": "assistant",
                        "time": {"created": at, "completed": at + 900}, "parentID": user_id,
                        "modelID": "claude-sonnet-4", "providerID": "anthropic", "mode": "build",
                        "agent": "build", "path": {"cwd": session["directory"], "root": session["directory"]},
                        "cost": 0.001, "tokens": {"input": 900, "output": 120, "reasoning": 0,
                                                  "cache": {"read": 0, "write": 0}}, "finish": "stop"}
                parts = [{"type": "text", "text": sentence(rng, rng.randint(20, 80))},
                         {"type": "tool", "callID": f"call_{m}", "tool": "grep",
                          "state": {"status": "completed", "input": {"pattern": rng.choice(WORDS)},
                                    "output": sentence(rng, 12), "time": {"start": at, "end": at + 50}}}]
            ids = [oc_id(rng, "prt", at, 100 + i) for i in range(len(parts))]
            for pid, part in zip(ids, parts):
                part.update({"id": pid, "sessionID": sid, "messageID": mid})
            messages.append((info, parts))
        yield session, messages


def compact(value):
    """A `data` column as drizzle's JSON mode writes it: JSON.stringify, compact."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def write_files(args):
    root = os.path.join(args.out, "storage")
    def put(path, value):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(value, f, indent=2, ensure_ascii=False)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "migration"), "w") as f:
        f.write("2")
    for session, messages in generate(args):
        put(os.path.join(root, "session", session["projectID"], session["id"] + ".json"), session)
        for info, parts in messages:
            put(os.path.join(root, "message", session["id"], info["id"] + ".json"), info)
            for part in parts:
                put(os.path.join(root, "part", info["id"], part["id"] + ".json"), part)


def write_db(args):
    os.makedirs(args.out, exist_ok=True)
    db = sqlite3.connect(os.path.join(args.out, "opencode.db"))
    db.executescript("""
        PRAGMA journal_mode = WAL;
        CREATE TABLE session (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, parent_id TEXT, slug TEXT NOT NULL,
            directory TEXT NOT NULL, title TEXT NOT NULL, version TEXT NOT NULL, share_url TEXT,
            summary_additions INTEGER, summary_deletions INTEGER, summary_files INTEGER, summary_diffs TEXT,
            revert TEXT, permission TEXT, time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL,
            time_compacting INTEGER, time_archived INTEGER);
        CREATE TABLE message (id TEXT PRIMARY KEY, session_id TEXT NOT NULL, time_created INTEGER NOT NULL,
            time_updated INTEGER NOT NULL, data TEXT NOT NULL);
        CREATE INDEX message_session_time_created_id_idx ON message (session_id, time_created, id);
        CREATE TABLE part (id TEXT PRIMARY KEY, message_id TEXT NOT NULL, session_id TEXT NOT NULL,
            time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL, data TEXT NOT NULL);
        CREATE INDEX part_message_id_id_idx ON part (message_id, id);
        CREATE INDEX part_session_idx ON part (session_id);
    """)
    for session, messages in generate(args):
        s = session
        db.execute("INSERT INTO session VALUES (?,?,NULL,?,?,?,?,NULL,?,?,?,NULL,NULL,NULL,?,?,NULL,NULL)",
                   (s["id"], s["projectID"], s["slug"], s["directory"], s["title"], s["version"],
                    s["summary"]["additions"], s["summary"]["deletions"], s["summary"]["files"],
                    s["time"]["created"], s["time"]["updated"]))
        for info, parts in messages:
            data = {k: v for k, v in info.items() if k not in ("id", "sessionID")}
            at = info["time"]["created"]
            db.execute("INSERT INTO message VALUES (?,?,?,?,?)",
                       (info["id"], s["id"], at, at, compact(data)))
            for part in parts:
                pdata = {k: v for k, v in part.items() if k not in ("id", "sessionID", "messageID")}
                db.execute("INSERT INTO part VALUES (?,?,?,?,?,?)",
                           (part["id"], info["id"], s["id"], at, at, compact(pdata)))
    db.commit()
    db.close()


def write_db2(args):
    os.makedirs(args.out, exist_ok=True)
    db = sqlite3.connect(os.path.join(args.out, "opencode.db"))
    db.executescript("""
        PRAGMA journal_mode = WAL;
        CREATE TABLE session_v2 (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, workspace_id TEXT,
            parent_id TEXT, fork_session_id TEXT, fork_boundary TEXT, slug TEXT NOT NULL,
            directory TEXT NOT NULL, path TEXT, title TEXT, version TEXT NOT NULL, share_url TEXT,
            summary_additions INTEGER, summary_deletions INTEGER, summary_files INTEGER,
            summary_diffs TEXT, metadata TEXT, cost REAL DEFAULT 0 NOT NULL,
            tokens_input INTEGER DEFAULT 0 NOT NULL, tokens_output INTEGER DEFAULT 0 NOT NULL,
            tokens_reasoning INTEGER DEFAULT 0 NOT NULL, tokens_cache_read INTEGER DEFAULT 0 NOT NULL,
            tokens_cache_write INTEGER DEFAULT 0 NOT NULL, revert TEXT, permission TEXT, agent TEXT,
            model TEXT, time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL,
            time_idle INTEGER, time_viewed INTEGER, idle_outcome TEXT, time_compacting INTEGER,
            time_archived INTEGER, time_suspended INTEGER, resume_attempts INTEGER DEFAULT 0 NOT NULL);
        CREATE INDEX session_v2_parent_idx ON session_v2 (parent_id);
        CREATE TABLE session_message (id TEXT PRIMARY KEY, session_id TEXT NOT NULL, type TEXT NOT NULL,
            seq INTEGER NOT NULL, time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL,
            data TEXT NOT NULL);
        CREATE UNIQUE INDEX session_message_session_seq_idx ON session_message (session_id, seq);
        CREATE INDEX session_message_session_type_seq_idx ON session_message (session_id, type, seq);
        CREATE INDEX session_message_session_time_created_id_idx ON session_message (session_id, time_created, id);
    """)
    for session, messages in generate(args):
        s = session
        db.execute("INSERT INTO session_v2 (id, project_id, slug, directory, title, version, "
                   "summary_additions, summary_deletions, summary_files, time_created, time_updated) "
                   "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   (s["id"], s["projectID"], s["slug"], s["directory"], s["title"], "2.0.25",
                    s["summary"]["additions"], s["summary"]["deletions"], s["summary"]["files"],
                    s["time"]["created"], s["time"]["updated"]))
        for seq, (info, parts) in enumerate(messages):
            at = info["time"]["created"]
            if info["role"] == "user":
                kind, data = "user", {"text": parts[0]["text"], "time": {"created": at}}
            else:
                content = [{"type": "text", "text": parts[0]["text"]}]
                for tool in parts[1:]:
                    state = tool["state"]
                    content.append({"type": "tool", "id": tool["callID"], "name": tool["tool"],
                                    "state": {"status": "completed", "input": state["input"],
                                              "content": [{"type": "text", "text": state["output"]}]},
                                    "time": {"created": at, "completed": at + 50}})
                kind, data = "assistant", {
                    "agent": "build", "model": {"id": info["modelID"], "providerID": info["providerID"]},
                    "content": content, "finish": "stop", "cost": info["cost"], "tokens": info["tokens"],
                    "time": info["time"]}
            db.execute("INSERT INTO session_message VALUES (?,?,?,?,?,?,?)",
                       (info["id"], s["id"], kind, seq, at, at, compact(data)))
    db.commit()
    db.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--form", choices=("files", "db", "db2"), required=True)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=20, help="messages per session")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    {"files": write_files, "db": write_db, "db2": write_db2}[args.form](args)


if __name__ == "__main__":
    main()
