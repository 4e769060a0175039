#!/usr/bin/env python3
"""Builds tools/vocab/loghub.json, the load generator's vocabulary, from the
loghub samples' parsed CSVs (../shared/data/loghub). Run it again only to
change the vocabulary; the JSON is kept in the repository so the generator
runs without ../shared.

For every event template: the source it came from, its component, level,
how often it occurs (its weight), and for each `<*>` slot up to 16 values
seen there. The generator fills slots with seen values whose digits and hex
letters it varies.
"""
import csv, json, os, re, sys
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "../../../shared/data/loghub")
SOURCES = ["Apache", "HDFS", "Hadoop", "HealthApp", "Linux", "OpenSSH", "Proxifier", "Spark"]
LEVELS = {"notice": "info", "info": "info", "warn": "warn", "warning": "warn", "error": "error",
          "fatal": "fatal", "debug": "debug", "trace": "trace"}

def slot_values(template, content):
    parts = [re.escape(p) for p in template.split("<*>")]
    pattern = "^" + "(.*?)".join(parts) + "$"
    m = re.match(pattern, content, re.S)
    return list(m.groups()) if m else None

def guess_level(row, content):
    level = LEVELS.get(row.get("Level", "").strip().lower())
    if level:
        return level
    low = content.lower()
    if any(w in low for w in ("fail", "error", "exception", "invalid", "break-in")):
        return "warn"
    return "info"

def main():
    events = {}
    for source in SOURCES:
        path = os.path.join(SRC, f"{source}_2k.log_structured.csv")
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            for row in csv.DictReader(f):
                template, content = row["EventTemplate"], row["Content"]
                component = row.get("Component") or row.get("Program") or source.lower()
                if source == "Linux":  # its Level column is the host name
                    component = row.get("Component", "kernel")
                key = (source, component, template)
                ev = events.setdefault(key, {"source": source.lower(), "component": component,
                                             "level": guess_level(row, content), "template": template,
                                             "weight": 0, "slots": None})
                ev["weight"] += 1
                values = slot_values(template, content)
                if values is None:
                    continue
                if ev["slots"] is None:
                    ev["slots"] = [[] for _ in values]
                for seen, value in zip(ev["slots"], values):
                    if value not in seen and len(seen) < 16:
                        seen.append(value)
    out = []
    for ev in events.values():
        n = ev["template"].count("<*>")
        slots = ev["slots"] or [[] for _ in range(n)]
        if len(slots) != n or any(not s for s in slots):
            continue  # a template whose slots never matched its content
        ev["slots"] = slots
        out.append(ev)
    out.sort(key=lambda e: (e["source"], -e["weight"], e["template"]))
    with open(os.path.join(HERE, "loghub.json"), "w") as f:
        json.dump(out, f, indent=0, ensure_ascii=False)
    print(f"{len(out)} templates from {sum(e['weight'] for e in out)} lines")

main()
