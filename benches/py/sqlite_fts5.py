#!/usr/bin/env python3
"""SQLite FTS5 reference for lode's search benchmark.

Loads JSON lines (as written by the benchmark) into a table with an index
on ts and an FTS5 table over the message (unicode61 tokenizer: runs of
letters and digits, case-folded, like lode's words), then times the same
queries. Reads the queries as JSON from argv[2]; prints one JSON object.

    sqlite_fts5.py RECORDS.jsonl QUERIES.json DBFILE RUNS
    sqlite_fts5.py RECORDS.jsonl --load-only DBFILE     (the bulk-load reference)
"""
import json, os, sqlite3, sys, time

def load(path, db):
    if os.path.exists(db):
        os.remove(db)
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("CREATE TABLE logs(seq INTEGER PRIMARY KEY, ts INTEGER, level TEXT, service TEXT, host TEXT, message TEXT)")
    con.execute("CREATE VIRTUAL TABLE fts USING fts5(message, content='logs', content_rowid='seq', tokenize='unicode61 remove_diacritics 0')")
    start = time.perf_counter()
    rows = []
    with open(path) as f:
        for seq, line in enumerate(f, 1):
            r = json.loads(line)
            ts = r["ts_ns"] if "ts_ns" in r else r["ts"]
            rows.append((seq, ts, r["level"], r["service"], r["host"], r["message"]))
            if len(rows) == 10000:
                insert(con, rows)
                rows = []
    insert(con, rows)
    con.execute("CREATE INDEX logs_ts ON logs(ts)")
    con.commit()
    return con, time.perf_counter() - start

def insert(con, rows):
    con.executemany("INSERT INTO logs VALUES (?,?,?,?,?,?)", rows)
    con.executemany("INSERT INTO fts(rowid, message) VALUES (?,?)", [(r[0], r[5]) for r in rows])

def fts_phrase(words):
    return '"' + " ".join(words) + '"'

# Every query returns what lode's returns: whole records (seq, ts, level,
# service, host, message) for the top-100 queries, and a histogram of the
# same word's matches. (Until 2026-11-22 the top-100 queries returned
# rowids only and the histogram counted every record, not the word's.)
RECORD = "logs.seq, logs.ts, logs.level, logs.service, logs.host, logs.message"

def run(con, q):
    kind = q["kind"]
    if kind == "top":
        sql = (f"SELECT {RECORD} FROM logs WHERE logs.seq IN "
               "(SELECT rowid FROM fts WHERE fts MATCH ? ORDER BY rowid DESC LIMIT 100) "
               "ORDER BY logs.seq DESC")
        return con.execute(sql, (fts_phrase(q["words"]),)).fetchall()
    if kind == "field_top":
        sql = (f"SELECT {RECORD} FROM fts JOIN logs ON logs.seq = fts.rowid "
               "WHERE fts MATCH ? AND logs.service = ? ORDER BY logs.seq DESC LIMIT 100")
        return con.execute(sql, (fts_phrase(q["words"]), q["service"])).fetchall()
    if kind == "count":
        return con.execute("SELECT count(*) FROM fts WHERE fts MATCH ?", (fts_phrase(q["words"]),)).fetchall()
    if kind == "histogram":
        sql = ("SELECT (logs.ts - ?) / ?, count(*) FROM fts JOIN logs ON logs.seq = fts.rowid "
               "WHERE fts MATCH ? AND logs.ts >= ? AND logs.ts < ? GROUP BY 1")
        return con.execute(sql, (q["start"], q["width"], fts_phrase(q["words"]), q["since"], q["until"])).fetchall()
    raise ValueError(kind)

def main():
    if len(sys.argv) == 4 and sys.argv[2] == "--load-only":
        # sqlite_fts5.py RECORDS.jsonl --load-only DBFILE: the bulk-load reference.
        con, load_secs = load(sys.argv[1], sys.argv[3])
        con.close()
        print(json.dumps({"load_secs": load_secs}))
        return
    records, queries, db, runs = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3], int(sys.argv[4])
    con, load_secs = load(records, db)
    out = {"load_secs": load_secs, "db_bytes": sum(os.path.getsize(db + s) for s in ("", "-wal") if os.path.exists(db + s)), "queries": {}}
    for q in queries:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            result = run(con, q)
            times.append(time.perf_counter() - t)
        out["queries"][q["name"]] = {"times": times, "result_rows": len(result)}
    con.close()
    print(json.dumps(out))

main()
